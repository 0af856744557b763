"""Diagnoses: one message naming the cause and the fix, instead of a stack trace.

Pure functions of what is known: the wheel's static facts (read from its ELF files and metadata),
the GPU (from nvidia-smi or llama.cpp's log) and the text a failed load or run left behind.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llamawheel.verify.static import Report

DRIVER_MINIMUM = {11: "450.80.02", 12: "525.60.13", 13: "580"}
"""The oldest Linux driver each CUDA major runs on (NVIDIA's minor-version compatibility table)."""

_LIBCUDART = re.compile(r"^libcudart\.so\.(\d+)")
_MISSING_LIB = re.compile(r"(lib[\w+.-]*?\.so(?:\.\d+)*): cannot open shared object file")


@dataclass(frozen=True)
class Diagnosis:
    kind: str
    cause: str
    fix: str


@dataclass(frozen=True)
class WheelFacts:
    """What the wheel really holds, and what its version label claims."""

    name: str
    claimed_cuda: int | None
    cuda_major: int | None
    """From the ``libcudart.so.N`` its libraries need; None when no library holds CUDA code."""
    sass: frozenset[int] = frozenset()
    ptx: frozenset[int] = frozenset()
    runtime: str = "pypi"
    requires: tuple[str, ...] = ()

    @classmethod
    def from_report(cls, report: Report, claimed_cuda: int | None, runtime: str,
                    requires: tuple[str, ...] = ()) -> WheelFacts:
        libs = report.libraries.values()
        needed = [str(d) for lib in libs for d in _strings(lib.get("needed"))]
        majors = sorted({int(m.group(1)) for d in needed if (m := _LIBCUDART.match(d))})
        sass = frozenset(int(a) for lib in libs for a in _strings(lib.get("sass")))
        ptx = frozenset(int(a) for lib in libs for a in _strings(lib.get("ptx")))
        cuda = majors[-1] if majors else (claimed_cuda if (sass or ptx) else None)
        return cls(report.wheel, claimed_cuda, cuda, sass, ptx, runtime, requires)


def _strings(value: object) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple, set, frozenset)) else []


@dataclass(frozen=True)
class DeviceFacts:
    name: str
    compute_capability: int | None
    """``90`` for 9.0; None when unknown."""
    driver: str | None

    @classmethod
    def from_probe(cls, probe: Mapping[str, Any]) -> DeviceFacts | None:
        """The first GPU of the runner's device probe (``verify_runner.probe_devices``), or None."""
        devices = probe.get("devices") or []
        if not devices:
            return None
        d = devices[0]
        cc = d.get("compute_capability")
        number = int(cc.replace(".", "")) if isinstance(cc, str) and re.fullmatch(r"\d+\.\d", cc) else None
        return cls(str(d.get("name") or "?"), number, d.get("driver") or probe.get("driver"))


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def _sm(values: frozenset[int]) -> str:
    return ", ".join(f"sm_{v}" for v in sorted(values))


def _line_of(wheel: WheelFacts) -> int | None:
    return wheel.cuda_major or wheel.claimed_cuda


def cpu_only_labelled_cuda(wheel: WheelFacts) -> Diagnosis | None:
    """A wheel named ``+cu130`` whose libraries hold no CUDA code: the bug users hit most."""
    if wheel.claimed_cuda is None or wheel.cuda_major is not None:
        return None
    line = wheel.claimed_cuda
    return Diagnosis(
        "cpu-only",
        f"{wheel.name} is a CPU-only build labelled CUDA {line}: none of its libraries holds CUDA code or needs "
        "libcudart, so llama.cpp would silently run on the CPU",
        f"do not install it; build the CUDA wheel: llamawheel build {line} --arch native "
        f"(or nox -s build-cuda-{line} -- --arch 86)",
    )


def runs_on(cc: int, sass: frozenset[int], ptx: frozenset[int]) -> bool:
    """Whether a GPU of compute capability ``cc`` can run this code: machine code of the same major and
    a minor no newer than the GPU's, or PTX of any older or equal architecture (compiled at load)."""
    return any(s // 10 == cc // 10 and s <= cc for s in sass) or any(p <= cc for p in ptx)


def arch_mismatch(wheel: WheelFacts, device: DeviceFacts | None) -> Diagnosis | None:
    """No machine code and no PTX this GPU can run."""
    if device is None or device.compute_capability is None or wheel.cuda_major is None:
        return None
    cc = device.compute_capability
    if not (wheel.sass or wheel.ptx) or runs_on(cc, wheel.sass, wheel.ptx):
        return None
    held = " and ".join(x for x in (_sm(wheel.sass), ", ".join(f"PTX compute_{p}" for p in sorted(wheel.ptx))) if x)
    only = " only" if len(wheel.sass) + len(wheel.ptx) == 1 else ""
    return Diagnosis(
        "architecture",
        f"this wheel has code for {held}{only}; this GPU ({device.name}) is sm_{cc}",
        f"rebuild with --arch {cc} or native: llamawheel build {wheel.cuda_major} --arch {cc}",
    )


def driver_too_old(wheel: WheelFacts, device: DeviceFacts | None) -> Diagnosis | None:
    """The driver is older than the wheel's CUDA line needs."""
    line = _line_of(wheel)
    if device is None or not device.driver or line not in DRIVER_MINIMUM or wheel.cuda_major is None:
        return None
    minimum = DRIVER_MINIMUM[line]
    if _version(device.driver) >= _version(minimum):
        return None
    older = [m for m, v in sorted(DRIVER_MINIMUM.items()) if _version(device.driver) >= _version(v)]
    alternative = (f", or use a CUDA {older[-1]} wheel (llamawheel build {older[-1]} --arch native)"
                   if older else "")
    return Diagnosis(
        "driver",
        f"the NVIDIA driver {device.driver} is older than CUDA {line} needs ({minimum} or newer)",
        f"upgrade the driver to {minimum} or newer{alternative}",
    )


def missing_library(wheel: WheelFacts, text: str) -> Diagnosis | None:
    """A library the loader could not find when llama_cpp was imported (``libcublas.so.13: cannot open ...``)."""
    m = _MISSING_LIB.search(text)
    if m is None:
        return None
    lib = m.group(1)
    soversion = re.search(r"\.so\.(\d+)", lib)
    line = _line_of(wheel) or (int(soversion.group(1)) if soversion and not lib.startswith("libcuda.so") else None)
    if lib.startswith("libcuda.so"):
        minimum = DRIVER_MINIMUM.get(line or 0, "")
        return Diagnosis(
            "driver-missing",
            f"{lib} was not found when llama_cpp loaded: it comes with the NVIDIA driver, and this machine has none",
            f"install the NVIDIA driver{f' ({minimum} or newer for CUDA {line})' if minimum else ''}, "
            "or verify this wheel on a machine with a GPU",
        )
    for prefix, package, what in (("libcublas", "nvidia-cublas", "cuBLAS"),
                                  ("libcudart", "nvidia-cuda-runtime", "the CUDA runtime")):
        if not lib.startswith(prefix):
            continue
        cause = f"{lib} was not found when llama_cpp loaded: {wheel.name} needs {what} of CUDA {line or '?'}"
        if wheel.runtime == "system":
            fix = (f"install CUDA {line}'s {what} on this machine (the toolkit, or the {prefix} package of your "
                   "distribution) where the loader finds it (ldconfig or LD_LIBRARY_PATH)")
        else:
            wanted = [r for r in wheel.requires if r.lower().startswith(package)]
            spec = wanted[0] if wanted else f"{package}{'-cu' + str(line) if line and line < 13 else ''}"
            why = ("the wheel requires it; an install with --no-deps or an index without NVIDIA's wheels leaves it out"
                   if wanted else "the wheel's Requires-Dist does not name it: a wheel built by llamawheel does")
            fix = f"pip install '{spec}' into the same environment ({why})"
        return Diagnosis(f"{prefix}-missing", cause, fix)
    return Diagnosis(
        "library-missing",
        f"{lib} was not found when llama_cpp loaded",
        f"install the package that provides {lib}, or rebuild the wheel on an older system",
    )


def from_run_text(wheel: WheelFacts, device: DeviceFacts | None, text: str) -> Diagnosis | None:
    """What a failed import or run says, in llama.cpp's, CUDA's or the loader's words."""
    found = missing_library(wheel, text)
    if found:
        return found
    if "no kernel image is available" in text:
        return arch_mismatch(wheel, device) or Diagnosis(
            "architecture",
            f"CUDA says this wheel has no code this GPU can run (it has {_sm(wheel.sass) or 'no machine code'})",
            "rebuild with --arch native on the GPU machine, or name its architecture: --arch 90",
        )
    if "driver version is insufficient" in text or "cudaErrorInsufficientDriver" in text:
        return driver_too_old(wheel, device) or Diagnosis(
            "driver",
            f"the NVIDIA driver is too old for CUDA {_line_of(wheel)} (CUDA: driver version is insufficient)",
            f"upgrade the driver to {DRIVER_MINIMUM.get(_line_of(wheel) or 0, 'a newer version')} or newer",
        )
    return None


def before_run(wheel: WheelFacts, device: DeviceFacts | None) -> Diagnosis | None:
    """What rules the wheel out on this GPU before anything is installed."""
    return cpu_only_labelled_cuda(wheel) or driver_too_old(wheel, device) or arch_mismatch(wheel, device)
