"""Run GGUF models with the installed llama_cpp on the CPU and on the GPU, and prove what happened.

One self-contained file (standard library, numpy and llama_cpp only): copy it to a GPU machine
that has neither llamawheel nor internet, install the wheel there, and run

    python verify_runner.py --model tiny-f16.gguf --model tiny-q8_0.gguf --gpu yes --json out.json

Each model runs in separate processes, so nothing one run loads can leak into another:
- a CPU reference with ``CUDA_VISIBLE_DEVICES=`` (the GPU hidden: with ``n_gpu_layers=0`` alone a CUDA
  build still sends big batches to the GPU);
- the GPU run, every layer offloaded (llama.cpp's own ``offloaded N/M layers to GPU`` line is the proof);
- for f16 weights, the GPU run again with ``CUBLAS_LOGINFO_DBG=1``: cuBLAS logs every call it serves,
  so the count of ``cublas*Gemm*`` calls proves the batch went through cuBLAS (libcublas being mapped
  proves nothing: it is loaded at import either way).
The CPU and GPU logits over a fixed prompt must agree within a stated tolerance, and so must greedy decoding.

Exit codes: 0 every check passed, 11 the GPU checks did not run, 12 a check failed (``llamawheel verify``
uses the same codes).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess  # not core.proc: this file is copied to other machines and imports no llamawheel
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: llamawheel reads this module's helpers without numpy's start-up
    import numpy as np
    import numpy.typing as npt

SCHEMA = 1
EXIT_PASS, EXIT_GPU_SKIPPED, EXIT_FAILED = 0, 11, 12
"""llamawheel's GpuChecksSkipped and RuntimeCheckError codes, written here again because this file imports nothing
of llamawheel (a unit test holds them equal)."""
DEFAULT_TOLERANCE = 0.05
"""Largest CPU/GPU logit difference allowed, as a fraction of the standard deviation of the CPU's logits
(measured on an H200: 0.3% of it for a 1B-parameter f16 model with random weights)."""
FILE_TYPES = {0: "f32", 1: "f16", 7: "q8_0", 2: "q4_0", 3: "q4_1", 8: "q5_0", 9: "q5_1", 32: "bf16"}
PROMPT = (
    "The wheel was built from source on a machine without a graphics card, so it has to prove on this one "
    "that every layer of the model runs on the GPU, that matrix products go through cuBLAS, and that the "
    "numbers it computes are the numbers the processor computes. Nothing is assumed; every claim is measured. "
)

_OFFLOAD = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_CUDA_DEVICE = re.compile(r"Device (\d+): (.+?), compute capability (\d+)\.(\d+)")
_CUBLAS_CALL = re.compile(r"^I! cuBLAS \(v([\d.]+)\)[^\n]*?\b(cublas\w+)\(", re.MULTILINE)
_PROC_DRIVER = re.compile(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)")


# ---------------------------------------------------------------- reading what llama.cpp, cuBLAS and nvidia-smi say


def parse_offload(log: str) -> tuple[int, int] | None:
    """The last ``offloaded N/M layers to GPU`` of a llama.cpp log, or None (a CPU build prints none)."""
    found = _OFFLOAD.findall(log)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def parse_cuda_devices(log: str) -> list[dict[str, Any]]:
    """The devices ggml's CUDA backend lists: ``Device 0: NVIDIA H200, compute capability 9.0, VMM: yes``."""
    seen: dict[int, dict[str, Any]] = {}
    for m in _CUDA_DEVICE.finditer(log):
        seen.setdefault(int(m.group(1)), {
            "index": int(m.group(1)), "name": m.group(2).strip(),
            "compute_capability": f"{m.group(3)}.{m.group(4)}", "driver": None,
        })
    return list(seen.values())


def count_cublas_calls(log: str) -> tuple[dict[str, int], str | None]:
    """Calls per cuBLAS function in a ``CUBLAS_LOGDEST_DBG`` file, and the cuBLAS version it names."""
    calls: Counter[str] = Counter()
    version = None
    for m in _CUBLAS_CALL.finditer(log):
        version = version or m.group(1)
        calls[m.group(2)] += 1
    return dict(sorted(calls.items())), version


def gemm_calls(calls: dict[str, int]) -> int:
    return sum(n for name, n in calls.items() if "Gemm" in name or "gemm" in name)


def parse_nvidia_smi(csv: str) -> list[dict[str, Any]]:
    """Rows of ``nvidia-smi --query-gpu=index,name,compute_cap,driver_version,memory.total
    --format=csv,noheader,nounits`` (``compute_cap`` may be absent: older drivers lack it)."""
    devices = []
    for line in csv.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        has_cc = len(parts) >= 5 and re.fullmatch(r"\d+\.\d+", parts[-3]) is not None
        tail = 3 if has_cc else 2
        name = ", ".join(parts[1:len(parts) - tail])
        devices.append({
            "index": int(parts[0]),
            "name": name,
            "compute_capability": parts[-3] if has_cc else None,
            "driver": parts[-2],
            "memory_mib": int(parts[-1]) if parts[-1].isdigit() else None,
        })
    return devices


def parse_proc_driver(text: str) -> str | None:
    """The driver version in ``/proc/driver/nvidia/version``."""
    m = _PROC_DRIVER.search(text)
    return m.group(1) if m else None


def probe_devices() -> dict[str, Any]:
    """What NVIDIA GPUs this machine has, from nvidia-smi (and the kernel driver's version file)."""
    out: dict[str, Any] = {"devices": [], "source": None, "driver": None, "note": ""}
    proc_version = Path("/proc/driver/nvidia/version")
    if proc_version.is_file():
        out["driver"] = parse_proc_driver(proc_version.read_text(errors="replace"))
    smi = shutil.which("nvidia-smi")
    if smi is None:
        out["note"] = "nvidia-smi not found" + ("" if out["driver"] else ", no NVIDIA kernel driver loaded")
        return out
    for fields in ("index,name,compute_cap,driver_version,memory.total", "index,name,driver_version,memory.total"):
        try:
            res = subprocess.run([smi, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            out["note"] = f"nvidia-smi failed: {exc}"
            return out
        if res.returncode == 0:
            out["devices"] = parse_nvidia_smi(res.stdout)
            out["source"] = "nvidia-smi"
            out["driver"] = out["driver"] or next((d["driver"] for d in out["devices"]), None)
            out["note"] = "" if out["devices"] else "nvidia-smi lists no GPU"
            return out
        out["note"] = f"nvidia-smi: {(res.stdout + res.stderr).strip()[:200]}"
    return out


# ---------------------------------------------------------------- judging


class _Word(str, Enum):
    """An enum whose members read as their values wherever they are shown: ``str()``, f-strings, JSON."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Status(_Word):
    """What became of one check; the value is what the table and the JSON report show."""

    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"
    """Not run here, for a reason it gives: neither a pass nor a failure (a GPU check on a machine without one)."""
    NA = "N/A"
    """Does not apply to this wheel (the GPU checks of a CPU build)."""


class Result(_Word):
    """The verdict over every check, with its exit code."""

    PASS = "pass"
    FAIL = "fail"
    GPU_SKIPPED = "gpu-skipped"

    @property
    def exit_code(self) -> int:
        return {Result.PASS: EXIT_PASS, Result.FAIL: EXIT_FAILED, Result.GPU_SKIPPED: EXIT_GPU_SKIPPED}[self]


@dataclass
class Check:
    """One check of a wheel, static or run, with what it found."""

    name: str
    status: Status
    detail: str

    def __post_init__(self) -> None:
        self.status = Status(self.status)  # as read back from a JSON report

    @property
    def failed(self) -> bool:
        return self.status is Status.FAIL


@dataclass
class GpuPlan:
    """Whether the GPU half runs on this machine, and if not, how its checks count and why."""

    ran: bool
    status: Status
    reason: str


@dataclass
class Agreement:
    """How closely a device run matches the CPU reference."""

    max_abs_diff: float
    logit_std: float
    tolerance: float
    """Absolute: the relative tolerance times ``logit_std``."""
    tokens_compared: int
    tokens_equal: int
    near_tie: bool
    """The greedy tokens part where the reference's top two logits are closer than twice the tolerance."""
    finite: bool
    ok: bool
    detail: str


def compare_runs(
    ref_logits: npt.NDArray[np.float32],
    dev_logits: npt.NDArray[np.float32],
    ref_tokens: Sequence[int],
    dev_tokens: Sequence[int],
    ref_margins: Sequence[float],
    relative_tolerance: float = DEFAULT_TOLERANCE,
) -> Agreement:
    """Compare the prompt's logits (every position) and the greedy tokens of two runs of one model.

    Both runs see the same tokens until their greedy choices first differ, so a difference there is
    legitimate only at a near tie: where the reference's best two logits lie within the noise allowed.
    """
    import numpy as np

    if ref_logits.shape != dev_logits.shape:
        return Agreement(float("inf"), 0.0, 0.0, 0, 0, False, False, False,
                         f"logits of different shapes: CPU {ref_logits.shape}, device {dev_logits.shape}")
    finite = bool(np.isfinite(dev_logits).all() and np.isfinite(ref_logits).all())
    std = float(np.std(ref_logits)) if ref_logits.size else 0.0
    tolerance = relative_tolerance * std
    diff = float("inf")
    if finite and ref_logits.size:
        diff = float(np.max(np.abs(ref_logits.astype(np.float64) - dev_logits)))
    n = min(len(ref_tokens), len(dev_tokens))
    equal = next((i for i in range(n) if ref_tokens[i] != dev_tokens[i]), n)
    near_tie = equal < n and equal < len(ref_margins) and ref_margins[equal] <= 2 * tolerance
    tokens_ok = (equal == n and len(ref_tokens) == len(dev_tokens)) or near_tie
    logits_ok = finite and std > 0 and diff <= tolerance
    if not finite:
        detail = "the device's logits hold NaN or infinity"
    elif std == 0:
        detail = "the CPU's logits are all equal: the model computes nothing to compare"
    else:
        detail = (f"largest logit difference {diff:.2g} {'<=' if diff <= tolerance else '>'} {tolerance:.2g} "
                  f"({relative_tolerance:g} x logit std {std:.3g}); greedy tokens {equal}/{n} equal")
        if near_tie:
            detail += (f", parting at token {equal} where the CPU's best two logits are "
                       f"{ref_margins[equal]:.2g} apart (a near tie)")
    return Agreement(diff, std, tolerance, n, equal, near_tie, finite, logits_ok and tokens_ok, detail)


def verdict(checks: Sequence[Check]) -> Result:
    """FAIL (exit 12) if any check failed, GPU_SKIPPED (exit 11) if any was skipped, else PASS (exit 0)."""
    statuses = {c.status for c in checks}
    if Status.FAIL in statuses:
        return Result.FAIL
    if Status.SKIP in statuses:
        return Result.GPU_SKIPPED
    return Result.PASS


def render_checks(checks: Sequence[Check], indent: str = "  ") -> list[str]:
    width = max((len(c.name) for c in checks), default=10)
    return [f"{indent}{c.status:<4}  {c.name.ljust(width)}  {c.detail}" for c in checks]


# ---------------------------------------------------------------- one run, in its own process


def backend_libraries() -> list[str]:
    """The shared libraries in the installed llama_cpp package, found without importing it."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return []
    libs: set[str] = set()
    for location in spec.submodule_search_locations:
        for path in Path(location).rglob("*.so*"):
            libs.add(path.name)
    return sorted(libs)


def _greedy(scores: npt.NDArray[np.float32]) -> tuple[int, float]:
    """The best token of one row of logits and its lead over the second best."""
    import numpy as np

    top2 = np.argpartition(scores, -2)[-2:]
    best, second = (int(top2[1]), int(top2[0])) if scores[top2[1]] >= scores[top2[0]] else (int(top2[0]), int(top2[1]))
    return best, float(scores[best] - scores[second])


def worker(args: argparse.Namespace) -> int:
    """Load one model, evaluate the prompt as one batch, decode greedily; write the facts as JSON."""
    import numpy as np

    result: dict[str, Any] = {"side": args.side, "model": str(args.model), "libraries": backend_libraries()}
    out = Path(args.out)
    started = time.perf_counter()
    try:
        llama_cpp = importlib.import_module("llama_cpp")
    except Exception as exc:  # the loader's own words: which library was missing
        result["error"] = {"stage": "import", "text": f"{type(exc).__name__}: {exc}"}
        out.write_text(json.dumps(result))
        return 3
    result["import_s"] = time.perf_counter() - started
    result["llama_cpp_version"] = getattr(llama_cpp, "__version__", "?")
    result["supports_gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
    n_ctx = max(256, -(-(args.prompt_tokens + args.gen_tokens + 8) // 256) * 256)
    try:
        t0 = time.perf_counter()
        llm = llama_cpp.Llama(
            model_path=str(args.model), n_gpu_layers=-1 if args.side == "gpu" else 0, n_ctx=n_ctx,
            n_batch=max(512, args.prompt_tokens), n_ubatch=max(512, args.prompt_tokens),
            logits_all=True, seed=0, verbose=True,
        )
        result["load_s"] = time.perf_counter() - t0
        metadata = dict(getattr(llm, "metadata", {}) or {})
        file_type = metadata.get("general.file_type")
        result["weight_type"] = FILE_TYPES.get(int(file_type), f"type {file_type}") if file_type else "?"
        result["model_name"] = metadata.get("general.name", "")
        result["n_params"] = int(llm._model.n_params()) if hasattr(llm, "_model") else None

        text = PROMPT
        tokens: list[int] = llm.tokenize(text.encode(), add_bos=True)
        while len(tokens) < args.prompt_tokens:
            text += PROMPT
            tokens = llm.tokenize(text.encode(), add_bos=True)
        prompt = tokens[:args.prompt_tokens]

        t0 = time.perf_counter()
        llm.eval(prompt)
        prompt_s = time.perf_counter() - t0
        first, margin = _greedy(np.asarray(llm.scores[len(prompt) - 1], dtype=np.float32))
        ttft = time.perf_counter() - t0
        logits = np.array(llm.scores[:len(prompt)], dtype=np.float32)  # copied after the clock stopped
        generated, margins = [first], [margin]
        t0 = time.perf_counter()
        for _ in range(args.gen_tokens - 1):
            llm.eval([generated[-1]])
            token, margin = _greedy(np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32))
            generated.append(token)
            margins.append(margin)
        gen_s = time.perf_counter() - t0
        np.save(args.logits, logits)
        result.update({
            "prompt_tokens": len(prompt), "prompt_s": prompt_s, "prompt_tps": len(prompt) / prompt_s,
            "ttft_s": ttft, "gen_tokens": len(generated), "gen_s": gen_s,
            "gen_tps": (len(generated) - 1) / gen_s if gen_s > 0 and len(generated) > 1 else None,
            "tokens": generated, "margins": margins, "logits": str(args.logits),
            "logit_std": float(np.std(logits)), "finite": bool(np.isfinite(logits).all()),
            "sample": llm.detokenize(generated).decode(errors="replace")[:200],
        })
    except Exception as exc:
        result["error"] = {"stage": "run", "text": f"{type(exc).__name__}: {exc}"}
        out.write_text(json.dumps(result))
        return 4
    out.write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------- orchestration


@dataclass
class RunSpec:
    model: Path
    side: str  # "cpu" or "gpu"
    cublas_log: bool = False

    @property
    def label(self) -> str:
        return f"{self.side} {self.model.stem}" + (" (cuBLAS log)" if self.cublas_log else "")


def _spawn(spec: RunSpec, work: Path, args: argparse.Namespace, index: int) -> dict[str, Any]:
    """Run ``worker`` for one model and side in a fresh process; return its facts plus what its log says."""
    stem = f"{index:02d}-{spec.side}-{spec.model.stem}" + ("-cublas" if spec.cublas_log else "")
    out, logits, log, cublas = (work / f"{stem}{ext}" for ext in (".json", ".npy", ".log", ".cublas.log"))
    env = dict(os.environ)
    if spec.side == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # hide the GPU: n_gpu_layers=0 alone still offloads big batches
    if spec.cublas_log:
        env.update({"CUBLAS_LOGINFO_DBG": "1", "CUBLAS_LOGDEST_DBG": str(cublas)})
    cmd = [sys.executable, str(Path(__file__).resolve()), "_worker", "--model", str(spec.model), "--side", spec.side,
           "--out", str(out), "--logits", str(logits), "--prompt-tokens", str(args.prompt_tokens),
           "--gen-tokens", str(2 if spec.cublas_log else args.gen_tokens)]  # logged: (almost) only the batch
    _say(f"{spec.label}: running")
    started = time.perf_counter()
    with log.open("w") as log_file:
        try:
            code = subprocess.run(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                  timeout=args.timeout).returncode
        except subprocess.TimeoutExpired:
            code = -1
    text = log.read_text(errors="replace")
    result: dict[str, Any] = {"side": spec.side, "model": str(spec.model)}
    if out.is_file():
        result = json.loads(out.read_text())
    result.update({"label": spec.label, "returncode": code, "wall_s": time.perf_counter() - started,
                   "log": str(log), "cublas_log": spec.cublas_log})
    if code != 0 and "error" not in result:
        reason = "timed out" if code == -1 else f"exited with {code}"
        result["error"] = {"stage": "crash", "text": f"the run {reason}"}
    if "error" in result:
        result["error"]["log_tail"] = text.strip().splitlines()[-25:]
    offload = parse_offload(text)
    result["offload"] = list(offload) if offload else None
    result["cuda_devices"] = parse_cuda_devices(text)
    if spec.cublas_log:
        calls, version = count_cublas_calls(cublas.read_text(errors="replace")) if cublas.is_file() else ({}, None)
        result["cublas_calls"] = calls
        result["cublas_version"] = version
    _say(f"{spec.label}: " + ("ok" if "error" not in result else f"failed ({result['error']['text']})"))
    return result


def _say(message: str) -> None:
    print(f"verify_runner: {message}", file=sys.stderr, flush=True)


def _error_text(run: dict[str, Any]) -> str:
    err = run.get("error") or {}
    return "\n".join([err.get("text", ""), *err.get("log_tail", [])])


def _judge(
    runs: list[dict[str, Any]], gpu: GpuPlan, relative_tolerance: float
) -> tuple[list[Check], dict[str, Any]]:
    import numpy as np

    checks: list[Check] = []
    agreements: dict[str, Any] = {}
    first = runs[0] if runs else {}
    if first.get("error", {}).get("stage") == "import":
        checks.append(Check("llama_cpp loads", Status.FAIL, first["error"]["text"]))
        return checks, agreements
    libs = [lib.split(".so")[0] for lib in first.get("libraries", [])]
    checks.append(Check("llama_cpp loads", Status.PASS, f"{first.get('llama_cpp_version', '?')}; {', '.join(libs)}"))
    by_key = {(r["model"], r["side"], r["cublas_log"]): r for r in runs}
    models = list(dict.fromkeys(r["model"] for r in runs))
    for model in models:
        cpu = by_key.get((model, "cpu", False), {})
        kind = cpu.get("weight_type") or Path(model).stem
        if "error" in cpu:
            checks.append(Check(f"CPU run {kind}", Status.FAIL, cpu["error"]["text"]))
            continue
        checks.append(Check(
            f"CPU run {kind}", Status.PASS if cpu.get("finite") and cpu.get("logit_std", 0) > 0 else Status.FAIL,
            f"{cpu['prompt_tokens']}-token prompt as one batch, {cpu['gen_tokens']} tokens decoded greedily, "
            + ("logits finite" if cpu.get("finite") else "logits NOT finite") + f" (std {cpu['logit_std']:.3g})",
        ))
    if not gpu.ran:
        status = Status.SKIP if gpu.status is Status.SKIP else Status.NA
        for name in ("GPU offload", "cuBLAS used", "CPU and GPU agree"):
            checks.append(Check(name, status, gpu.reason))
        return checks, agreements
    for model in models:
        cpu = by_key.get((model, "cpu", False), {})
        dev = by_key.get((model, "gpu", False), {})
        kind = dev.get("weight_type") or cpu.get("weight_type") or Path(model).stem
        if "error" in dev:
            checks.append(Check(f"GPU run {kind}", Status.FAIL, dev["error"]["text"]))
            continue
        offload = dev.get("offload")
        if offload is None:
            checks.append(Check(f"GPU offload {kind}", Status.FAIL,
                                "llama.cpp printed no 'offloaded N/M layers to GPU': this llama_cpp cannot offload"))
        else:
            n, m = offload
            checks.append(Check(f"GPU offload {kind}", Status.PASS if n == m and m > 0 else Status.FAIL,
                                f"offloaded {n}/{m} layers to GPU" + ("" if n == m else " (not all)")))
        if "error" in cpu:
            checks.append(Check(f"CPU and GPU agree {kind}", Status.SKIP, "no CPU reference (its run failed)"))
            continue
        agreement = compare_runs(
            np.load(cpu["logits"]), np.load(dev["logits"]), cpu["tokens"], dev["tokens"], cpu["margins"],
            relative_tolerance,
        )
        agreements[kind] = asdict(agreement)
        agree = Status.PASS if agreement.ok else Status.FAIL
        checks.append(Check(f"CPU and GPU agree {kind}", agree, agreement.detail))
    logged = [r for r in runs if r["cublas_log"]]
    if not logged:
        checks.append(Check("cuBLAS used", Status.SKIP, "no f16 model was given: cuBLAS serves f16 weights in batches"))
    for run in logged:
        if "error" in run:
            checks.append(Check("cuBLAS used", Status.FAIL, run["error"]["text"]))
            continue
        calls = run.get("cublas_calls") or {}
        n = gemm_calls(calls)
        names = ", ".join(f"{k} x{v}" for k, v in calls.items() if "emm" in k)
        checks.append(Check(
            "cuBLAS used", Status.PASS if n else Status.FAIL,
            f"{n} GEMM calls logged by cuBLAS {run.get('cublas_version') or ''} for a {run.get('prompt_tokens')}-token "
            f"f16 batch ({names})" if n else
            "cuBLAS logged no GEMM call for an f16 batch (CUBLAS_LOGINFO_DBG=1): the matrix products ran elsewhere",
        ))
    return checks, agreements


def _performance(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("load_s", "prompt_tps", "gen_tps", "ttft_s", "prompt_tokens", "gen_tokens", "n_params")
    return [
        {"side": r["side"], "weight_type": r.get("weight_type"), "model": Path(r["model"]).name}
        | {k: r.get(k) for k in keys}
        for r in runs if "error" not in r and not r["cublas_log"]
    ]


def render_device(device: dict[str, Any]) -> list[str]:
    if not device.get("devices"):
        return [f"  device: no NVIDIA GPU ({device.get('note') or 'none found'})"]
    lines = []
    for d in device["devices"]:
        cc = f", compute capability {d['compute_capability']}" if d.get("compute_capability") else ""
        lines.append(f"  device: GPU {d['index']}: {d['name']}{cc}, driver {d.get('driver') or device.get('driver')}"
                     f" (from {device.get('source') or '?'})")
    return lines


def render_speed(performance: Sequence[dict[str, Any]]) -> list[str]:
    lines = []
    for p in performance:
        if p.get("prompt_tps") is None:
            continue
        gen = f"{p['gen_tps']:.0f}" if p.get("gen_tps") else "?"
        lines.append(
            f"  speed {p['side'].upper()} {p['weight_type']}: load {p['load_s']:.2f} s, prompt {p['prompt_tps']:.0f} "
            f"tok/s ({p['prompt_tokens']} tokens), generation {gen} tok/s, first token {p['ttft_s'] * 1000:.0f} ms"
        )
    return lines


def render(report: dict[str, Any]) -> str:
    """The short table: device, checks, throughput, result."""
    lines = render_device(report["device"])
    lines += render_checks([Check(**c) for c in report["checks"]])
    lines += render_speed(report["performance"])
    lines.append(f"  result: {report['result'].upper()}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Probe the GPU, run every model on the CPU (and on the GPU), judge, and return the report."""
    device = probe_devices()
    libraries = backend_libraries()
    cuda_build = any(lib.startswith("libggml-cuda") for lib in libraries)
    visible = bool(device["devices"]) or device["driver"] is not None
    if args.gpu == "no":
        gpu = GpuPlan(False, Status.NA, "not asked for (--gpu no)")
    elif not libraries:
        gpu = GpuPlan(False, Status.FAIL, f"llama_cpp is not installed in {sys.executable}")
    elif not cuda_build and args.gpu == "auto":
        gpu = GpuPlan(False, Status.NA, "this llama_cpp is a CPU build (no libggml-cuda)")
    elif not visible:
        gpu = GpuPlan(False, Status.SKIP if args.gpu == "auto" else Status.FAIL,
                      "did not run: no NVIDIA GPU on this machine")
    elif not cuda_build:
        gpu = GpuPlan(False, Status.FAIL, "this llama_cpp is a CPU build (no libggml-cuda): it cannot use the GPU")
    else:
        gpu = GpuPlan(True, Status.PASS, "")
    args.model = [str(Path(m)) for m in args.model]  # one spelling: the runs are matched by it
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="llamawheel-verify-"))
    work.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    specs = [RunSpec(Path(m), "cpu") for m in args.model]
    if gpu.ran:
        specs += [RunSpec(Path(m), "gpu") for m in args.model]
    for i, spec in enumerate(specs):
        runs.append(_spawn(spec, work, args, i))
        if runs[-1].get("error", {}).get("stage") == "import":
            break  # the same import fails for every run
    if gpu.ran:
        for i, model in enumerate(args.model, start=len(specs)):
            plain = next((r for r in runs if r["model"] == model and r["side"] == "gpu"), {})
            if plain.get("weight_type") == "f16":
                runs.append(_spawn(RunSpec(Path(model), "gpu", cublas_log=True), work, args, i))
    for r in runs:  # the device list nvidia-smi could not give
        if not device["devices"] and r.get("cuda_devices"):
            device["devices"] = r["cuda_devices"]
            device["source"] = "llama.cpp log"
    checks, agreements = _judge(runs, gpu, args.tolerance)
    if gpu.status is Status.FAIL and not gpu.ran:
        checks.append(Check("GPU checks", Status.FAIL, gpu.reason))
    result = verdict(checks)
    return {
        "schema": SCHEMA,
        "runner": "llamawheel verify_runner",
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device,
        "llama_cpp": {
            "version": next((r.get("llama_cpp_version") for r in runs if r.get("llama_cpp_version")), None),
            "libraries": libraries,
            "cuda_build": cuda_build,
            "import_error": next((_error_text(r) for r in runs if r.get("error", {}).get("stage") == "import"), None),
        },
        "gpu": asdict(gpu),
        "settings": {"prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens,
                     "relative_tolerance": args.tolerance, "models": [str(m) for m in args.model]},
        "runs": runs,
        "errors": [{"label": r["label"], "text": _error_text(r)} for r in runs if "error" in r],
        "agreement": agreements,
        "checks": [asdict(c) for c in checks],
        "performance": _performance(runs),
        "result": result,
        "exit_code": result.exit_code,
        "work": str(work),
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="verify_runner.py", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--model", action="append", required=True, help="a GGUF model (repeat: f16 and q8_0)")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--gpu", choices=("auto", "yes", "no"), default="auto",
                   help="auto: GPU checks when a GPU and a CUDA build are there (else skipped, exit 11); "
                        "yes: they must run (else exit 12); no: the CPU half only")
    p.add_argument("--prompt-tokens", type=int, default=128, help="prompt length, evaluated as one batch (128)")
    p.add_argument("--gen-tokens", type=int, default=32, help="tokens to decode greedily (32)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"largest logit difference, as a fraction of the logits' std ({DEFAULT_TOLERANCE})")
    p.add_argument("--work", help="folder for logs and logits (default: a new temporary folder)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run (1800)")
    p.add_argument("--quiet", action="store_true", help="print no table (the JSON report only)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_worker"]:
        w = argparse.ArgumentParser(prog="verify_runner.py _worker")
        for name in ("--model", "--side", "--out", "--logits"):
            w.add_argument(name, required=True)
        w.add_argument("--prompt-tokens", type=int, required=True)
        w.add_argument("--gen-tokens", type=int, required=True)
        return worker(w.parse_args(argv[1:]))
    args = _parser().parse_args(argv)
    for m in args.model:
        if not Path(m).is_file():
            print(f"verify_runner: ERROR no such model file: {m}", file=sys.stderr)
            return 2
    report = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if not args.quiet:
        print(render(report))
    return int(report["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
