"""Diagnoses: each fault ends in one message that names the cause and the fix."""

from __future__ import annotations

import pytest

from llamawheel.verify.diagnose import (
    DeviceFacts,
    WheelFacts,
    arch_mismatch,
    before_run,
    cpu_only_labelled_cuda,
    driver_too_old,
    from_run_text,
    missing_library,
    runs_on,
)
from llamawheel.verify.static import Report

NAME = "llama_cpp_python-0.3.36+cu130.sm86-py3-none-manylinux_2_35_x86_64.whl"
SM86 = WheelFacts(NAME, 13, 13, frozenset({86}), frozenset(), "pypi",
                  ("nvidia-cuda-runtime>=13.0,<14", "nvidia-cublas>=13.0,<14"))
H200 = DeviceFacts("NVIDIA H200", 90, "580.65.06")
RTX4090 = DeviceFacts("NVIDIA GeForce RTX 4090", 89, "580.65.06")
# what llama_cpp's loader raises (llama_cpp/_ctypes_extensions.py) when glibc cannot find a NEEDED library
LOADER_CUBLAS = ("RuntimeError: Failed to load shared library '/venv/lib/python3.11/site-packages/llama_cpp/lib/"
                 "libllama.so': libcublas.so.13: cannot open shared object file: No such file or directory")


def test_cpu_only_wheel_labelled_cuda() -> None:
    facts = WheelFacts("llama_cpp_python-0.3.36+cu130-py3-none-manylinux_2_35_x86_64.whl", 13, None)
    d = cpu_only_labelled_cuda(facts)
    assert d is not None and d.kind == "cpu-only"
    assert "is a CPU-only build labelled CUDA 13" in d.cause
    assert "llamawheel build 13 --arch native" in d.fix
    assert cpu_only_labelled_cuda(SM86) is None
    assert cpu_only_labelled_cuda(WheelFacts("x+cpu.whl", None, None)) is None


def test_arch_mismatch_names_what_the_wheel_has_and_what_the_gpu_is() -> None:
    d = arch_mismatch(SM86, H200)
    assert d is not None
    assert d.cause == "this wheel has code for sm_86 only; this GPU (NVIDIA H200) is sm_90"
    assert d.fix == "rebuild with --arch 90 or native: llamawheel build 13 --arch 90"


def test_arch_mismatch_lists_several_architectures_and_ptx() -> None:
    facts = WheelFacts(NAME, 13, 13, frozenset({86, 89}), frozenset({89}))
    d = arch_mismatch(facts, DeviceFacts("NVIDIA GeForce RTX 2080", 75, "580.65.06"))
    assert d is not None
    assert d.cause.startswith("this wheel has code for sm_86, sm_89 and PTX compute_89; this GPU")
    assert "only" not in d.cause


@pytest.mark.parametrize(("cc", "sass", "ptx", "runs"), [
    (86, {86}, set(), True),
    (89, {86}, set(), True),     # same major, newer minor: sm_86 machine code runs on sm_89
    (86, {89}, set(), False),    # older minor cannot run newer machine code
    (100, {90}, set(), False),   # machine code never crosses a major
    (90, {86}, {80}, True),      # PTX is compiled at load for any newer GPU
    (75, set(), {80}, False),
])
def test_which_code_a_gpu_runs(cc: int, sass: set[int], ptx: set[int], runs: bool) -> None:
    assert runs_on(cc, frozenset(sass), frozenset(ptx)) is runs


def test_no_arch_diagnosis_when_the_gpu_can_run_it_or_is_unknown() -> None:
    assert arch_mismatch(SM86, RTX4090) is None
    assert arch_mismatch(SM86, DeviceFacts("?", None, "580.65.06")) is None
    assert arch_mismatch(SM86, None) is None


@pytest.mark.parametrize(("line", "driver", "too_old"), [
    (11, "450.80.01", True),
    (11, "450.80.02", False),
    (12, "525.60.12", True),
    (12, "525.60.13", False),
    (12, "470.256.02", True),
    (13, "575.57.08", True),
    (13, "580.65.06", False),
    (13, "580", False),
])
def test_driver_against_the_cuda_lines_minimum(line: int, driver: str, too_old: bool) -> None:
    facts = WheelFacts(NAME, line, line, frozenset({86}))
    assert (driver_too_old(facts, DeviceFacts("GPU", 86, driver)) is not None) is too_old


def test_old_driver_message_names_the_minimum_and_a_line_that_runs() -> None:
    d = driver_too_old(SM86, DeviceFacts("NVIDIA A100", 80, "535.183.01"))
    assert d is not None and d.kind == "driver"
    assert d.cause == "the NVIDIA driver 535.183.01 is older than CUDA 13 needs (580 or newer)"
    assert d.fix == "upgrade the driver to 580 or newer, or use a CUDA 12 wheel (llamawheel build 12 --arch native)"


def test_missing_cublas_from_the_loader_text() -> None:
    d = missing_library(SM86, LOADER_CUBLAS)
    assert d is not None and d.kind == "libcublas-missing"
    assert d.cause.startswith("libcublas.so.13 was not found when llama_cpp loaded")
    assert "pip install 'nvidia-cublas>=13.0,<14'" in d.fix
    assert "--no-deps" in d.fix


def test_missing_cublas_of_cuda_12_without_requires() -> None:
    facts = WheelFacts(NAME, 12, 12, frozenset({86}))
    text = "OSError: libcublas.so.12: cannot open shared object file: No such file or directory"
    d = missing_library(facts, text)
    assert d is not None and "pip install 'nvidia-cublas-cu12'" in d.fix


def test_missing_cublas_for_a_system_runtime_wheel() -> None:
    facts = WheelFacts(NAME, 12, 12, frozenset({86}), runtime="system")
    d = missing_library(facts, LOADER_CUBLAS.replace("so.13", "so.12"))
    assert d is not None
    assert "LD_LIBRARY_PATH" in d.fix and "pip" not in d.fix


def test_missing_cudart() -> None:
    d = missing_library(SM86, "libcudart.so.13: cannot open shared object file: No such file or directory")
    assert d is not None and d.kind == "libcudart-missing"
    assert "nvidia-cuda-runtime>=13.0,<14" in d.fix


def test_missing_driver_library() -> None:
    d = missing_library(SM86, "libcuda.so.1: cannot open shared object file: No such file or directory")
    assert d is not None and d.kind == "driver-missing"
    assert "580 or newer for CUDA 13" in d.fix


def test_any_other_library() -> None:
    d = missing_library(SM86, "libgomp.so.1: cannot open shared object file: No such file or directory")
    assert d is not None and d.kind == "library-missing" and "libgomp.so.1" in d.cause
    assert missing_library(SM86, "Segmentation fault") is None


def test_cuda_runtime_errors_in_llama_cpps_log() -> None:
    no_image = "ggml_cuda_compute_forward: CUDA error: no kernel image is available for execution on the device"
    d = from_run_text(SM86, H200, no_image)
    assert d is not None and d.cause == "this wheel has code for sm_86 only; this GPU (NVIDIA H200) is sm_90"
    driver = "CUDA error: CUDA driver version is insufficient for CUDA runtime version"
    d = from_run_text(SM86, DeviceFacts("NVIDIA A100", 80, "550.54.15"), driver)
    assert d is not None and d.kind == "driver" and "550.54.15" in d.cause
    assert from_run_text(SM86, H200, "llama_model_load: error loading model: tensor data is not aligned") is None


def test_before_run_puts_cpu_only_first() -> None:
    facts = WheelFacts(NAME, 13, None)
    d = before_run(facts, DeviceFacts("NVIDIA A100", 80, "470.57.02"))
    assert d is not None and d.kind == "cpu-only"
    assert before_run(SM86, RTX4090) is None


def test_facts_come_from_the_libraries_not_the_label() -> None:
    report = Report(NAME, "0.3.36+cu130.sm86", 1, "CUDA 13")
    report.libraries = {
        "llama_cpp/lib/libggml-cuda.so": {"needed": ["libcudart.so.12", "libcublas.so.12"], "sass": [86, 89],
                                          "ptx": [89], "runpath": [], "size": 1},
        "llama_cpp/lib/libllama.so": {"needed": ["libggml.so"], "sass": [], "ptx": [], "runpath": [], "size": 1},
    }
    facts = WheelFacts.from_report(report, 13, "pypi", ("nvidia-cublas>=13.0,<14",))
    assert facts.cuda_major == 12  # what libggml-cuda.so really needs, whatever the label says
    assert facts.sass == {86, 89} and facts.ptx == {89}
    cpu = Report(NAME, "0.3.36+cu130", 1, "CUDA 13")
    cpu.libraries = {"llama_cpp/lib/libllama.so": {"needed": ["libc.so.6"], "sass": [], "ptx": []}}
    assert WheelFacts.from_report(cpu, 13, "pypi").cuda_major is None


def test_device_from_the_runner_probe() -> None:
    probe = {"devices": [{"index": 0, "name": "NVIDIA H200", "compute_capability": "9.0", "driver": None}],
             "driver": "580.65.06"}
    assert DeviceFacts.from_probe(probe) == DeviceFacts("NVIDIA H200", 90, "580.65.06")
    assert DeviceFacts.from_probe({"devices": [], "driver": None}) is None
    no_cc = {"devices": [{"index": 0, "name": "Tesla T4", "compute_capability": None, "driver": "470.82.01"}]}
    assert DeviceFacts.from_probe(no_cc) == DeviceFacts("Tesla T4", None, "470.82.01")


def test_missing_cublas_in_a_wheel_that_claims_no_cuda_takes_the_line_from_the_library() -> None:
    facts = WheelFacts("llama_cpp_python-0.3.36+cpu-py3-none-manylinux_2_35_x86_64.whl", None, None)
    d = missing_library(facts, LOADER_CUBLAS)
    assert d is not None
    assert d.cause.endswith("needs cuBLAS of CUDA 13")
    assert "pip install 'nvidia-cublas'" in d.fix
