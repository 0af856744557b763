"""manylinux policies, read from auditwheel's own policy data: which platform tag a set of
libraries really earns (glibc, libstdc++ and libgcc symbol versions), and which system
libraries a wheel may rely on without carrying them."""

from __future__ import annotations

import importlib.resources
import json
import re
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from llamawheel.wheel.elf import ElfInfo

FAMILIES = ("GLIBC", "GLIBCXX", "CXXABI")
# Provided by NVIDIA's runtime wheels (Requires-Dist) or the driver, never carried in the wheel.
CUDA_LIBRARIES = re.compile(r"^lib(cudart|cublas|cublasLt|cuda|nvidia-ml)\.so")


@dataclass(frozen=True)
class Policy:
    name: str
    priority: int
    newest: dict[str, tuple[int, ...]]
    whitelist: frozenset[str]


def _version(text: str) -> tuple[int, ...] | None:
    return tuple(int(x) for x in text.split(".")) if re.fullmatch(r"\d+(\.\d+)*", text) else None


@cache
def policies(machine: str = "x86_64") -> tuple[Policy, ...]:
    """manylinux policies, oldest (highest priority) first."""
    data = json.loads((importlib.resources.files("auditwheel.policy") / "manylinux-policy.json").read_text())
    out = []
    for entry in data:
        versions = entry.get("symbol_versions", {}).get(machine, {})
        newest = {}
        for family in FAMILIES:
            parsed = [v for v in (_version(x) for x in versions.get(family, [])) if v]
            if parsed:
                newest[family] = max(parsed)
        if entry["name"].startswith("manylinux_") and newest:
            out.append(Policy(entry["name"], entry["priority"], newest, frozenset(entry["lib_whitelist"])))
    return tuple(sorted(out, key=lambda p: -p.priority))


def platform_tag(infos: list[ElfInfo], machine: str = "x86_64") -> str:
    """The oldest manylinux tag whose symbol versions cover every library's needs (at least 2_17)."""
    needs: dict[str, tuple[int, ...]] = {}
    for info in infos:
        for family, version in info.symbol_versions.items():
            needs[family] = max(needs.get(family, ()), version)
    for policy in policies(machine):
        if int(policy.name.split("_")[2]) < 17:
            continue
        if all(family not in needs or needs[family] <= policy.newest.get(family, ()) for family in FAMILIES):
            return f"{policy.name}_{machine}"
    return f"linux_{machine}"


# The dynamic loader is the system's own by definition (auditwheel leaves it out of its lists too).
LOADERS = frozenset({"ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1", "ld64.so.2", "ld-linux.so.2"})


def whitelist(machine: str = "x86_64") -> frozenset[str]:
    """Libraries a wheel may take from any manylinux system."""
    return policies(machine)[0].whitelist | LOADERS


def system_library(name: str) -> Path | None:
    """Where the dynamic loader would find ``name`` on this machine."""
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return None
    for line in out.splitlines():
        parts = line.strip().split(" => ")
        if len(parts) == 2 and parts[0].split(" ")[0] == name and "x86-64" in parts[0]:
            return Path(parts[1])
    return None


# The CPU variants ggml builds for x86-64 with GGML_CPU_ALL_VARIANTS=ON (ggml/src/CMakeLists.txt), oldest
# first: each is a module libggml-cpu-<name>.so that ggml scores against the CPU and loads.
X86_CPU_VARIANTS = (
    "x64", "sse42", "sandybridge", "ivybridge", "piledriver", "haswell", "skylakex", "cannonlake",
    "cascadelake", "icelake", "cooperlake", "zen4", "alderlake", "sapphirerapids",
)
ALL_VARIANTS_FLAG = "-DGGML_CPU_ALL_VARIANTS=ON"
