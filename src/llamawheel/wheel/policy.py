"""manylinux policies, read from auditwheel's own policy data: which platform tag a set of
libraries really earns (glibc, libstdc++ and libgcc symbol versions), and which system
libraries a wheel may rely on without carrying them."""

from __future__ import annotations

import importlib.resources
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from llamawheel.core import proc
from llamawheel.recipe.platforms import X86_64, Platform
from llamawheel.wheel.elf import ElfInfo

# Provided by NVIDIA's runtime wheels (Requires-Dist) or the driver, never carried in the wheel.
CUDA_LIBRARIES = re.compile(r"^lib(cudart|cublas|cublasLt|cuda|nvidia-ml)\.so")


@dataclass(frozen=True)
class Policy:
    name: str
    priority: int
    allowed: dict[str, frozenset[str]]
    """Per family auditwheel checks (GLIBC, GLIBCXX, CXXABI, GCC, LIBATOMIC, ZLIB), the versions allowed."""
    whitelist: frozenset[str]
    aliases: tuple[str, ...] = ()
    """The legacy names of the same policy (``manylinux2014`` for ``manylinux_2_17``)."""

    @property
    def glibc(self) -> tuple[int, int]:
        """``manylinux_2_31`` -> (2, 31)."""
        major, minor = self.name.split("_")[1:3]
        return int(major), int(minor)

    def violations(self, infos: dict[str, ElfInfo]) -> list[str]:
        """What keeps libraries ``{name: info}`` from this policy: ``libllama.so needs GLIBC_2.29``."""
        out = []
        for name, info in infos.items():
            for family, versions in info.required.items():
                allowed = self.allowed.get(family)
                if allowed is None:
                    continue  # a family auditwheel does not check (a library's own version names)
                out += [f"{name} needs {family}_{v}" for v in sorted(versions - allowed, key=_order)]
        return out


def _order(version: str) -> tuple[int, ...]:
    return tuple(int(x) if x.isdigit() else -1 for x in re.split(r"[._]", version))


@cache
def policies(machine: str = "x86_64") -> tuple[Policy, ...]:
    """manylinux policies, oldest (highest priority) first."""
    data = json.loads((importlib.resources.files("auditwheel.policy") / "manylinux-policy.json").read_text())
    out = []
    for entry in data:
        versions = entry.get("symbol_versions", {}).get(machine, {})
        if entry["name"].startswith("manylinux_") and versions:
            allowed = {family: frozenset(v) for family, v in versions.items()}
            out.append(Policy(entry["name"], entry["priority"], allowed, frozenset(entry["lib_whitelist"]),
                              tuple(entry.get("aliases", ()))))
    return tuple(sorted(out, key=lambda p: -p.priority))


def earned_policy(infos: dict[str, ElfInfo] | list[ElfInfo], machine: str = "x86_64") -> Policy | None:
    """The oldest manylinux policy (2_17 at the least) every versioned symbol the libraries need is allowed
    by, as auditwheel judges it: each version of each family it checks must be in the policy's list.
    None: not even the newest policy allows them (a ``linux_`` wheel)."""
    named = infos if isinstance(infos, dict) else {str(i): info for i, info in enumerate(infos)}
    for policy in policies(machine):
        if policy.glibc >= (2, 17) and not policy.violations(named):
            return policy
    return None


def policy_for(glibc: tuple[int, int], machine: str = "x86_64") -> Policy | None:
    """The manylinux policy of exactly this glibc (``manylinux_2_28``), None if auditwheel has none."""
    return next((p for p in policies(machine) if p.glibc == glibc), None)


@dataclass(frozen=True)
class Excess:
    """One symbol a library takes in a version a policy does not allow."""

    library: str
    symbol: str
    version: str
    """``GLIBC_2.29``."""

    def __str__(self) -> str:
        return f"{self.library} uses {self.symbol}@{self.version}"


def excess(policy: Policy, infos: dict[str, ElfInfo]) -> list[Excess]:
    """Every symbol that keeps the libraries ``{name: info}`` from ``policy``, in a family auditwheel checks."""
    out = []
    for name, info in infos.items():
        for version, symbols in sorted(info.uses.items()):
            family, _, number = version.partition("_")
            allowed = policy.allowed.get(family)
            if allowed is not None and number not in allowed and re.fullmatch(r"[\d.]+", number):
                out += [Excess(name, s, version) for s in sorted(symbols)]
    return out


def beyond(policy: Policy, infos: dict[str, ElfInfo]) -> list[str]:
    """What keeps the libraries from ``policy``, symbol by symbol (`excess`: ``libmtmd.so uses
    posix_spawn_file_actions_addchdir_np@GLIBC_2.29``), else version by version (`Policy.violations`)."""
    return [str(e) for e in excess(policy, infos)] or policy.violations(infos)


def platform_tag(infos: dict[str, ElfInfo] | list[ElfInfo], machine: str = "x86_64") -> str:
    """The tag of `earned_policy`: ``manylinux_2_31_x86_64``, or ``linux_x86_64``."""
    policy = earned_policy(infos, machine)
    return f"{policy.name}_{machine}" if policy else f"linux_{machine}"


@dataclass(frozen=True)
class Distribution:
    name: str
    glibc: tuple[int, ...]
    glibcxx: tuple[int, ...]
    """The newest GLIBCXX_ version its libstdc++6 provides (its GCC's)."""
    cxxabi: tuple[int, ...]


# What each distribution's own glibc and libstdc++6 provide (its release's GCC: 4.8 -> 3.4.19, 7 -> 3.4.24,
# 8 -> 3.4.25, 10 -> 3.4.28, 11 -> 3.4.29, 12 -> 3.4.30, 14 -> 3.4.33).
RHEL8 = "RHEL 8 (Rocky, Alma, Oracle)"
DISTRIBUTIONS = (
    Distribution("CentOS 7", (2, 17), (3, 4, 19), (1, 3, 7)),
    Distribution(RHEL8, (2, 28), (3, 4, 25), (1, 3, 11)),
    Distribution("Anolis 8", (2, 28), (3, 4, 25), (1, 3, 11)),
    Distribution("openEuler 20.03", (2, 28), (3, 4, 24), (1, 3, 11)),  # GCC 7.3
    Distribution("Kylin V10", (2, 28), (3, 4, 24), (1, 3, 11)),  # GCC 7.3
    Distribution("UOS 20", (2, 28), (3, 4, 24), (1, 3, 11)),  # its server edition: openEuler's GCC 7.3
    Distribution("Debian 11", (2, 31), (3, 4, 28), (1, 3, 12)),
    Distribution("Ubuntu 20.04", (2, 31), (3, 4, 28), (1, 3, 12)),
    Distribution("RHEL 9", (2, 34), (3, 4, 29), (1, 3, 13)),
    Distribution("Ubuntu 22.04", (2, 35), (3, 4, 30), (1, 3, 13)),
    Distribution("Debian 12", (2, 36), (3, 4, 30), (1, 3, 13)),
    Distribution("Ubuntu 24.04", (2, 39), (3, 4, 33), (1, 3, 15)),
    Distribution("RHEL 10", (2, 39), (3, 4, 33), (1, 3, 15)),
    Distribution("Debian 13", (2, 41), (3, 4, 33), (1, 3, 15)),
)


def needs_of(infos: list[ElfInfo]) -> dict[str, tuple[int, ...]]:
    """The newest numbered version of each family any library needs."""
    needs: dict[str, tuple[int, ...]] = {}
    for info in infos:
        for family, version in info.symbol_versions.items():
            needs[family] = max(needs.get(family, ()), version)
    return needs


LEGACY_TAGS = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


def manylinux_glibc(tag: str) -> tuple[int, int] | None:
    """The glibc one manylinux tag asks for: ``manylinux_2_31_x86_64`` -> (2, 31), ``manylinux2014_x86_64`` ->
    (2, 17); None for any other tag."""
    if match := re.fullmatch(r"manylinux_(\d+)_(\d+)_\w+", tag):
        return int(match[1]), int(match[2])
    return LEGACY_TAGS.get(tag.split("_")[0]) if re.fullmatch(r"manylinux(1|2010|2014)_\w+", tag) else None


def tag_glibc(platform: str) -> tuple[int, int] | None:
    """The glibc a wheel's platform tag asks for, the oldest of its tags (``manylinux_2_31_x86_64``,
    ``manylinux2014_x86_64``); (0, 0) for ``linux_*``, which pip takes anywhere; None for anything else."""
    found = [glibc for tag in platform.split(".") if (glibc := manylinux_glibc(tag))]
    found += [(0, 0) for tag in platform.split(".") if tag.startswith("linux_")]
    return min(found) if found else None


def admitted(needs: dict[str, tuple[int, ...]], tag: str) -> tuple[list[str], list[str]]:
    """Which common distributions can install a wheel with this tag and load libraries with these needs,
    and which cannot: pip takes a manylinux_2_X wheel where glibc >= 2.X, and the loader needs the
    GLIBCXX/CXXABI versions from the system's libstdc++."""
    tag_glibc_version = tag_glibc(tag) or (99, 0)
    yes: list[str] = []
    no: list[str] = []
    for d in DISTRIBUTIONS:
        ok = (d.glibc >= tag_glibc_version and needs.get("GLIBC", ()) <= d.glibc
              and needs.get("GLIBCXX", ()) <= d.glibcxx and needs.get("CXXABI", ()) <= d.cxxabi)
        (yes if ok else no).append(d.name)
    return yes, no


# The dynamic loader is the system's own by definition (auditwheel leaves it out of its lists too).
LOADERS = frozenset({"ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1", "ld64.so.2", "ld-linux.so.2"})


def whitelist(machine: str = "x86_64") -> frozenset[str]:
    """Libraries a wheel may take from any manylinux system."""
    return policies(machine)[0].whitelist | LOADERS


def system_library(name: str, sysroot: Path | None = None, target: Platform = X86_64) -> Path | None:
    """Where the dynamic loader would find ``name`` on this machine, or in the root ``sysroot`` (a build
    root: a wheel built there carries that root's libgomp, not this machine's newer one; for another platform, the
    cross folder's: ``usr/aarch64-linux-gnu/lib``)."""
    if sysroot is not None:
        for folder in target.libdirs():
            found = sysroot / folder / name
            if found.exists():
                return found.resolve()
        return None
    done = proc.probe(["ldconfig", "-p"], timeout=30)
    if done is None:
        return None
    for line in done.stdout.splitlines():
        parts = line.strip().split(" => ")
        if len(parts) == 2 and parts[0].split(" ")[0] == name and "x86-64" in parts[0]:
            return Path(parts[1])
    return None


ALL_VARIANTS_FLAG = "-DGGML_CPU_ALL_VARIANTS=ON"
"""The CMake flag that builds ggml's CPU code once per level of the platform (`Platform.cpu_variants`)."""
