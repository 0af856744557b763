"""``llamawheel verify``: prove, not assume, that a wheel offloads to the GPU and uses cuBLAS.

static checks (no GPU) -> what rules the wheel out on this GPU (driver, architecture) -> a fresh venv
with the wheel and its runtime dependencies -> tiny models (f16 and q8_0, a real vocabulary) ->
`verify_runner` inside that venv (CPU reference, GPU run, cuBLAS log) -> one report, and a diagnosis
that names the cause and the fix when something is wrong.
"""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llamawheel.building import sdist
from llamawheel.core import fileio, log, paths, proc
from llamawheel.core.errors import (
    DownloadError,
    GpuChecksSkipped,
    RuntimeCheckError,
    VerifyError,
)
from llamawheel.mirror.pipfetch import show_pip_line
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.recipe import catalog
from llamawheel.verify.diagnose import DeviceFacts, Diagnosis, WheelFacts, before_run, from_run_text
from llamawheel.verify.portable import tiny_model, verify_runner
from llamawheel.verify.portable.verify_runner import Check, Result, Status, render_checks, verdict
from llamawheel.verify.static import Report, verify_claim
from llamawheel.wheel import distmeta

VOCAB_MEMBER = "vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf"
SCHEMA = 1


@dataclass
class Settings:
    prompt_tokens: int = 128
    gen_tokens: int = 32
    tolerance: float = verify_runner.DEFAULT_TOLERANCE
    size: str = "tiny"
    seed: int = 0
    vocab: Path | None = None
    work: Path | None = None
    results: Path | None = None
    """A runner report made elsewhere (a GPU machine): judge it instead of running here."""
    cuda: str | None = None
    arch: str | None = None
    runtime: str | None = None
    """What the wheel should be, where its version label does not say (as for ``verify-static``)."""


@dataclass
class VerifyReport:
    wheel: str
    version: str
    claim: str
    static: dict[str, Any]
    device: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    diagnosis: Diagnosis | None = None
    runner: dict[str, Any] | None = None
    performance: list[dict[str, Any]] = field(default_factory=list)
    result: Result = Result.FAIL
    exit_code: int = RuntimeCheckError.exit_code
    work: str = ""

    def to_json(self) -> str:
        data = asdict(self)
        data["checks"] = [asdict(c) for c in self.checks]
        return json.dumps({"schema": SCHEMA} | data, indent=2, default=str)

    def render(self) -> str:
        lines = [f"verify {self.wheel}", f"  claims: {self.claim}"]
        if self.device:
            lines += verify_runner.render_device(self.device)
        lines += render_checks(self.checks)
        lines += verify_runner.render_speed(self.performance)
        if self.diagnosis:
            lines.append(f"  diagnosis: {self.diagnosis.cause}")
            lines.append(f"  fix: {self.diagnosis.fix}")
        lines.append(f"  result: {self.result.upper()}")
        if self.work:
            lines.append(f"  logs: {self.work}")
        return "\n".join(lines)

    def raise_for_result(self) -> None:
        """Exit the way the result says: 0 pass, 9 not what it claims, 11 GPU checks skipped, 12 a runtime
        check failed or this machine cannot run the wheel."""
        if self.result is Result.PASS:
            return
        if self.diagnosis is not None:
            error = VerifyError if self.diagnosis.kind == "cpu-only" else RuntimeCheckError
            raise error(self.diagnosis.cause, self.diagnosis.fix)
        failed = [c for c in self.checks if c.failed]
        if not failed:
            reason = next((c.detail for c in self.checks if c.status is Status.SKIP), "did not run")
            note = self.device.get("note") if self.device else ""
            passed = [c.name for c in self.checks if c.status is Status.PASS]
            raise GpuChecksSkipped(
                f"GPU checks {reason}{f' ({note})' if note else ''}; passed: {', '.join(passed) or 'nothing'}. "
                "This is not a pass",
                "run the GPU half on a machine with the GPU: llamawheel verify WHEEL there, or carry "
                "verify_runner.py and the models (docs/verifying.md, 'Verifying on a GPU machine')",
            )
        first = failed[0]
        if first.name == "static checks":
            raise VerifyError(f"{self.wheel} failed static verification: {first.detail}",
                              "do not install this wheel; rebuild it with llamawheel")
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise RuntimeCheckError(
            f"{self.wheel}: {first.name}: {first.detail}{more}",
            f"the logs of every run are in {self.work}" if self.work else
            "run llamawheel verify again with --work DIR to keep the logs",
        )


def sdist_vocabulary(mirror: MirrorProfile) -> Path:
    """The llama-spm vocabulary GGUF from the recipe's llama-cpp-python sdist (cached beside the sdists)."""
    source = catalog.cpu_recipe().llama_cpp_python
    final = paths.models_dir() / f"ggml-vocab-llama-spm-{source.version}.gguf"
    if final.is_file():
        return final
    archive = sdist.fetch(source, mirror)
    with tarfile.open(archive) as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith("/" + VOCAB_MEMBER)), None)
        if member is None or not member.isfile():
            raise DownloadError(f"{archive.name} holds no {VOCAB_MEMBER}",
                                "pass a vocabulary GGUF with --vocab PATH")
        extracted = tar.extractfile(member)
        assert extracted is not None
        fileio.write_file(final, extracted.read())
    return final


def make_models(folder: Path, vocab: Path, size: str = "tiny", seed: int = 0) -> list[Path]:
    """An f16 model (cuBLAS serves its batches) and a q8_0 one (quantized kernels), same shape and seed."""
    voc = tiny_model.Vocabulary.read(vocab)
    shape = tiny_model.PRESETS[size]
    models = []
    for weight_type in ("f16", "q8_0"):
        out = folder / f"{size}-{weight_type}.gguf"
        tiny_model.write_model(out, voc, shape, weight_type, seed)
        models.append(out)
    log.info("tiny models: " + tiny_model.describe(models[0], shape, voc, "f16").removeprefix("wrote ") + "; and q8_0")
    return models


def fresh_venv(folder: Path, wheel: Path, mirror: MirrorProfile) -> Path:
    """A new virtual environment holding ``wheel`` and its runtime dependencies; returns its python."""
    log.info(f"installing {wheel.name} and its runtime dependencies into a fresh venv ({mirror.name} mirror)")
    proc.run([sys.executable, "-m", "venv", str(folder)], error=RuntimeCheckError,
             what=f"this Python ({sys.executable}) could not make a virtual environment in {folder}",
             tip="on Debian and Ubuntu its venv module is a package of its own: apt-get install python3-venv")
    python = folder / "bin" / "python"
    index = mirror.pypi_index() or "pip's default index"
    proc.stream([str(python), "-m", "pip", "install", "--progress-bar", "off", "--disable-pip-version-check",
                 str(wheel.resolve())], error=DownloadError,
                what=f"pip could not install {wheel.name} with its dependencies from {index}",
                tip="check the mirror (llamawheel mirrors check) or choose another with --mirror",
                env=mirror.pip_env(), on_line=show_pip_line)
    return python


def run_runner(python: Path, models: list[Path], work: Path, gpu: str, settings: Settings) -> dict[str, Any]:
    """Run a copy of verify_runner.py with the venv's python, as it runs on a machine without llamawheel
    (a copy: run from the package folder, llamawheel's modules would sit first on its import path)."""
    out = work / "runner.json"
    script = work / "verify_runner.py"
    shutil.copyfile(verify_runner.__file__, script)
    cmd = [str(python), str(script), *[a for m in models for a in ("--model", str(m))],
           "--json", str(out), "--gpu", gpu, "--work", str(work / "runs"), "--quiet",
           "--prompt-tokens", str(settings.prompt_tokens), "--gen-tokens", str(settings.gen_tokens),
           "--tolerance", str(settings.tolerance)]
    # its output is the user's to see as it comes; its report file, not its return code, says what it found
    done = proc.run(cmd, error=RuntimeCheckError, what="the verification runner could not start", check=False,
                    capture=False, cwd=work)
    if not out.is_file():
        raise RuntimeCheckError(f"the verification runner exited with {done.returncode} and wrote no report",
                                f"its output is above; the runs' logs are in {work / 'runs'}")
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def judge(
    wheel: Path, static: Report, facts: WheelFacts, runner: dict[str, Any] | None, device_probe: dict[str, Any],
    work: str = "",
) -> VerifyReport:
    """One report from the static report, the device and the runner's report; with a diagnosis if wrong."""
    report = VerifyReport(wheel.name, static.version, static.claim, json.loads(static.to_json()), device_probe,
                          work=work)
    failed = static.failed
    report.checks.append(Check(
        "static checks", Status.FAIL if failed else Status.PASS,
        f"{len(static.checks)} passed (ELF files, fat binaries, metadata)" if not failed else
        "; ".join(f"{c.name}: {c.detail}" for c in failed),
    ))
    device = DeviceFacts.from_probe(device_probe)
    report.diagnosis = before_run(facts, device)
    if runner is not None:
        report.runner = runner
        report.device = runner.get("device") or device_probe
        device = DeviceFacts.from_probe(report.device)
        report.checks += [Check(**c) for c in runner.get("checks", [])]
        report.performance = runner.get("performance", [])
        for error in runner.get("errors", []) if report.diagnosis is None else []:
            report.diagnosis = from_run_text(facts, device, error["text"])
            if report.diagnosis:
                break
    if report.diagnosis is not None and report.diagnosis.kind == "driver-missing" and device is None and not failed:
        # A CUDA wheel that needs libcuda.so.1, on a machine without the driver: nothing wrong with the wheel,
        # but nothing ran either.
        report.checks = [c for c in report.checks if c.name != "llama_cpp loads"]
        report.checks.append(Check("GPU checks", Status.SKIP, "did not run, nor did the CPU half: this wheel needs the "
                                                      "NVIDIA driver (libcuda.so.1) even to load"))
        report.diagnosis = None
    report.result = verdict(report.checks)
    report.exit_code = report.result.exit_code
    if report.diagnosis is not None:
        report.result = Result.FAIL
        report.exit_code = VerifyError.exit_code if report.diagnosis.kind == "cpu-only" else RuntimeCheckError.exit_code
    return report


def wheel_facts(wheel: Path, settings: Settings | None = None) -> tuple[Report, WheelFacts]:
    """The static report and the facts the diagnoses work from."""
    s = settings or Settings()
    expect, static = verify_claim(wheel, cuda=s.cuda, arch=s.arch, runtime=s.runtime)
    requires = distmeta.read(wheel).requires_dist
    nvidia = tuple(r for r in requires if r.lower().startswith("nvidia"))
    return static, WheelFacts.from_report(static, expect.cuda_major, expect.runtime, nvidia)


def verify(wheel: Path, mirror: MirrorProfile, settings: Settings) -> VerifyReport:
    static, facts = wheel_facts(wheel, settings)
    if settings.results is not None:
        runner = json.loads(settings.results.read_text())
        return judge(wheel, static, facts, runner, runner.get("device") or {}, str(settings.results.parent))
    probe = verify_runner.probe_devices()
    early = judge(wheel, static, facts, None, probe)
    if early.diagnosis is not None or early.result is Result.FAIL:
        return early  # the wheel cannot be what it claims, or cannot run on this GPU: nothing to install
    keep = settings.work is not None
    work = settings.work or Path(tempfile.mkdtemp(prefix="llamawheel-verify-"))
    work.mkdir(parents=True, exist_ok=True)
    venv = work / "venv"
    if venv.exists():
        shutil.rmtree(venv)  # never reuse an environment: the point is a fresh install
    timer = log.Stopwatch()
    python = fresh_venv(venv, wheel, mirror)
    log.info(f"installed in {log.human_time(timer.elapsed)}")
    vocab = settings.vocab or sdist_vocabulary(mirror)
    models = make_models(work / "models", vocab, settings.size, settings.seed)
    # a CUDA wheel where a GPU is seen must pass the GPU checks; elsewhere they are skipped (or not applicable)
    gpu = "yes" if facts.claimed_cuda is not None and DeviceFacts.from_probe(probe) is not None else "auto"
    runner = run_runner(python, models, work, gpu, settings)
    report = judge(wheel, static, facts, runner, probe, str(work))
    if not keep and report.result is not Result.FAIL:
        shutil.rmtree(work, ignore_errors=True)  # a failure keeps its logs; the report says where
        report.work = ""
    return report
