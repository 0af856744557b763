"""The build sandbox's parts that need no root: how a root is entered, the list of files a toolchain is checked
against before each use, and `toolchains --clean` waiting for the lock its making takes (the real sandbox is
tests/integration/test_sandbox.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llamawheel.core import fileio
from llamawheel.toolchain import assemble, buildroot
from llamawheel.toolchain.root import MARKER, compilers


def _root(tmp_path: Path) -> buildroot.Root:
    return buildroot.Root(tmp_path / "buildroot-bullseye", "bullseye", (), "test", 0, 0.0, "2.31", "10.2.1", "3.9")


def test_every_command_in_a_root_has_namespaces_a_session_and_no_capability_of_its_own(tmp_path: Path) -> None:
    cut = _root(tmp_path).command(["true"], env={})
    shared = _root(tmp_path).command(["true"], env={}, network=True, read_only=True)
    for cmd in (cut, shared):
        assert {"--unshare-all", "--new-session", "--die-with-parent"} <= set(cmd)
        assert cmd[cmd.index("--cap-drop") + 1] == "ALL"
    assert "--unshare-net" in cut and "--share-net" not in cut and "--remount-ro" not in cut
    assert "--share-net" in shared and "--unshare-net" not in shared
    assert shared[shared.index("--remount-ro") + 1] == "/" and shared.index("--remount-ro") < shared.index("--")


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "cuda-13.0-pypi"
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "bin" / "nvcc").write_bytes(b"\x7fELF nvcc" * 100)
    (root / "bin" / "nvcc").chmod(0o755)
    (root / "bin" / "nvcc.profile").write_text("INCLUDES += -I$(TOP)/include\n")
    (root / "include" / "cuda_runtime.h").write_text("#pragma once\n")
    (root / "lib64").symlink_to("lib")
    assemble.record_files(root, compilers)
    (root / MARKER).write_text("{}")
    return root


def _rewrite_keeping_time(path: Path, data: bytes) -> None:
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_tree_as_made_passes_and_the_compilers_are_hashed_at_every_check(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    recorded = json.loads((root / assemble.FILES).read_text())
    assert recorded["rehash"] == ["bin/nvcc"]  # the executables of bin/, not nvcc.profile
    assert recorded["links"] == {"lib64": "lib"}
    assert len(recorded["files"]["include/cuda_runtime.h"]["sha256"]) == 64
    assert assemble.check_files(root) is None
    # the same size and time: only the hash can see it
    _rewrite_keeping_time(root / "bin" / "nvcc", b"\x7fELF evil" * 100)
    assert assemble.check_files(root) == "bin/nvcc was modified (its sha256 is not the one recorded)"


def test_a_header_changed_added_removed_or_relinked_is_named(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    header = root / "include" / "cuda_runtime.h"
    later = header.stat().st_mtime + 60
    header.write_text("#pragma ONCE\n")  # same size, a new time: hashed again
    os.utime(header, (later, later))
    assert assemble.check_files(root) == "include/cuda_runtime.h was modified (its sha256 is not the one recorded)"
    header.write_text("#pragma once\n")  # back as it was, at another time (a cache restored by tar): fine
    os.utime(header, (later, later))
    assert assemble.check_files(root) is None
    header.write_text("#pragma once\n#define X\n")
    assert assemble.check_files(root) == "include/cuda_runtime.h changed size (13 -> 23 bytes)"
    header.write_text("#pragma once\n")
    (root / "include" / "stdio.h").write_text("")
    assert assemble.check_files(root) == "include/stdio.h was added"
    (root / "include" / "stdio.h").unlink()
    (root / "lib64").unlink()
    assert assemble.check_files(root) == "lib64 is missing"
    (root / "lib64").symlink_to("/usr/lib")
    assert assemble.check_files(root) == "lib64 no longer links to lib"


def test_a_damaged_tree_is_refused_with_the_file_named_and_an_old_one_is_recorded(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _tree(tmp_path)
    assert assemble.intact(root, "the CUDA 13.0 toolchain", compilers)
    (root / "bin" / "ptxas").write_text("#!/bin/sh\n")
    assert not assemble.intact(root, "the CUDA 13.0 toolchain", compilers)
    assert f"the CUDA 13.0 toolchain {root} is damaged: bin/ptxas was added" in capsys.readouterr().err
    # made by an older llamawheel (no list): recorded now, checked from then on
    (root / assemble.FILES).unlink()
    assert assemble.intact(root, "the CUDA 13.0 toolchain", compilers)
    assert "made by an older llamawheel" in capsys.readouterr().err + capsys.readouterr().out
    assert assemble.check_files(root) is None


def test_clean_waits_for_a_run_making_the_toolchain_and_keeps_its_lock_file(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    root = cache / "toolchains" / "cuda-13.0-pypi"
    root.mkdir(parents=True)
    (root / MARKER).write_text(json.dumps({"version": "13.0", "provider": "pypi", "origin": "test",
                                           "nvcc_version": "13.0", "download_bytes": 0, "size_bytes": 0}))
    env = {**os.environ, "LLAMAWHEEL_CACHE": str(cache)}
    with fileio.locked(root):  # as a provisioning (or a use's check) holds it
        clean = subprocess.Popen([sys.executable, "-m", "llamawheel", "toolchains", "--clean", root.name],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        time.sleep(3)
        assert clean.poll() is None and root.is_dir()  # still waiting: nothing removed under the other run
    out, err = clean.communicate(timeout=60)
    assert clean.returncode == 0, err
    assert "being made or checked by another run" in err and f"removed {root}" in out
    assert not root.exists()
    assert root.with_name(root.name + ".lock").exists()  # a run waiting on it keeps the same lock
