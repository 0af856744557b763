"""Option resolution: defaults < LLAMAWHEEL_* environment < command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamawheel.building import options
from llamawheel.core.errors import UsageError


def test_defaults() -> None:
    opts = options.resolve({})
    assert opts == options.BuildOptions()
    assert (opts.mirror, opts.arch, opts.jobs, opts.runtime, opts.toolchain, opts.verify) == (
        "default", None, None, "pypi", "auto", True,
    )


def test_environment_is_used_when_the_command_line_gives_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMAWHEEL_ARCH", "89")
    assert options.resolve({"arch": None}).arch == "89"


def test_command_line_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMAWHEEL_ARCH", "89")
    monkeypatch.setenv("LLAMAWHEEL_MIRROR", "ustc")
    opts = options.resolve({"arch": "86", "mirror": None})
    assert opts.arch == "86"
    assert opts.mirror == "ustc"


def test_environment_values_are_typed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLAMAWHEEL_JOBS", "3")
    monkeypatch.setenv("LLAMAWHEEL_OUT", str(tmp_path))
    monkeypatch.setenv("LLAMAWHEEL_RUNTIME", "system")
    opts = options.resolve({})
    assert opts.jobs == 3
    assert opts.out == tmp_path
    assert opts.runtime == "system"


def test_non_numeric_jobs_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMAWHEEL_JOBS", "x")
    with pytest.raises(UsageError) as info:
        options.resolve({})
    assert info.value.exit_code == 2
    assert info.value.message == "LLAMAWHEEL_JOBS='x' is not a whole number"


def test_zero_jobs_is_rejected() -> None:
    with pytest.raises(UsageError, match="--jobs must be at least 1"):
        options.resolve({"jobs": 0})


def test_bad_runtime_lists_the_choices() -> None:
    with pytest.raises(UsageError) as info:
        options.resolve({"runtime": "sytem"})
    assert info.value.message == "--runtime sytem: choose one of pypi, system"


def test_bad_runtime_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMAWHEEL_RUNTIME", "conda")
    with pytest.raises(UsageError, match="--runtime conda: choose one of pypi, system"):
        options.resolve({})


def test_bad_toolchain_lists_the_choices() -> None:
    with pytest.raises(UsageError, match="--toolchain conda: choose one of auto, pypi, deb, system"):
        options.resolve({"toolchain": "conda"})


def test_no_verify_from_command_line() -> None:
    assert options.resolve({"verify": False}).verify is False
    assert options.resolve({"verify": None}).verify is True
