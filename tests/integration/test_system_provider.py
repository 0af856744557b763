"""The system provider with a toolkit laid out in a temporary folder (a symlink copy of a real
CUDA 12.4 root), and the host-compiler choice with this machine's real compilers."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest

from llamawheel.core.errors import ToolchainError
from llamawheel.recipe import catalog
from llamawheel.toolchain import hostcc

from .conftest import llamawheel


@pytest.fixture(scope="module")
def cuda124_root() -> Path:
    result = llamawheel("toolchain", "12.4", "--toolchain", "deb")
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def installed_toolkit(cuda124_root: Path, tmp_path: Path) -> Path:
    """A toolkit 'installed' at tmp/cuda-12.4: every file a symlink into the real root."""
    target = tmp_path / "cuda-12.4"
    subprocess.run(["cp", "-as", str(cuda124_root), str(target)], check=True)
    return target


def test_matching_installed_toolkit_is_used_and_the_reason_said(installed_toolkit: Path) -> None:
    result = llamawheel("toolchain", "12.4", "--toolchain", "system", env={"CUDA_HOME": str(installed_toolkit)})
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == installed_toolkit
    assert f"system toolkit {installed_toolkit} ($CUDA_HOME): using it: CUDA 12.4" in result.stderr


def test_toolkit_of_another_minor_is_not_used(installed_toolkit: Path) -> None:
    result = llamawheel("toolchain", "11.8", "--toolchain", "system", env={"CUDA_HOME": str(installed_toolkit)})
    assert result.returncode == 6
    assert "is CUDA 12.4, not the requested 11.8" in result.stderr
    assert "ERROR no installed CUDA 11.8 toolkit is complete" in result.stderr


def test_incomplete_toolkit_is_not_used(installed_toolkit: Path) -> None:
    (installed_toolkit / "include" / "cublas_v2.h").unlink()
    result = llamawheel("toolchain", "12.4", "--toolchain", "system", env={"CUDA_HOME": str(installed_toolkit)})
    assert result.returncode == 6
    assert "lacks include/cublas_v2.h" in result.stderr


def test_auto_prefers_a_complete_installed_toolkit(installed_toolkit: Path) -> None:
    result = llamawheel("toolchain", "12.4", env={"CUDA_HOME": str(installed_toolkit)})
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == installed_toolkit


def test_cuda_11_8_gets_an_accepted_host_compiler() -> None:
    _, minor = catalog.find_cuda("11.8")
    default = hostcc.gcc_major("g++")
    if default is not None and default <= 11:
        assert hostcc.choose(minor) is None
    elif shutil.which("g++-11"):
        assert hostcc.choose(minor) == shutil.which("g++-11")
    else:
        with pytest.raises(ToolchainError) as err:
            hostcc.choose(minor)
        assert err.value.tip == "install one: apt-get install g++-11"


def test_no_accepted_compiler_says_what_to_install() -> None:
    _, minor = catalog.find_cuda("11.8")
    ancient = dataclasses.replace(minor, max_gcc=4)
    with pytest.raises(ToolchainError) as err:
        hostcc.choose(ancient)
    assert "accepts GCC 4 at most" in err.value.message
    assert err.value.tip == "install one: apt-get install g++-4"
