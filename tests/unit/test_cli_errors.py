"""What the command line prints and returns when the user gets something wrong.

None of these may start a build: `pipeline.run` is replaced by a tripwire.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from llamawheel import cli, pipeline
from llamawheel.core.errors import WheelError
from llamawheel.recipe.catalog import load_recipe

from .helpers import MIRRORS_DIR, RECIPES_DIR


@pytest.fixture(autouse=True)
def _no_real_build(monkeypatch: pytest.MonkeyPatch) -> None:
    def tripwire(plan: pipeline.Plan) -> Path:
        raise AssertionError(f"a unit test reached a real build of {plan.describe()}")

    monkeypatch.setattr(pipeline, "run", tripwire)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_unknown_cuda_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "build", "12.7")
    assert code == 2
    assert out == ""
    assert "ERROR unknown CUDA version 12.7" in err
    tip = next(line for line in err.splitlines() if line.startswith("TIP "))
    assert tip.startswith("TIP known CUDA versions: ")
    lines = ("cuda-11.toml", "cuda-12.toml", "cuda-13.toml")
    for version in ("11", "12", "13", *(m for f in lines for m in load_recipe(RECIPES_DIR / f).minors)):
        assert version in tip.split(": ", 1)[1].split(", ")
    assert "Traceback" not in err


def test_unknown_cuda_version_with_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--traceback", "build", "12.7")
    assert code == 2
    assert "Traceback" in err
    assert "ERROR unknown CUDA version 12.7" in err


def test_misspelled_arch_preset(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "build", "13", "--arch", "hoper")
    assert code == 2
    assert "ERROR unknown architecture preset 'hoper'" in err
    assert 'did you mean "hopper"?' in err
    assert "TIP presets: " in err


def test_arch_the_cuda_line_cannot_compile(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "build", "13.0", "--arch", "35")
    assert code == 2
    assert "ERROR CUDA 13.0 cannot compile for sm_35" in err
    assert "TIP architectures CUDA 13.0 supports: 75" in err


def test_arch_native_without_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "build", "13", "--arch", "native")
    assert code == 2
    assert "ERROR --arch native: no NVIDIA GPU is visible" in err


def test_unknown_mirror(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "build", "13", "--mirror", "nosuch")
    assert code == 4
    assert "ERROR unknown mirror profile 'nosuch'" in err
    assert "TIP known profiles: aliyun, default, tsinghua, ustc" in err


def test_bad_runtime(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "build", "13", "--runtime", "sytem")
    assert code == 2
    assert "ERROR --runtime sytem: choose one of pypi, system" in err


def test_unpinned_llama_cpp_python_needs_a_hash(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "build", "13", "--arch", "86", "--llama-cpp-python", "0.3.1")
    assert code == 2
    assert "ERROR llama-cpp-python 0.3.1 is not pinned by cuda-13.toml" in err
    assert "TIP pass --sdist-sha256" in err


def test_arch_on_a_cpu_build(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "build", "cpu", "--arch", "86")
    assert code == 2
    assert "ERROR --arch applies to CUDA builds only" in err


def test_bad_jobs_environment(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMAWHEEL_JOBS", "many")
    code, _, err = run(capsys, "build", "13")
    assert code == 2
    assert "ERROR LLAMAWHEEL_JOBS='many' is not a whole number" in err


def test_verify_static_missing_wheel(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "verify-static", "/nonexistent.whl")
    assert code == 2
    assert "ERROR /nonexistent.whl: no such wheel file" in err


def test_verify_static_not_a_zip(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bogus = tmp_path / "llama_cpp_python-0.3.36+cu130-cp311-cp311-linux_x86_64.whl"
    bogus.write_text("this is not a zip archive")
    code, _, err = run(capsys, "verify-static", str(bogus))
    assert code == WheelError.exit_code == 14
    assert "is not a valid wheel (not a zip archive)" in err


def test_mirrors_list(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "mirrors", "list")
    assert code == 0
    listed = {line.split(":")[0] for line in out.splitlines() if line and not line.startswith(" ")}
    assert listed == {p.stem for p in MIRRORS_DIR.glob("*.toml")}
    assert "https://pypi.tuna.tsinghua.edu.cn/simple/" in out
    assert "(changes nothing" in out  # the default profile


def test_recipes_lists_lines_and_default_minor(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "recipes")
    assert code == 0
    lines = out.splitlines()
    assert any(line.startswith("cuda-13: ") for line in lines)
    assert any(line.startswith("cpu: ") for line in lines)
    assert "13.0 (default) [pypi]" in out
    assert "13.1 (default)" not in out


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["build"])
    assert info.value.code == 2
    assert "target" in capsys.readouterr().err


@pytest.mark.parametrize("target", [["cpu"], ["13", "--arch", "90"]], ids=["cpu", "cuda"])
def test_out_naming_a_file_is_refused_before_anything_starts(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                              target: list[str]) -> None:
    """Tried as a new user would: ``--out /etc/passwd`` used to compile for minutes and fail at the end."""
    a_file = tmp_path / "passwd"
    a_file.write_text("root:x:0:0\n")
    code, _, err = run(capsys, "build", *target, "--out", str(a_file))
    assert code == 2
    assert f"--out {a_file}: that is a file, not a folder" in err
    assert a_file.read_text() == "root:x:0:0\n"


def test_out_where_nothing_can_be_written_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "build", "cpu", "--out", "/proc/llamawheel-wheels")
    assert code == 2
    assert "--out /proc/llamawheel-wheels: cannot write there" in err
    assert "TIP pass a folder you can write to" in err
