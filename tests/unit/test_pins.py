"""The hash-pinned build tools (``recipes/pins/tools.toml``) as data, pip's report of a hash mismatch, and the
PEP 751 lock the index keeps of its closure (written, read back, refused when it is not one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamawheel.core.compat import tomllib
from llamawheel.core.errors import PublishError, RecipeError
from llamawheel.pipeline import wheelhouse
from llamawheel.publish import closure
from llamawheel.toolchain.buildroot import SUITES
from llamawheel.wheel.requirements import platforms_for

PIP_MISMATCH = """\
ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE. If you have updated the package versions,\
 please update the hashes. Otherwise, examine the package contents carefully; someone may have tampered with them.
    ninja==1.13.2 from https://mirror.example/packages/ninja-1.13.2-py3-none-manylinux_2_17_x86_64.whl#sha256=75c2 \
(from -r /tmp/r.txt (line 1)):
        Expected sha256 65a24341b5ac09fcadcc37082660be40a94174e51a937fabf6e2cae26225fa2c
                     or d775a5e43e9088f507a6250d57fcf5678eb31268c545feb5064ffeee33735622
             Got        75c21e8792855d6231f13ba21c0dff2feb8377091e5037cb074602aa1ed2d9fe
"""


def test_the_shipped_pins_load_and_every_file_has_a_sha256() -> None:
    pins = wheelhouse.load_pins()
    assert pins.wheels
    for pin in pins.wheels:
        assert pin.files, pin.name
        assert all(len(f.sha256) == 64 for f in pin.files)
    projects = {w.name for w in pins.wheels}
    assert {"pip", "cmake", "ninja", "scikit-build-core"} <= projects


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
@pytest.mark.parametrize("python", sorted({s.python for s in SUITES.values()} | {"3.10", "3.12"}))
def test_the_pins_cover_every_build_root_python_on_both_machines(python: str, arch: str) -> None:
    pins = wheelhouse.load_pins()
    chosen = {pin.name: files for pin, files in pins.select(python, platforms_for([f"manylinux_2_28_{arch}"]))}
    wanted = {"pip", "cmake", "ninja", "scikit-build-core", "packaging", "pathspec"}
    if python in ("3.9", "3.10"):
        wanted |= {"tomli", "exceptiongroup"}
    assert wanted <= set(chosen), sorted(wanted - set(chosen))
    assert all(len(files) == 1 for files in chosen.values()), chosen  # exactly one file per project and target
    for name in ("cmake", "ninja"):
        assert arch in chosen[name][0].file


def test_a_pins_file_with_an_unknown_key_or_no_sha256_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "tools.toml"
    bad.write_text('requirements = []\npythons = []\narches = []\n[[wheels]]\nname = "pip"\nversion = "1"\n'
                   'files = [{ file = "pip-1-py3-none-any.whl", sha = "00" }]\n')
    with pytest.raises(RecipeError, match=r"'wheels\[0\]\.files\[0\]\.sha': unknown key \(did you mean \"sha256\""):
        wheelhouse.load_pins(bad)
    bad.write_text(bad.read_text().replace(', sha = "00"', ""))
    with pytest.raises(RecipeError, match=r"'wheels\[0\]\.files\[0\]\.sha256': is missing"):
        wheelhouse.load_pins(bad)


def test_pips_hash_mismatch_report_is_read_as_file_expected_and_actual() -> None:
    (found,) = wheelhouse.mismatches_in_pip_output(PIP_MISMATCH.splitlines())
    assert found.file == "ninja-1.13.2-py3-none-manylinux_2_17_x86_64.whl"
    assert found.expected == ("65a24341b5ac09fcadcc37082660be40a94174e51a937fabf6e2cae26225fa2c",
                              "d775a5e43e9088f507a6250d57fcf5678eb31268c545feb5064ffeee33735622")
    assert found.actual == "75c21e8792855d6231f13ba21c0dff2feb8377091e5037cb074602aa1ed2d9fe"
    assert found.describe().startswith("ninja-1.13.2-py3-none-manylinux_2_17_x86_64.whl (from https://mirror.example/")


def _lock() -> closure.Lock:
    return closure.Lock("3.11", "x86_64", (
        closure.LockedFile("diskcache", "5.6.3", "diskcache-5.6.3-py3-none-any.whl", "a" * 64, 45550, ">=3"),
        closure.LockedFile("pyyaml", "6.0.4", "pyyaml-6.0.4-cp311-cp311-manylinux_2_17_x86_64.whl", "b" * 64, 10),
    ), ("llama_cpp_python-0.3.36+cpu-py3-none-manylinux_2_17_x86_64.whl[server]",))


def test_a_lock_is_pep_751_and_reads_back_as_written(tmp_path: Path) -> None:
    lock = _lock()
    path = tmp_path / lock.name
    assert path.name == "pylock.cp311-x86_64.toml"
    path.write_text(lock.render())
    data = tomllib.loads(path.read_text())
    assert data["lock-version"] == "1.0" and data["created-by"] == "llamawheel"
    assert data["requires-python"] == "==3.11.*"
    assert data["packages"][0] == {
        "name": "diskcache", "version": "5.6.3", "requires-python": ">=3",
        "wheels": [{"name": "diskcache-5.6.3-py3-none-any.whl", "size": 45550, "hashes": {"sha256": "a" * 64},
                    "path": f"../files/{'a' * 64}/diskcache-5.6.3-py3-none-any.whl"}],
    }
    assert closure.read_lock(path) == lock


def test_a_project_resolved_again_keeps_only_its_new_release() -> None:
    newer = closure.LockedFile("pyyaml", "6.0.5", "pyyaml-6.0.5-cp311-cp311-manylinux_2_17_x86_64.whl", "c" * 64, 1)
    merged = _lock().merged([newer], ["other.whl"])
    assert [(f.project, f.version) for f in merged.files] == [("diskcache", "5.6.3"), ("pyyaml", "6.0.5")]
    assert merged.pins() == ["diskcache==5.6.3", "pyyaml==6.0.5"]
    assert len(merged.roots) == 2


def test_a_lock_of_another_format_version_or_shape_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pylock.cp311-x86_64.toml"
    path.write_text(_lock().render().replace('lock-version = "1.0"', 'lock-version = "2.0"'))
    with pytest.raises(PublishError, match=r"lock-version is '2\.0'"):
        closure.read_lock(path)
    path.write_text(_lock().render().replace("../files/", "../elsewhere/"))
    with pytest.raises(PublishError, match=r"packages\[0\].*not \.\./files/<sha256>/<name>"):
        closure.read_lock(path)
