"""``llamawheel verify``'s report and exit codes: pass 0, not what it claims 9, GPU checks skipped 11,
a runtime check failed 12.

The runner reports fed to `judge` here are written by hand in the runner's format: a GPU run cannot
happen on these machines (the integration tests produce real CPU ones). The CLI tests use real wheels
with a real ELF library, and stop before anything is installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llamawheel import cli
from llamawheel.core.errors import GpuChecksSkipped, RuntimeCheckError, VerifyError
from llamawheel.verify.diagnose import WheelFacts
from llamawheel.verify.installed import judge
from llamawheel.verify.static import Report
from llamawheel.wheel.wheelfile import Entry, write_wheel

CUDA_WHEEL = Path("llama_cpp_python-0.3.36+cu130.sm86-py3-none-manylinux_2_35_x86_64.whl")
CPU_WHEEL = Path("llama_cpp_python-0.3.36+cpu-py3-none-manylinux_2_35_x86_64.whl")
NO_GPU = {"devices": [], "source": None, "driver": None, "note": "nvidia-smi not found"}
H200 = {"devices": [{"index": 0, "name": "NVIDIA H200", "compute_capability": "9.0", "driver": "580.65.06"}],
        "source": "nvidia-smi", "driver": "580.65.06", "note": ""}
RTX3090 = {"devices": [{"index": 0, "name": "NVIDIA GeForce RTX 3090", "compute_capability": "8.6",
                        "driver": "580.65.06"}], "source": "nvidia-smi", "driver": "580.65.06", "note": ""}


def _static(wheel: Path, ok: bool = True) -> Report:
    report = Report(wheel.name, wheel.name.split("-")[1], 1000, "CUDA 13, code for sm_86")
    report.add("version", True, "METADATA says so")
    report.add("CUDA backend", ok, "libggml-cuda.so" if ok else "this wheel is CPU-only: ...")
    return report


def _facts(wheel: Path, cuda: int | None = 13, claimed: int | None = 13) -> WheelFacts:
    return WheelFacts(wheel.name, claimed, cuda, frozenset({86}) if cuda else frozenset(), frozenset(), "pypi",
                      ("nvidia-cublas>=13.0,<14",))


def _runner(checks: list[tuple[str, str, str]], device: dict[str, Any] = NO_GPU,
            errors: list[str] | None = None) -> dict[str, Any]:
    return {
        "device": device,
        "checks": [{"name": n, "status": s, "detail": d} for n, s, d in checks],
        "performance": [{"side": "cpu", "weight_type": "f16", "load_s": 0.02, "prompt_tps": 2100.0, "gen_tps": 450.0,
                         "ttft_s": 0.06, "prompt_tokens": 128}],
        "errors": [{"label": "cpu tiny-f16", "text": t} for t in errors or []],
    }


CPU_HALF = [("llama_cpp loads", "PASS", "0.3.36"), ("CPU run f16", "PASS", "128-token prompt ...")]


def test_cpu_wheel_passes_with_gpu_checks_not_applicable() -> None:
    runner = _runner([*CPU_HALF, ("GPU offload", "N/A", "this llama_cpp is a CPU build (no libggml-cuda)")])
    report = judge(CPU_WHEEL, _static(CPU_WHEEL), _facts(CPU_WHEEL, None, None), runner, NO_GPU)
    assert (report.result, report.exit_code) == ("pass", 0)
    report.raise_for_result()  # nothing raised
    text = report.render()
    assert "  PASS  static checks" in text
    assert "  N/A   GPU offload" in text
    assert "  speed CPU f16: load 0.02 s, prompt 2100 tok/s" in text
    assert text.endswith("result: PASS")


def test_cuda_wheel_without_gpu_is_a_skip_with_its_own_exit_code() -> None:
    reason = "did not run: no NVIDIA GPU on this machine"
    runner = _runner([*CPU_HALF, ("GPU offload", "SKIP", reason), ("cuBLAS used", "SKIP", reason)])
    report = judge(CUDA_WHEEL, _static(CUDA_WHEEL), _facts(CUDA_WHEEL), runner, NO_GPU)
    assert (report.result, report.exit_code) == ("gpu-skipped", 11)
    with pytest.raises(GpuChecksSkipped) as err:
        report.raise_for_result()
    assert err.value.exit_code == 11
    assert err.value.message.startswith(
        "GPU checks did not run: no NVIDIA GPU on this machine (nvidia-smi not found); passed: ")
    assert "passed: static checks, llama_cpp loads, CPU run f16. This is not a pass" in err.value.message
    assert "result: GPU-SKIPPED" in report.render()


def test_missing_cublas_is_diagnosed_from_the_loader_text() -> None:
    text = ("RuntimeError: Failed to load shared library '/v/llama_cpp/lib/libllama.so': libcublas.so.13: cannot "
            "open shared object file: No such file or directory")
    runner = _runner([("llama_cpp loads", "FAIL", text)], device=H200, errors=[text])
    facts = WheelFacts(CUDA_WHEEL.name, 13, 13, frozenset({86, 90}), frozenset(), "pypi", ("nvidia-cublas>=13.0,<14",))
    report = judge(CUDA_WHEEL, _static(CUDA_WHEEL), facts, runner, H200)
    assert report.exit_code == 12
    with pytest.raises(RuntimeCheckError) as err:
        report.raise_for_result()
    assert err.value.message.startswith("libcublas.so.13 was not found when llama_cpp loaded")
    assert err.value.tip and "pip install 'nvidia-cublas>=13.0,<14'" in err.value.tip
    assert "  diagnosis: libcublas.so.13 was not found" in report.render()


def test_wrong_architecture_is_found_before_anything_is_installed() -> None:
    report = judge(CUDA_WHEEL, _static(CUDA_WHEEL), _facts(CUDA_WHEEL), None, H200)
    assert report.exit_code == 12
    with pytest.raises(RuntimeCheckError) as err:
        report.raise_for_result()
    assert err.value.message == "this wheel has code for sm_86 only; this GPU (NVIDIA H200) is sm_90"
    assert err.value.tip == "rebuild with --arch 90 or native: llamawheel build 13 --arch 90"


def test_the_right_gpu_gives_no_early_diagnosis() -> None:
    report = judge(CUDA_WHEEL, _static(CUDA_WHEEL), _facts(CUDA_WHEEL), None, RTX3090)
    assert report.diagnosis is None and report.result == "pass"  # judged again once the runner has run


def test_cpu_only_wheel_labelled_cuda_exits_9() -> None:
    report = judge(CUDA_WHEEL, _static(CUDA_WHEEL, ok=False), _facts(CUDA_WHEEL, cuda=None), None, NO_GPU)
    assert report.exit_code == 9
    with pytest.raises(VerifyError) as err:
        report.raise_for_result()
    assert "is a CPU-only build labelled CUDA 13" in err.value.message


def test_a_wheel_needing_the_driver_on_a_machine_without_one_is_a_skip() -> None:
    text = "OSError: libcuda.so.1: cannot open shared object file: No such file or directory"
    runner = _runner([("llama_cpp loads", "FAIL", text)], errors=[text])
    report = judge(CUDA_WHEEL, _static(CUDA_WHEEL), _facts(CUDA_WHEEL), runner, NO_GPU)
    assert (report.result, report.exit_code) == ("gpu-skipped", 11)
    with pytest.raises(GpuChecksSkipped) as err:
        report.raise_for_result()
    assert "nor did the CPU half" in err.value.message


def test_a_failed_gpu_check_exits_12_and_names_the_check() -> None:
    runner = _runner([*CPU_HALF, ("GPU offload f16", "FAIL", "offloaded 2/3 layers to GPU (not all)"),
                      ("cuBLAS used", "FAIL", "cuBLAS logged no GEMM call")], device=RTX3090)
    report = judge(CUDA_WHEEL, _static(CUDA_WHEEL), _facts(CUDA_WHEEL), runner, RTX3090, work="/tmp/w")
    with pytest.raises(RuntimeCheckError) as err:
        report.raise_for_result()
    assert err.value.message == (f"{CUDA_WHEEL.name}: GPU offload f16: offloaded 2/3 layers to GPU (not all) "
                                 "(and 1 more)")
    assert err.value.tip == "the logs of every run are in /tmp/w"


def test_json_report_holds_static_runner_and_result() -> None:
    runner = _runner(CPU_HALF)
    data = json.loads(judge(CPU_WHEEL, _static(CPU_WHEEL), _facts(CPU_WHEEL, None, None), runner, NO_GPU).to_json())
    assert data["schema"] == 1
    assert data["result"] == "pass" and data["exit_code"] == 0
    assert data["static"]["ok"] is True
    assert [c["name"] for c in data["checks"]] == ["static checks", "llama_cpp loads", "CPU run f16"]
    assert data["runner"]["performance"][0]["prompt_tps"] == 2100.0


def _labelled_wheel(tmp_path: Path, libz_bytes: bytes, version: str) -> Path:
    entries = [
        Entry("pkg/__init__.py", b""),
        Entry("pkg/lib/libz.so.1", libz_bytes, 0o755),
        Entry(f"pkg-{version}.dist-info/METADATA",
              f"Metadata-Version: 2.1\nName: pkg\nVersion: {version}\n\n".encode()),
        Entry(f"pkg-{version}.dist-info/WHEEL", b"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: py3-none-any\n"),
    ]
    path = tmp_path / f"pkg-{version}-py3-none-linux_x86_64.whl"
    write_wheel(entries, path)
    return path


def test_cli_refuses_a_cpu_wheel_labelled_cuda_before_installing(
    tmp_path: Path, libz_bytes: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    wheel = _labelled_wheel(tmp_path, libz_bytes, "1.0+cu130.sm90")
    out = tmp_path / "report.json"
    code = cli.main(["verify", str(wheel), "--json", str(out), "--work", str(tmp_path / "work")])
    stdout, stderr = capsys.readouterr()
    assert code == 9
    assert f"ERROR {wheel.name} is a CPU-only build labelled CUDA 13" in stderr
    assert "TIP do not install it; build the CUDA wheel: llamawheel build 13 --arch native" in stderr
    assert "  FAIL  static checks" in stdout
    assert json.loads(out.read_text())["diagnosis"]["kind"] == "cpu-only"
    assert not (tmp_path / "work").exists()  # nothing was installed


def test_cli_missing_wheel(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["verify", "no-such.whl"]) == 2
    assert "ERROR no-such.whl: no such wheel file" in capsys.readouterr().err


def test_cli_judges_a_runner_report_from_another_machine(
    tmp_path: Path, libz_bytes: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    wheel = _labelled_wheel(tmp_path, libz_bytes, "1.0+cpu")
    results = tmp_path / "runner.json"
    results.write_text(json.dumps(_runner([*CPU_HALF, ("CPU run q8_0", "FAIL", "logits NOT finite")])))
    code = cli.main(["verify", str(wheel), "--results", str(results)])
    stdout, stderr = capsys.readouterr()
    assert code == 12
    assert "  FAIL  CPU run q8_0" in stdout
    assert "ERROR pkg-1.0+cpu-py3-none-linux_x86_64.whl: CPU run q8_0: logits NOT finite" in stderr
