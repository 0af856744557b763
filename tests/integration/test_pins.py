"""Hash-pinned build tools, for real: the wheelhouse and the image's pip are fetched by a real ``pip download
--require-hashes`` through this machine's pip configuration, and a file of other bytes under a pinned name
(served from a local ``--find-links`` folder, as a mirror that changed a file would serve it) is refused with
the file's name, the pinned sha256 and the actual one."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest

from llamawheel.core.compat import tomllib
from llamawheel.core.errors import DownloadError
from llamawheel.mirror import profiles
from llamawheel.pipeline import wheelhouse

from .conftest import ROOT

PINS = ROOT / "recipes" / "pins" / "tools.toml"


def pinned_sha256() -> dict[str, str]:
    """Every pinned file name with its sha256, read from the data file itself."""
    data = tomllib.loads(PINS.read_text())
    return {f["file"]: f["sha256"] for w in data["wheels"] for f in w["files"]}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tampered_copy(folder: Path, files: list[Path], name_prefix: str) -> tuple[Path, str]:
    """``files`` copied into ``folder``, the one starting with ``name_prefix`` changed (one more member): a wheel
    of the same name and other bytes. Returns it and its sha256."""
    folder.mkdir()
    for f in files:
        shutil.copy2(f, folder / f.name)
    (bad,) = folder.glob(f"{name_prefix}*.whl")
    with zipfile.ZipFile(bad, "a") as zf:
        zf.writestr("tampered.txt", "not the pinned bytes")
    return bad, sha256(bad)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A source tree whose build requirements are llama-cpp-python's."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "pyproject.toml").write_text('[build-system]\nrequires = ["scikit-build-core[pyproject]>=0.9.2"]\n')
    return src


def test_wheelhouse_holds_only_pinned_files_and_refuses_other_bytes(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = profiles.load_profile(None)
    monkeypatch.setenv("LLAMAWHEEL_CACHE", str(tmp_path / "cache"))
    folder, fetched = wheelhouse.fetch(source, wheelhouse.host_target(), mirror)
    pins = pinned_sha256()
    house = sorted(folder.glob("*.whl"))
    assert {p.name.split("-")[0].lower() for p in house} >= {"cmake", "ninja", "pip", "scikit_build_core"}
    for wheel in house:
        assert pins.get(wheel.name) == sha256(wheel), f"{wheel.name} is not a pinned file"
    assert {f.path.name for f in fetched} == {p.name for p in house}

    # The same names, one of them with other bytes, and nothing else for pip to find.
    bad, bad_sha = tampered_copy(tmp_path / "mirror", house, "ninja-")
    monkeypatch.setenv("LLAMAWHEEL_CACHE", str(tmp_path / "cache2"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(bad.parent))
    with pytest.raises(DownloadError) as refused:
        wheelhouse.fetch(source, wheelhouse.host_target(), mirror)
    message = refused.value.message
    assert "do not match their pinned sha256" in message, message
    assert f"{bad.name} (from {bad.as_uri()}): expected sha256 {pins[bad.name]}, got {bad_sha}" in message, message


def test_image_pip_is_the_pinned_wheel_and_other_bytes_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llamawheel.image import context as image_context

    mirror = profiles.load_profile(None)
    monkeypatch.setenv("LLAMAWHEEL_CACHE", str(tmp_path / "cache"))
    pip = image_context.pip_wheel(mirror)
    assert pinned_sha256().get(pip.name) == sha256(pip), f"{pip.name} is not the pinned pip"

    bad, bad_sha = tampered_copy(tmp_path / "mirror", [pip], "pip-")
    monkeypatch.setenv("LLAMAWHEEL_CACHE", str(tmp_path / "cache2"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(bad.parent))
    with pytest.raises(DownloadError) as refused:
        image_context.pip_wheel(mirror)
    assert f"{bad.name} (from {bad.as_uri()}): expected sha256 {pinned_sha256()[bad.name]}, got {bad_sha}" in (
        refused.value.message)
