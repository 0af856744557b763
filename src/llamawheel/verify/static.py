"""Static verification: what a wheel really holds, read from its ELF files and fat
binaries, checked against what its version label claims (``+cu130.sm90``).

No GPU needed. A CPU-only wheel renamed ``+cu130`` fails here with a message that
says it is CPU-only: the most common way users end up on the CPU without knowing.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from llamawheel.core.errors import UsageError, VerifyError
from llamawheel.recipe import archs
from llamawheel.recipe.catalog import all_recipes, find_cuda
from llamawheel.recipe.model import CudaMinor, Recipe
from llamawheel.recipe.variant import Variant
from llamawheel.wheel import distmeta
from llamawheel.wheel.distmeta import WheelName
from llamawheel.wheel.elf import ElfInfo, is_elf, read_elf
from llamawheel.wheel.policy import CUDA_LIBRARIES, whitelist
from llamawheel.wheel.wheelfile import Entry, dist_info_dir, read_entries


@dataclass(frozen=True)
class Expectations:
    cuda_major: int | None  # None: a CPU wheel
    targets: tuple[archs.ArchTarget, ...] = ()
    runtime: str = "pypi"
    runtime_rpath: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()

    @classmethod
    def for_plan(
        cls, minor: CudaMinor | None, targets: tuple[archs.ArchTarget, ...], runtime: str, recipe: Recipe
    ) -> Expectations:
        if minor is None:
            return cls(None)
        return cls(
            minor.major, targets, runtime, recipe.runtime_rpath,
            minor.runtime_requires if runtime == "pypi" else (),
        )

    @classmethod
    def from_claim(
        cls, version: str, *, cuda: str | None = None, arch: str | None = None, runtime: str | None = None
    ) -> Expectations:
        """What to check: the version label's claim, with any of CUDA version, architectures
        and runtime mode given explicitly instead (a wheel without a label needs ``cuda``)."""
        if cuda:
            recipe, minor = find_cuda(cuda)
            mode = runtime or "pypi"
            base = cls(minor.major, recipe.default_targets(), mode, recipe.runtime_rpath,
                       minor.runtime_requires if mode == "pypi" else ())
        else:
            base = cls.from_version(version)
            if runtime and runtime != base.runtime:
                line = all_recipes().get(f"cuda-{base.cuda_major}")
                requires: tuple[str, ...] = ()
                if runtime == "pypi" and line and line.default_minor:
                    requires = line.minors[line.default_minor].runtime_requires
                base = replace(base, runtime=runtime, requires=requires)
        if arch:
            if base.cuda_major is None:
                raise UsageError("--arch makes no sense for a CPU wheel")
            known = all_recipes().get(f"cuda-{base.cuda_major}")
            default = known.default_archs if known else ()
            supported = known.supported_archs if known else ()
            base = replace(base, targets=archs.select(arch, default, supported, str(base.cuda_major), native=[]))
        return base

    @classmethod
    def from_version(cls, version: str, recipes: dict[str, Recipe] | None = None) -> Expectations:
        """Read the claim from a local version such as ``0.3.36+cu130.sm86.ptx86.sys``."""
        _, _, local = version.partition("+")
        if not local:
            raise UsageError(
                f"version {version} has no local version label (+cu130, +cpu): nothing to check it against",
                "pass --cuda and --arch to say what the wheel should hold",
            )
        try:
            variant = Variant.parse(local)
        except UsageError as exc:
            raise UsageError(f"version {version}: {exc.message}", exc.tip) from None
        if variant.cuda is None:
            return cls(None)
        major = variant.cuda_major
        recipes = recipes if recipes is not None else all_recipes()
        recipe = recipes.get(f"cuda-{major}")
        cuda_minor = recipe.minors.get(variant.cuda) if recipe else None
        targets = variant.targets or (recipe.default_targets() if recipe else ())
        runtime = "system" if variant.system_runtime else "pypi"
        return cls(
            major, targets, runtime,
            recipe.runtime_rpath if recipe else (),
            cuda_minor.runtime_requires if (cuda_minor and runtime == "pypi") else (),
        )


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    wheel: str
    version: str
    size: int
    claim: str
    checks: list[Check] = field(default_factory=list)
    libraries: dict[str, dict[str, object]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, ok, detail))

    def render(self) -> str:
        width = max(len(c.name) for c in self.checks) if self.checks else 10
        lines = [f"verify-static {self.wheel}", f"  claims: {self.claim}"]
        for c in self.checks:
            lines.append(f"  {'PASS' if c.ok else 'FAIL'}  {c.name.ljust(width)}  {c.detail}")
        lines.append(f"  result: {'PASS' if self.ok else 'FAIL'}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"ok": self.ok}, indent=2)

    def manifest_fields(self) -> dict[str, Any]:
        return {"verify_static": {
            "ok": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }}

    def raise_if_failed(self) -> None:
        failed = [c for c in self.checks if not c.ok]
        if failed:
            first = failed[0]
            raise VerifyError(
                f"{self.wheel} failed static verification: {first.name}: {first.detail}"
                + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""),
                "do not install this wheel; rebuild it with llamawheel (nox -s build-cuda-<version> -- --arch ...)",
            )


def _describe(expect: Expectations) -> str:
    if expect.cuda_major is None:
        return "a CPU-only build"
    where = "NVIDIA's PyPI runtime wheels" if expect.runtime == "pypi" else "the system's CUDA libraries"
    return f"CUDA {expect.cuda_major}, code for {', '.join(str(t) for t in expect.targets)}, runtime from {where}"


def verify_claim(
    path: Path, *, cuda: str | None = None, arch: str | None = None, runtime: str | None = None
) -> tuple[Expectations, Report]:
    """Check the wheel at ``path`` against what its version label claims (or the CUDA version, architectures and
    runtime mode given instead): what ``verify-static`` and the first step of ``verify`` do."""
    if not path.is_file():
        raise UsageError(f"{path}: no such wheel file")
    expect = Expectations.from_claim(WheelName.parse(path.name).version, cuda=cuda, arch=arch, runtime=runtime)
    return expect, verify_wheel(path, expect)


def verify_wheel(path: Path, expect: Expectations | None = None) -> Report:
    """Check what the wheel at ``path`` holds against ``expect`` (by default, its version label's claim)."""
    entries = read_entries(path)
    name = WheelName.parse(path.name)
    meta = distmeta.from_files(path.name, {e.name: e.data for e in entries})
    version = meta.metadata_version
    expect = expect or Expectations.from_version(version)
    report = Report(path.name, version, path.stat().st_size, _describe(expect))
    _check_layout(report, entries, name)
    elves = _check_copies(report, entries)
    _check_containment(report, elves)
    cuda_libs = _check_cuda_backend(report, elves, expect)
    if cuda_libs is None:
        return report
    _check_cuda_links(report, cuda_libs, expect)
    _check_archs(report, cuda_libs, expect)
    _check_runtime(report, cuda_libs, expect, meta)
    return report


def _check_layout(report: Report, entries: list[Entry], name: WheelName) -> None:
    """The version in METADATA matches the file name; nothing lies outside the package and its metadata."""
    info_dir = dist_info_dir(entries)
    version = report.version
    report.add("version", version == name.version,
               f"METADATA says {version}" + ("" if version == name.version else f", the file name says {name.version}"))

    tops = sorted({e.name.split("/")[0] for e in entries} - {info_dir})
    packages = {e.name.split("/")[0] for e in entries if e.name.count("/") == 1 and e.name.endswith("/__init__.py")}
    strays = [t for t in tops if t not in packages]
    report.add("layout", not strays,
               "only the package and its metadata" if not strays else
               f"files outside the package would land in site-packages: {', '.join(s + '/' for s in strays)}")


def _check_copies(report: Report, entries: list[Entry]) -> dict[str, ElfInfo]:
    """Read every shared library into ``report.libraries``, and check that each is there only once."""
    elves: dict[str, ElfInfo] = {}
    digests: dict[bytes, list[str]] = {}
    for e in entries:
        if is_elf(e.data):
            elves[e.name] = read_elf(e.data)
            digests.setdefault(hashlib.sha256(e.data).digest(), []).append(e.name)
            report.libraries[e.name] = {
                "size": len(e.data),
                "needed": elves[e.name].needed,
                "runpath": elves[e.name].runpath,
                "sass": sorted(elves[e.name].sass_archs),
                "ptx": sorted(elves[e.name].ptx_archs),
            }
    copies = [names for names in digests.values() if len(names) > 1]
    report.add("one copy per library", not copies,
               f"{len(elves)} shared librar{'y' if len(elves) == 1 else 'ies'}" if not copies else
               "duplicate copies: " + "; ".join(", ".join(posixpath.basename(n) for n in c) for c in copies))
    return elves


def _check_containment(report: Report, elves: dict[str, ElfInfo]) -> None:
    """Internal links resolve, nothing outside the wheel is needed but what every system has, no absolute RUNPATH."""
    present = {posixpath.basename(n) for n in elves}
    unresolved = sorted({
        f"{posixpath.basename(n)} needs {d}" for n, i in elves.items() for d in i.needed
        if d.startswith(("libggml", "libllama", "libmtmd", "libgomp-")) and d not in present
    })
    report.add("internal links", not unresolved,
               "every library this wheel ships is found under the name asked for" if not unresolved
               else "; ".join(unresolved))

    allowed = whitelist()
    outside = sorted({
        f"{posixpath.basename(n)} needs {d}" for n, i in elves.items() for d in i.needed
        if d not in present and d not in allowed and not CUDA_LIBRARIES.match(d)
    })
    report.add("self-contained", not outside,
               "needs only libraries every manylinux system has, and CUDA's" if not outside
               else "; ".join(outside) + " (not in the wheel, and not on every system)")

    absolute = sorted(
        {f"{posixpath.basename(n)}: {p}" for n, i in elves.items() for p in i.runpath if p.startswith("/")}
    )
    report.add("relocatable", not absolute,
               "no absolute RUNPATH (no build-machine paths)" if not absolute else "; ".join(absolute))


def _check_cuda_backend(report: Report, elves: dict[str, ElfInfo], expect: Expectations) -> dict[str, ElfInfo] | None:
    """CUDA code is there exactly when claimed; returns the CUDA libraries to check further, None to stop."""
    cuda_libs = {n: i for n, i in elves.items() if i.fatbin or any(d.startswith("libcudart.so") for d in i.needed)}
    if expect.cuda_major is None:
        report.add("CPU build", not cuda_libs,
                   "no CUDA code, as claimed" if not cuda_libs else
                   f"claims CPU but holds CUDA code: {', '.join(cuda_libs)}")
        return None

    if not cuda_libs:
        report.add(
            "CUDA backend", False,
            f"this wheel is CPU-only: none of its {len(elves)} libraries holds CUDA device code or needs "
            f"libcudart, although its version claims CUDA {expect.cuda_major}",
        )
        return None
    report.add("CUDA backend", True, ", ".join(posixpath.basename(n) for n in cuda_libs))
    return cuda_libs


def _check_cuda_links(report: Report, cuda_libs: dict[str, ElfInfo], expect: Expectations) -> None:
    """The CUDA libraries link the claimed major version of cudart and cuBLAS."""
    needed = {d for i in cuda_libs.values() for d in i.needed}
    for lib in ("libcudart", "libcublas"):
        want = f"{lib}.so.{expect.cuda_major}"  # CUDA 11's runtime is libcudart.so.11.0
        found = sorted(d for d in needed if d.startswith(lib + ".so"))
        ok = [d for d in found if d == want or d.startswith(want + ".")]
        report.add(f"links {lib}", bool(ok),
                   f"needs {ok[0]}" if ok else f"needs {', '.join(found) or 'no ' + lib}, expected {want}")


def _check_archs(report: Report, cuda_libs: dict[str, ElfInfo], expect: Expectations) -> None:
    """The fat binaries hold machine code (SASS) and PTX for every claimed architecture."""
    sass = set().union(*(i.sass_archs for i in cuda_libs.values()))
    ptx = set().union(*(i.ptx_archs for i in cuda_libs.values()))
    for t in expect.targets:
        if t.sass:
            report.add(f"machine code sm_{t.sm}", t.number in sass,
                       "present" if t.number in sass else
                       f"missing: the fat binary holds SASS for {_archs(sass)} only")
        if t.ptx:
            report.add(f"PTX compute_{t.sm}", t.number in ptx,
                       "present" if t.number in ptx else f"missing: PTX only for {_archs(ptx)}")


def _check_runtime(
    report: Report, cuda_libs: dict[str, ElfInfo], expect: Expectations, meta: distmeta.WheelMetadata
) -> None:
    """RUNPATH and Requires-Dist match the claimed runtime mode (NVIDIA's PyPI wheels or the system's)."""
    runpaths = {p for i in cuda_libs.values() for p in i.runpath}
    wants_pypi_path = any(rel in p for p in runpaths for rel in expect.runtime_rpath) if expect.runtime_rpath else False
    requires = meta.requires_dist
    nvidia_requires = [r for r in requires if r.lower().startswith("nvidia-")]
    if expect.runtime == "pypi":
        missing = [r for r in expect.requires if r not in requires]
        if not wants_pypi_path:
            detail = f"RUNPATH {sorted(runpaths)} does not reach {', '.join(expect.runtime_rpath)}"
        elif missing:
            detail = f"Requires-Dist lacks {', '.join(missing)}"
        else:
            detail = f"RUNPATH reaches {', '.join(expect.runtime_rpath)}; requires {', '.join(nvidia_requires)}"
        report.add("runtime from PyPI wheels", wants_pypi_path and not missing, detail)
    else:
        report.add("runtime from the system", not nvidia_requires and not wants_pypi_path,
                   "no NVIDIA wheels required; cudart and cuBLAS come from the system's loader path"
                   if not nvidia_requires and not wants_pypi_path else
                   f"claims system CUDA libraries but requires {', '.join(nvidia_requires) or 'a PyPI RUNPATH'}")


def _archs(values: set[int]) -> str:
    return ", ".join(f"sm_{v}" for v in sorted(values)) or "nothing"
