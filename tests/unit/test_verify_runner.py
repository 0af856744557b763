"""The runner's judgement: what it reads from llama.cpp's, cuBLAS's and nvidia-smi's output, and when a
CPU and a GPU run agree. The log lines are llama.cpp's and cuBLAS's own formats (as printed by the
versions named), so a change of format shows up here first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llamawheel.core.errors import GpuChecksSkipped, RuntimeCheckError
from llamawheel.verify.portable import verify_runner
from llamawheel.verify.portable.verify_runner import (
    Check,
    GpuPlan,
    Result,
    Status,
    compare_runs,
    count_cublas_calls,
    gemm_calls,
    parse_cuda_devices,
    parse_nvidia_smi,
    parse_offload,
    parse_proc_driver,
    verdict,
)

# llama.cpp as vendored by llama-cpp-python 0.3.36 (load_tensors) and by the 0.2 series (llm_load_tensors)
LOG_NEW = """\
ggml_cuda_init: found 1 CUDA devices (Total VRAM: 143771 MiB):
  Device 0: NVIDIA H200, compute capability 9.0, VMM: no, VRAM: 143771 MiB
load_tensors: loading model tensors, this can take a while... (mmap = true)
load_tensors: offloading output layer to GPU
load_tensors: offloading 2 repeating layers to GPU
load_tensors: offloaded 3/3 layers to GPU
load_tensors:        CUDA0 model buffer size =     5.08 MiB
"""
LOG_OLD = """\
ggml_init_cublas: found 1 CUDA devices:
  Device 0: NVIDIA GeForce RTX 3090, compute capability 8.6, VMM: yes
llm_load_tensors: offloading 32 repeating layers to GPU
llm_load_tensors: offloaded 33/33 layers to GPU
"""
LOG_CPU = """\
load_tensors: loading model tensors, this can take a while... (mmap = true)
load_tensors:   CPU_Mapped model buffer size =     9.08 MiB
llama_context: n_ctx         = 256
"""
# the format cuBLAS writes to CUBLAS_LOGDEST_DBG with CUBLAS_LOGINFO_DBG=1
CUBLAS_LOG = """\
I! cuBLAS (v13.0) function cublasStatus_t cublasCreate_v2(cublasContext**) called:
i!  handle: type=cublasHandle_t; val=POINTER (IN HEX:0x0x7ffd10a64930)
I! cuBLAS (v13.0) function cublasStatus_t cublasSetStream_v2(cublasHandle_t, cudaStream_t) called:
i!  handle: type=cublasHandle_t; val=POINTER (IN HEX:0x0xa8af7b0)
I! cuBLAS (v13.0) function cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t, cublasOperation_t, \
int, int, int, const void*, const void*, cudaDataType_t, int, const void*, cudaDataType_t, int, const void*, void*, \
cudaDataType_t, int, cublasComputeType_t, cublasGemmAlgo_t) called:
i!  transa: type=cublasOperation_t; val=CUBLAS_OP_T(1)
I! cuBLAS (v13.0) function cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t, int) called:
I! cuBLAS (v13.0) function cublasStatus_t cublasGemmBatchedEx(cublasHandle_t, int) called:
i! text that mentions cublasGemmEx( but is not a call line
"""


def test_offload_line_of_current_llama_cpp() -> None:
    assert parse_offload(LOG_NEW) == (3, 3)


def test_offload_line_of_older_llama_cpp() -> None:
    assert parse_offload(LOG_OLD) == (33, 33)


def test_partial_offload_is_read_as_such() -> None:
    assert parse_offload("load_tensors: offloaded 2/3 layers to GPU\n") == (2, 3)


def test_a_cpu_build_prints_no_offload_line() -> None:
    assert parse_offload(LOG_CPU) is None


def test_cuda_devices_from_the_log_with_and_without_vram() -> None:
    assert parse_cuda_devices(LOG_NEW) == [
        {"index": 0, "name": "NVIDIA H200", "compute_capability": "9.0", "driver": None}
    ]
    assert parse_cuda_devices(LOG_OLD)[0]["compute_capability"] == "8.6"
    assert parse_cuda_devices(LOG_CPU) == []


def test_cublas_calls_are_counted_per_function() -> None:
    calls, version = count_cublas_calls(CUBLAS_LOG)
    assert calls == {"cublasCreate_v2": 1, "cublasGemmBatchedEx": 1, "cublasGemmEx": 2, "cublasSetStream_v2": 1}
    assert version == "13.0"
    assert gemm_calls(calls) == 3


def test_a_cublas_log_without_gemm_counts_zero() -> None:
    calls, _ = count_cublas_calls(CUBLAS_LOG.split("I! cuBLAS (v13.0) function cublasStatus_t cublasGemmEx")[0])
    assert gemm_calls(calls) == 0
    assert count_cublas_calls("") == ({}, None)


def test_nvidia_smi_rows() -> None:
    csv = "0, NVIDIA H200, 9.0, 580.65.06, 143771\n1, NVIDIA GeForce RTX 3090, 8.6, 580.65.06, 24576\n"
    assert parse_nvidia_smi(csv) == [
        {"index": 0, "name": "NVIDIA H200", "compute_capability": "9.0", "driver": "580.65.06", "memory_mib": 143771},
        {"index": 1, "name": "NVIDIA GeForce RTX 3090", "compute_capability": "8.6", "driver": "580.65.06",
         "memory_mib": 24576},
    ]


def test_nvidia_smi_without_compute_cap_and_a_comma_in_the_name() -> None:
    assert parse_nvidia_smi("0, Tesla T4, rev. B, 470.82.01, 15109\n") == [
        {"index": 0, "name": "Tesla T4, rev. B", "compute_capability": None, "driver": "470.82.01", "memory_mib": 15109}
    ]


def test_nvidia_smi_without_devices() -> None:
    assert parse_nvidia_smi("No devices were found\n") == []


def test_driver_version_from_the_kernel_module() -> None:
    proprietary = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 UTC 2024\n"
    open_module = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  (dvs-builder@U)\n"
    assert parse_proc_driver(proprietary) == "535.183.01"
    assert parse_proc_driver(open_module) == "580.65.06"
    assert parse_proc_driver("") is None


def _logits(seed: int = 0, rows: int = 16, vocab: int = 500) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.16, (rows, vocab)).astype(np.float32)


def test_identical_runs_agree() -> None:
    ref = _logits()
    a = compare_runs(ref, ref.copy(), [5, 6, 7], [5, 6, 7], [0.1, 0.1, 0.1])
    assert a.ok and a.max_abs_diff == 0 and a.tokens_equal == 3
    assert "greedy tokens 3/3 equal" in a.detail


def test_small_numeric_noise_agrees_and_the_tolerance_is_stated() -> None:
    ref = _logits()
    dev = ref + np.float32(5e-4)  # what an H200 gave for a 1B f16 model
    a = compare_runs(ref, dev, [1, 2], [1, 2], [0.2, 0.2])
    assert a.ok
    assert a.tolerance == pytest.approx(0.05 * float(np.std(ref)))
    assert "0.05 x logit std" in a.detail


def test_logits_off_by_more_than_the_tolerance_fail() -> None:
    ref = _logits()
    dev = ref.copy()
    dev[3, 17] += 0.1
    a = compare_runs(ref, dev, [1, 2], [1, 2], [0.2, 0.2])
    assert not a.ok
    assert a.max_abs_diff == pytest.approx(0.1, rel=1e-3)
    assert " > " in a.detail


def test_nan_on_the_device_fails() -> None:
    ref = _logits()
    dev = ref.copy()
    dev[0, 0] = np.nan
    a = compare_runs(ref, dev, [1], [1], [0.2])
    assert not a.ok and not a.finite
    assert "NaN" in a.detail


def test_all_equal_logits_prove_nothing() -> None:
    ref = np.zeros((4, 10), dtype=np.float32)
    assert not compare_runs(ref, ref.copy(), [1], [1], [0.0]).ok


def test_greedy_tokens_parting_at_a_near_tie_still_agree() -> None:
    ref = _logits()
    margin = 0.001  # the CPU's best two logits at token 2 are closer than the noise allowed
    a = compare_runs(ref, ref.copy(), [4, 9, 11, 12], [4, 9, 13, 2], [0.3, 0.3, margin, 0.3])
    assert a.ok and a.near_tie
    assert a.tokens_equal == 2
    assert "a near tie" in a.detail


def test_greedy_tokens_parting_at_a_clear_choice_fail() -> None:
    ref = _logits()
    a = compare_runs(ref, ref.copy(), [4, 9, 11, 12], [4, 9, 13, 2], [0.3, 0.3, 0.3, 0.3])
    assert not a.ok and not a.near_tie
    assert "greedy tokens 2/4 equal" in a.detail


def test_different_shapes_fail() -> None:
    a = compare_runs(_logits(rows=4), _logits(rows=5), [1], [1], [0.3])
    assert not a.ok
    assert "different shapes" in a.detail


def test_verdict_and_exit_codes() -> None:
    assert verdict([Check("a", Status.PASS, ""), Check("b", Status.NA, "")]) is Result.PASS
    assert verdict([Check("a", Status.PASS, ""), Check("b", Status.SKIP, "no GPU")]) is Result.GPU_SKIPPED
    assert verdict([Check("a", Status.FAIL, ""), Check("b", Status.SKIP, "no GPU")]) is Result.FAIL
    assert [r.exit_code for r in Result] == [0, 12, 11]


def test_the_runner_exits_with_llamawheels_codes() -> None:
    """The runner imports nothing of llamawheel, so it writes the two codes again: they must stay llamawheel's."""
    assert Result.GPU_SKIPPED.exit_code == GpuChecksSkipped.exit_code
    assert Result.FAIL.exit_code == RuntimeCheckError.exit_code


def test_missing_model_file_is_a_usage_error(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, verify_runner.__file__, "--model", str(tmp_path / "none.gguf")],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert "no such model file" in res.stderr


def test_render_shows_device_checks_speed_and_result() -> None:
    report = {
        "device": {"devices": [{"index": 0, "name": "NVIDIA H200", "compute_capability": "9.0",
                                "driver": "580.65.06"}], "source": "nvidia-smi", "driver": "580.65.06", "note": ""},
        "checks": [{"name": "GPU offload f16", "status": Status.PASS, "detail": "offloaded 3/3 layers to GPU"}],
        "performance": [{"side": "gpu", "weight_type": "f16", "load_s": 0.31, "prompt_tps": 5393.2, "gen_tps": 680.4,
                         "ttft_s": 0.0241, "prompt_tokens": 128}],
        "result": "pass",
    }
    assert verify_runner.render(report).splitlines() == [
        "  device: GPU 0: NVIDIA H200, compute capability 9.0, driver 580.65.06 (from nvidia-smi)",
        "  PASS  GPU offload f16  offloaded 3/3 layers to GPU",
        "  speed GPU f16: load 0.31 s, prompt 5393 tok/s (128 tokens), generation 680 tok/s, first token 24 ms",
        "  result: PASS",
    ]


def _run(tmp_path: Path, side: str, weight_type: str, logits: np.ndarray, **extra: Any) -> dict[str, Any]:
    path = tmp_path / f"{side}-{weight_type}-{len(list(tmp_path.iterdir()))}.npy"
    np.save(path, logits)
    run: dict[str, Any] = {
        "model": f"/m/tiny-{weight_type}.gguf", "side": side, "cublas_log": False, "weight_type": weight_type,
        "libraries": ["libggml-cuda.so", "libllama.so"], "llama_cpp_version": "0.3.36", "prompt_tokens": 128,
        "gen_tokens": 3, "tokens": [5, 6, 7], "margins": [0.2, 0.2, 0.2], "logits": str(path), "finite": True,
        "logit_std": float(logits.std()), "offload": [3, 3] if side == "gpu" else None,
    }
    run.update(extra)
    return run


def test_judging_a_gpu_run(tmp_path: Path) -> None:
    """The runs here are written by the test in the worker's format: no GPU on these machines to make them."""
    ref = _logits(rows=8)
    runs = [
        _run(tmp_path, "cpu", "f16", ref),
        _run(tmp_path, "cpu", "q8_0", ref),
        _run(tmp_path, "gpu", "f16", ref + np.float32(3e-4)),
        _run(tmp_path, "gpu", "q8_0", ref, offload=[2, 3]),
        _run(tmp_path, "gpu", "f16", ref, cublas_log=True, cublas_calls={"cublasGemmEx": 14, "cublasCreate_v2": 1},
             cublas_version="13.0"),
    ]
    checks, agreements = verify_runner._judge(runs, GpuPlan(True, Status.PASS, ""), 0.05)
    table = {c.name: (c.status, c.detail) for c in checks}
    assert table["GPU offload f16"] == (Status.PASS, "offloaded 3/3 layers to GPU")
    assert table["GPU offload q8_0"] == (Status.FAIL, "offloaded 2/3 layers to GPU (not all)")
    assert table["CPU and GPU agree f16"][0] == Status.PASS
    assert table["CPU and GPU agree q8_0"][0] == Status.PASS
    assert agreements["f16"]["max_abs_diff"] == pytest.approx(3e-4, rel=0.01)
    assert table["cuBLAS used"] == (Status.PASS, "14 GEMM calls logged by cuBLAS 13.0 for a 128-token f16 batch "
                                          "(cublasGemmEx x14)")
    assert verdict(checks) is Result.FAIL


def test_judging_a_gpu_run_without_cublas_calls_or_offload_line(tmp_path: Path) -> None:
    ref = _logits(rows=8)
    runs = [
        _run(tmp_path, "cpu", "f16", ref),
        _run(tmp_path, "gpu", "f16", ref, offload=None),
        _run(tmp_path, "gpu", "f16", ref, cublas_log=True, cublas_calls={"cublasCreate_v2": 1}),
    ]
    checks, _ = verify_runner._judge(runs, GpuPlan(True, Status.PASS, ""), 0.05)
    table = {c.name: (c.status, c.detail) for c in checks}
    assert table["GPU offload f16"][0] == Status.FAIL and "cannot offload" in table["GPU offload f16"][1]
    assert table["cuBLAS used"][0] == Status.FAIL and "the matrix products ran elsewhere" in table["cuBLAS used"][1]


def test_judging_without_a_gpu_marks_the_gpu_checks_skipped(tmp_path: Path) -> None:
    runs = [_run(tmp_path, "cpu", "f16", _logits(rows=8))]
    gpu = GpuPlan(False, Status.SKIP, "did not run: no NVIDIA GPU on this machine")
    checks, _ = verify_runner._judge(runs, gpu, 0.05)
    assert [(c.name, c.status) for c in checks] == [
        ("llama_cpp loads", Status.PASS), ("CPU run f16", Status.PASS), ("GPU offload", Status.SKIP),
        ("cuBLAS used", Status.SKIP), ("CPU and GPU agree", Status.SKIP),
    ]
    assert verdict(checks) is Result.GPU_SKIPPED
