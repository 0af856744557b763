"""Static verification: what a wheel really holds, read from its ELF files and fat
binaries, checked against what its version label claims (``+cu130.sm90``).

No GPU needed. A CPU-only wheel renamed ``+cu130`` fails here with a message that
says it is CPU-only: the most common way users end up on the CPU without knowing.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from llamawheel.building import glibc
from llamawheel.core import proc
from llamawheel.core.errors import UsageError, VerifyError
from llamawheel.recipe import archs, platforms
from llamawheel.recipe.catalog import all_recipes, find_cuda
from llamawheel.recipe.model import CudaMinor, Recipe
from llamawheel.recipe.platforms import X86_64, Platform
from llamawheel.recipe.variant import Variant
from llamawheel.toolchain.buildroot import HOST, SUITES
from llamawheel.verify.portable.verify_runner import Check, Status, render_checks
from llamawheel.wheel import distmeta
from llamawheel.wheel.distmeta import WheelName
from llamawheel.wheel.elf import ElfInfo, is_elf, read_elf
from llamawheel.wheel.policy import (
    ALL_VARIANTS_FLAG,
    CUDA_LIBRARIES,
    admitted,
    beyond,
    earned_policy,
    needs_of,
    policies,
    policy_for,
    tag_glibc,
    whitelist,
)
from llamawheel.wheel.wheelfile import Entry, dist_info_dir, read_entries

CPU_MODULE = "libggml-cpu-"
LLAMA_DISTRIBUTION = "llama_cpp_python"
LOADER = "llama_cpp/_backends.py"


@dataclass(frozen=True)
class Expectations:
    cuda_major: int | None  # None: a CPU wheel
    targets: tuple[archs.ArchTarget, ...] = ()
    runtime: str = "pypi"
    runtime_rpath: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    cpu_variants: tuple[str, ...] = ()
    """The CPU variant modules the wheel must hold (built with GGML_CPU_ALL_VARIANTS); none: not checked."""
    glibc: tuple[int, int] | None = None
    """The oldest glibc the wheel is built to run on (the build's ``--glibc`` or recipe's ``build.glibc``, which
    its manifest records); None: not checked (the platform tag still is)."""
    target: Platform = X86_64
    """The machine the wheel is for: every library's ELF machine, the CPU variants, the tag's policies."""

    @classmethod
    def for_plan(
        cls, minor: CudaMinor | None, targets: tuple[archs.ArchTarget, ...], runtime: str, recipe: Recipe,
        extra_cmake_args: tuple[str, ...] = (), build_env: str | None = None, glibc: tuple[int, int] | None = None,
        target: Platform = X86_64,
    ) -> Expectations:
        variants = cpu_variants_of([*recipe.cmake_args, *extra_cmake_args], build_env or recipe.build.env, target)
        if minor is None:
            return cls(None, cpu_variants=variants, glibc=glibc, target=target)
        return cls(
            minor.major, targets, runtime, recipe.runtime_rpath,
            minor.runtime_requires if runtime == "pypi" else (), variants, glibc, target,
        )

    @classmethod
    def from_claim(
        cls, version: str, *, cuda: str | None = None, arch: str | None = None, runtime: str | None = None,
        target: Platform = X86_64,
    ) -> Expectations:
        """What to check: the version label's claim, with any of CUDA version, architectures
        and runtime mode given explicitly instead (a wheel without a label needs ``cuda``)."""
        if cuda:
            recipe, minor = find_cuda(cuda)
            mode = runtime or "pypi"
            base = cls(minor.major, recipe.default_targets(), mode, recipe.runtime_rpath,
                       minor.runtime_requires if mode == "pypi" else (),
                       cpu_variants_of(recipe.cmake_args, recipe.build.env, target), target=target)
        else:
            base = cls.from_version(version, target=target)
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
    def from_version(cls, version: str, recipes: dict[str, Recipe] | None = None,
                     target: Platform = X86_64) -> Expectations:
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
        recipes = recipes if recipes is not None else all_recipes()
        made_by = recipes.get("cpu" if variant.cuda is None else f"cuda-{variant.cuda_major}")
        # other CMake flags (a ``cm`` label) may have changed the variants: then only what is there is checked
        variants = cpu_variants_of(made_by.cmake_args, made_by.build.env, target) \
            if made_by and not variant.flags else ()
        if variant.cuda is None:
            return cls(None, cpu_variants=variants, target=target)
        major = variant.cuda_major
        recipe = recipes.get(f"cuda-{major}")
        cuda_minor = recipe.minors.get(variant.cuda) if recipe else None
        targets = variant.targets or (recipe.default_targets() if recipe else ())
        runtime = "system" if variant.system_runtime else "pypi"
        return cls(
            major, targets, runtime,
            recipe.runtime_rpath if recipe else (),
            cuda_minor.runtime_requires if (cuda_minor and runtime == "pypi") else (),
            variants, target=target,
        )


def built_for_glibc(wheel: Path) -> tuple[int, int] | None:
    """The glibc a wheel was built for, as its build's manifest (beside it) records; None: no manifest says."""
    try:
        target = json.loads(wheel.with_name(wheel.name + ".json").read_text())["glibc"]["target"]
        return glibc.parse_version(str(target))
    except (OSError, ValueError, KeyError, TypeError, UsageError):
        return None


def cpu_variants_of(cmake_args: list[str] | tuple[str, ...], build_env: str = HOST,
                    target: Platform = X86_64) -> tuple[str, ...]:
    """The CPU variant modules a build for ``target`` with these CMake flags holds (the last value of a flag wins),
    in the build environment ``build_env`` (an older root's GCC builds fewer)."""
    value = ""
    for arg in cmake_args:
        if arg.startswith(ALL_VARIANTS_FLAG.split("=")[0] + "="):
            value = arg.split("=", 1)[1].upper()
    suite = SUITES.get(build_env)
    return target.cpu_variants_for_gcc(suite.gcc if suite else None) if value in ("ON", "1", "TRUE", "YES") else ()


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
        return not self.failed

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, Status.PASS if ok else Status.FAIL, detail))

    def skip(self, name: str, why: str) -> None:
        """A check this machine cannot run, shown as SKIP with the reason (it counts neither way)."""
        self.checks.append(Check(name, Status.SKIP, why))

    def render(self) -> str:
        lines = [f"verify-static {self.wheel}", f"  claims: {self.claim}", *render_checks(self.checks)]
        lines.append(f"  result: {'PASS' if self.ok else 'FAIL'}")
        return "\n".join(lines)

    def to_json(self) -> str:
        checks = [_check_fields(c) | {"skipped": c.status is Status.SKIP} for c in self.checks]
        return json.dumps(asdict(self) | {"checks": checks, "ok": self.ok}, indent=2)

    def manifest_fields(self) -> dict[str, Any]:
        return {"verify_static": {
            "ok": self.ok,
            "checks": [_check_fields(c) | ({"skipped": True} if c.status is Status.SKIP else {}) for c in self.checks],
        }}

    def raise_if_failed(self) -> None:
        failed = self.failed
        if failed:
            first = failed[0]
            raise VerifyError(
                f"{self.wheel} failed static verification: {first.name}: {first.detail}"
                + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""),
                "do not install this wheel; rebuild it with llamawheel (nox -s build-cuda-<version> -- --arch ...)",
            )


def _check_fields(check: Check) -> dict[str, Any]:
    """A static check as the JSON report and the manifest write it: ``ok`` is true unless it failed."""
    return {"name": check.name, "ok": not check.failed, "detail": check.detail}


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
    name = WheelName.parse(path.name)
    expect = Expectations.from_claim(name.version, cuda=cuda, arch=arch, runtime=runtime,
                                     target=platforms.of_tag(name.platform) or X86_64)
    expect = replace(expect, glibc=built_for_glibc(path))
    return expect, verify_wheel(path, expect)


def verify_wheel(path: Path, expect: Expectations | None = None) -> Report:
    """Check what the wheel at ``path`` holds against ``expect`` (by default, its version label's claim)."""
    entries = read_entries(path)
    name = WheelName.parse(path.name)
    meta = distmeta.from_files(path.name, {e.name: e.data for e in entries})
    version = meta.metadata_version
    expect = expect or Expectations.from_version(version, target=platforms.of_tag(name.platform) or X86_64)
    report = Report(path.name, version, path.stat().st_size, _describe(expect))
    _check_layout(report, entries, name)
    elves = _check_copies(report, entries)
    _check_containment(report, elves)
    _check_machine(report, elves, name, expect.target)
    _check_platform(report, elves, name, expect.glibc, expect.target)
    if name.distribution.lower().replace("-", "_") != LLAMA_DISTRIBUTION:  # a fixture package: none expected
        expect = replace(expect, cpu_variants=())
    _check_cpu_variants(report, entries, elves, expect)
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


def _check_machine(report: Report, elves: dict[str, ElfInfo], name: WheelName, target: Platform) -> None:
    """Every library is code for the machine the wheel is for, and its tag names that machine (an x86-64 library
    in an aarch64 wheel would fail to load there, after install)."""
    if not elves:
        return
    tagged = platforms.of_tag(name.platform)
    wrong = sorted(f"{posixpath.basename(n)} is {i.machine}" for n, i in elves.items()
                   if i.machine != target.elf_machine)
    problems = wrong + ([f"the tag {name.platform} is not for {target.name}"] if tagged != target else [])
    report.add("machine", not problems, f"all {len(elves)} libraries are {target.label} code ({target.elf_machine})"
               if not problems else f"built for {target.label}, but " + "; ".join(problems[:6])
               + (f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""))


def _check_platform(report: Report, elves: dict[str, ElfInfo], name: WheelName,
                    target: tuple[int, int] | None = None, machine: Platform = X86_64) -> None:
    """The platform tag is no older than every versioned symbol the libraries need allows (as auditwheel judges
    it: GLIBC, GLIBCXX, CXXABI, GCC, LIBATOMIC, ZLIB), nothing is newer than the glibc the wheel is built for, and
    which common distributions can take the wheel."""
    if not elves:
        return  # pure Python: the tag says nothing about the system
    libs = {posixpath.basename(n): i for n, i in elves.items()}
    earned = earned_policy(libs, machine.name)
    if target is not None:
        built_for = policy_for(target, machine.name)
        problems = beyond(built_for, libs) if built_for else [f"auditwheel has no policy for {glibc.dotted(target)}"]
        report.add(f"glibc {glibc.dotted(target)}", not problems,
                   f"nothing needs more than {built_for.name if built_for else ''} allows" if not problems else
                   f"built for glibc {glibc.dotted(target)}, but " + "; ".join(problems[:4])
                   + (f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""))
    claimed = tag_glibc(name.platform)
    if earned is None:
        report.add("platform tag", False, "no manylinux policy allows what the libraries need: "
                   + "; ".join(policies(machine.name)[-1].violations(libs)[:4]))
        return
    if claimed and claimed != (0, 0) and claimed < earned.glibc:
        covering = [p for p in policies(machine.name) if p.glibc <= claimed]
        why = "; ".join(covering[-1].violations(libs)[:4]) if covering else "older than any policy"
        report.add("platform tag", False, f"{name.platform} claims too old a system: {why} (earned: {earned.name})")
        return
    needs = needs_of(list(libs.values()))
    yes, no = admitted(needs, name.platform)
    wanted = ", ".join(f"{family}_{'.'.join(map(str, needs[family]))}" for family in ("GLIBC", "GLIBCXX", "CXXABI")
                       if family in needs)
    report.add("platform tag", True, f"{earned.name} earned (needs {wanted or 'no versioned symbols'}); installs"
               f" on {', '.join(yes) or 'none of the common distributions'}"
               + (f"; not on {', '.join(no)}" if no else ""))


def _check_cpu_variants(report: Report, entries: list[Entry], elves: dict[str, ElfInfo], expect: Expectations) -> None:
    """Every CPU variant module is there, is a ggml backend module, and loads (its symbols resolve); the
    wheel carries the loader that picks one at import."""
    modules = {posixpath.basename(n)[len(CPU_MODULE):-3]: n for n in elves
               if posixpath.basename(n).startswith(CPU_MODULE) and n.endswith(".so")}
    if not modules and not expect.cpu_variants:
        return
    missing = [v for v in expect.cpu_variants if v not in modules]
    not_modules = sorted(v for v, n in modules.items() if not {"ggml_backend_init", "ggml_backend_score"}
                         <= elves[n].exports)
    has_loader = any(e.name.endswith(LOADER) for e in entries)
    problems = ([f"missing {', '.join(missing)}"] if missing else []) + (
        [f"{', '.join(not_modules)} export no ggml_backend_init/ggml_backend_score"] if not_modules else []) + (
        [f"no {LOADER}: nothing loads the modules when llama_cpp is imported"] if not has_loader else [])
    names = ", ".join(v for v in expect.target.cpu_variants if v in modules)
    report.add("CPU variants", not problems,
               f"{len(modules)} modules ({names}), loaded by {LOADER}" if not problems else "; ".join(problems))
    if not expect.target.native:
        report.skip("CPU variants load", f"{expect.target.label} modules cannot be loaded on this "
                    f"{platforms.host().label} machine (run the wheel under {expect.target.qemu}: "
                    "see docs/cuda.md, 'Arm (aarch64)')")
        return
    failed = _load_modules({e.name: e.data for e in entries if e.name in elves}, sorted(modules.values()))
    report.add("CPU variants load", not failed,
               "each module loads here with every symbol resolved" if not failed else "; ".join(failed))


def _load_modules(libraries: dict[str, bytes], modules: list[str]) -> list[str]:
    """dlopen (RTLD_NOW) each module in a child process, with the wheel's own libraries beside it; returns
    what failed. Loading runs no variant code, so a variant this CPU cannot run still loads."""
    script = (
        "import ctypes, json, os, sys\n"
        "bad = []\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_LOCAL)\n"
        "    except OSError as exc:\n"
        "        bad.append(str(exc))\n"
        "print(json.dumps(bad))\n"
    )
    with tempfile.TemporaryDirectory(prefix="llamawheel-modules-") as tmp:
        for name, data in libraries.items():
            target = Path(tmp, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        out = proc.probe([sys.executable, "-I", "-c", script, *(str(Path(tmp, m)) for m in modules)], timeout=300)
        if out is None:
            return ["the loading process could not start, or ran longer than 300 s and was stopped"]
        try:
            failed: list[str] = json.loads(out.stdout)
        except ValueError:
            return [f"the loading process failed: {out.stderr.strip()[-500:]}"]
        return [f.replace(tmp + "/", "") for f in failed]


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
