"""The variant label: what a build is, written into its wheel's local version (``0.3.36+cu130.sm86.sys``).

One value type, formatted here and parsed here only:

- ``cpu`` — a CPU-only build;
- ``cu130`` — CUDA 13.0 for the recipe's default architectures; ``cu1310`` is CUDA 13.10;
- ``.sm86`` / ``.ptx90`` — a narrower architecture set than the recipe's default: machine code for
  sm_86, PTX for compute_90 (both for one architecture: ``.sm90.ptx90``);
- ``.sys`` — the system runtime mode (cudart and cuBLAS from the system, not NVIDIA's PyPI wheels);
- ``.cm1a2b3c4d`` — built with extra CMake flags (``CMAKE_ARGS``): the first 8 hex digits of their
  sha256, so that two builds that differ never share a name (the manifest lists the flags).

The first label (``cu130``, ``cpu``) names the variant's index: one private index per CUDA minor.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from llamawheel.core.errors import UsageError
from llamawheel.recipe import archs

_CUDA_TAG = re.compile(r"cu(?P<major>\d\d)(?P<minor>\d+)")
_ARCH_LABEL = re.compile(r"(?P<kind>sm|ptx)(?P<sm>\d{2,3}[af]?)")
_FLAGS_LABEL = re.compile(r"cm[0-9a-f]{8}")
SYSTEM_RUNTIME = "sys"
CPU = "cpu"


def cuda_tag(version: str) -> str:
    """``13.0`` -> ``cu130``; ``13.10`` -> ``cu1310``."""
    major, minor = version.split(".")
    return f"cu{major}{minor}"


def cuda_version_of(tag: str) -> str | None:
    """The CUDA version a tag names, the inverse of `cuda_tag`: ``cu124`` -> ``12.4``, ``cu1310`` -> ``13.10``;
    None for anything else (``cpu``)."""
    match = _CUDA_TAG.fullmatch(tag.lower())
    return f"{int(match['major'])}.{int(match['minor'])}" if match else None


def flags_label(extra_cmake_args: list[str]) -> str:
    """The label of a build with extra CMake flags: ``cm`` and the first 8 hex digits of their sha256."""
    return "cm" + hashlib.sha256("\0".join(extra_cmake_args).encode()).hexdigest()[:8]


def index_name(local: str) -> str:
    """The index a local version belongs to: its first label, lower-cased (``cu130.sm90`` -> ``cu130``).
    Empty when the label does not start with a usable name."""
    first = re.split(r"[._-]", local)[0].lower()
    return first if re.fullmatch(r"[a-z0-9]+", first) else ""


@dataclass(frozen=True)
class Variant:
    """What a build is. ``cuda`` None: a CPU build. ``targets`` empty: the recipe's default architectures."""

    cuda: str | None = None
    targets: tuple[archs.ArchTarget, ...] = ()
    system_runtime: bool = False
    flags: str = ""
    """`flags_label` of the user's extra CMake flags; empty without any."""

    @classmethod
    def for_build(
        cls,
        cuda: str | None,
        targets: tuple[archs.ArchTarget, ...],
        default: tuple[archs.ArchTarget, ...],
        system_runtime: bool = False,
        flags: str = "",
    ) -> Variant:
        """The variant of a build for ``targets``: the architectures are left out when they are the recipe's
        ``default`` set (the label then says only ``cu130``)."""
        if cuda is None:
            return cls(flags=flags)
        return cls(cuda, () if targets == default else archs.merge(list(targets)), system_runtime, flags)

    @property
    def is_cpu(self) -> bool:
        return self.cuda is None

    @property
    def index(self) -> str:
        """The first label, which names the variant's index: ``cu130``, ``cpu``."""
        return CPU if self.cuda is None else cuda_tag(self.cuda)

    @property
    def cuda_major(self) -> int | None:
        return None if self.cuda is None else int(self.cuda.split(".")[0])

    @property
    def label(self) -> str:
        """``cu130.sm86.sys``, ``cu130``, ``cpu``, ``cpu.cm1a2b3c4d``."""
        parts = [CPU] if self.cuda is None else [cuda_tag(self.cuda), *(t.label() for t in self.targets)]
        if self.system_runtime:
            parts.append(SYSTEM_RUNTIME)
        if self.flags:
            parts.append(self.flags)
        return ".".join(parts)

    def __str__(self) -> str:
        return self.label

    @classmethod
    def parse(cls, label: str) -> Variant:
        """Read a local version label (``cu130.sm86.ptx86.sys``, ``cpu``); raises `UsageError` for anything
        llamawheel does not write."""
        parts = label.lower().split(".") if label else []
        if not parts:
            raise UsageError(
                "no local version label (+cu130, +cpu): nothing says what this build is",
                "pass --cuda and --arch to say what the wheel should hold",
            )
        flags = parts.pop() if len(parts) > 1 and _FLAGS_LABEL.fullmatch(parts[-1]) else ""
        if parts == [CPU]:
            return cls(flags=flags)
        cuda = cuda_version_of(parts[0])
        if cuda is None:
            raise UsageError(f"local version label '{parts[0]}' is neither cpu nor cuXY (cu130, cu124)")
        tokens: list[archs.ArchTarget] = []
        system = False
        for part in parts[1:]:
            match = _ARCH_LABEL.fullmatch(part)
            if part == SYSTEM_RUNTIME:
                system = True
            elif match:
                tokens.append(archs.ArchTarget(match["sm"], sass=match["kind"] == "sm", ptx=match["kind"] == "ptx"))
            else:
                raise UsageError(f"local version label '{label}': '{part}' is not smNN, ptxNN, sys or cmXXXXXXXX")
        return cls(cuda, archs.merge(tokens), system, flags)
