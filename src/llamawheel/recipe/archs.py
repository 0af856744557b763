"""GPU architecture selection.

Tokens a user (or a recipe) writes, separated by commas:

- ``86`` or ``86-real``: machine code (SASS) for sm_86 only;
- ``86-virtual``: PTX for compute_86 only (JIT-compiled by the driver at first load);
- ``86+ptx``: both;
- a preset name (`PRESETS`), ``default`` (the recipe's list), or ``native`` (the GPUs
  ``nvidia-smi`` sees on this machine).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass

from llamawheel.core import proc
from llamawheel.core.errors import UsageError, did_you_mean

_TOKEN = re.compile(r"^(?P<sm>\d{2,3}[af]?)(?P<suffix>-real|-virtual|\+ptx)?$")

PRESETS: dict[str, tuple[str, ...]] = {
    "turing": ("75",),
    "ampere": ("80", "86"),
    "ada": ("89",),
    "hopper": ("90",),
    "blackwell": ("100", "120"),
    "consumer": ("75", "86", "89", "120"),
    "datacenter": ("80", "90", "100"),
    # Arm systems (``--platform aarch64``): Grace Hopper GH200, Grace Blackwell GB200/GB300, DGX Spark (GB10),
    # Jetson AGX Thor (SBSA from CUDA 13 on), Jetson Orin (JetPack 6: CUDA 12, ``--runtime system``)
    "grace-hopper": ("90",),
    "grace-blackwell": ("100", "103"),
    "dgx-spark": ("121",),
    "thor": ("110",),
    "orin": ("87",),
}


@dataclass(frozen=True, order=True)
class ArchTarget:
    """Code for one architecture: machine code (``sass``), PTX (``ptx``) or both."""

    sm: str
    sass: bool = True
    ptx: bool = False

    @property
    def number(self) -> int:
        return int(self.sm.rstrip("af"))

    def cmake(self) -> str:
        if self.sass and self.ptx:
            return self.sm
        return f"{self.sm}-real" if self.sass else f"{self.sm}-virtual"

    def label(self) -> str:
        parts = ([f"sm{self.sm}"] if self.sass else []) + ([f"ptx{self.sm}"] if self.ptx else [])
        return ".".join(parts)

    def __str__(self) -> str:
        return {(True, False): f"sm_{self.sm}", (False, True): f"compute_{self.sm} (PTX)"}.get(
            (self.sass, self.ptx), f"sm_{self.sm} + PTX"
        )


def parse_token(token: str) -> ArchTarget:
    match = _TOKEN.match(token.strip().lower().removeprefix("sm_").removeprefix("sm"))
    if not match:
        raise UsageError(
            f"'{token}' is not a GPU architecture",
            "write a compute capability without the dot (86 for an RTX 3060, 90 for an H100), "
            f"optionally with -real, -virtual or +ptx, or a preset: {', '.join(PRESETS)}, native, default",
        )
    suffix = match.group("suffix")
    return ArchTarget(match.group("sm"), sass=suffix != "-virtual", ptx=suffix in ("-virtual", "+ptx"))


def merge(targets: list[ArchTarget]) -> tuple[ArchTarget, ...]:
    """One target per architecture, sorted, with SASS/PTX requests combined."""
    merged: dict[str, ArchTarget] = {}
    for t in targets:
        old = merged.get(t.sm)
        merged[t.sm] = ArchTarget(t.sm, t.sass or bool(old and old.sass), t.ptx or bool(old and old.ptx))
    return tuple(sorted(merged.values(), key=lambda t: (t.number, t.sm)))


def detect_native() -> list[str]:
    """Compute capabilities of the GPUs this machine sees (``[]`` without a GPU)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    done = proc.probe([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], timeout=20)
    if done is None or not done.ok:  # a driver that does not answer: no GPU to build for
        return []
    return sorted({line.strip().replace(".", "") for line in done.stdout.splitlines() if line.strip()})


def select(
    spec: str | None,
    default: tuple[str, ...],
    supported: tuple[str, ...],
    line: str,
    native: list[str] | None = None,
) -> tuple[ArchTarget, ...]:
    """Turn ``--arch`` into targets; ``None`` means native when a GPU is visible, else the default."""
    gpus = detect_native() if native is None else native
    if spec is None:
        spec = "native" if gpus else "default"
    tokens: list[str] = []
    for raw in (t.strip().lower() for t in spec.split(",")):
        if not raw:
            continue
        if raw == "default":
            tokens.extend(default)
        elif raw == "native":
            if not gpus:
                raise UsageError(
                    "--arch native: no NVIDIA GPU is visible on this machine (nvidia-smi found none)",
                    "name the architectures instead, e.g. --arch 86 for an RTX 30xx, 89 for RTX 40xx, 90 for H100",
                )
            tokens.extend(gpus)
        elif raw in PRESETS:
            tokens.extend(PRESETS[raw])
        elif not raw[0].isdigit() and not raw.startswith("sm"):
            known = [*PRESETS, "native", "default"]
            raise UsageError(
                f"unknown architecture preset '{raw}'{did_you_mean(raw, known)}",
                f"presets: {', '.join(known)}; or compute capabilities such as 86,89",
            )
        else:
            tokens.append(raw)
    if not tokens:
        raise UsageError("--arch is empty", "give at least one architecture, e.g. --arch 86")
    targets = merge([parse_token(t) for t in tokens])
    if supported:
        for t in targets:
            if t.sm.rstrip("af") not in supported and t.sm not in supported:
                raise UsageError(
                    f"CUDA {line} cannot compile for {t}",
                    f"architectures CUDA {line} supports: {', '.join(supported)}",
                )
    return targets


def cmake_value(targets: tuple[ArchTarget, ...]) -> str:
    return ";".join(t.cmake() for t in targets)
