"""Recipes: what to build for one CUDA line (or the CPU), as validated data.

A recipe is a TOML file in ``recipes/`` (``cuda-13.toml``, ``cpu.toml``, ...). It is
loaded once into frozen dataclasses; an unknown key, a missing hash or an unknown
version is a `RecipeError` naming the file, the key and the closest valid spelling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from llamawheel.core import datafile, paths
from llamawheel.core.errors import RecipeError, UsageError, did_you_mean
from llamawheel.recipe import archs, variant

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
PROVIDERS = ("pypi", "deb", "system")


@dataclass(frozen=True)
class PinnedPackage:
    """One package at an exact version, with the sha256 of each file pip may take."""

    name: str
    version: str
    sha256: tuple[str, ...]

    def requirement_line(self) -> str:
        hashes = " ".join(f"--hash=sha256:{h}" for h in self.sha256)
        return f"{self.name}=={self.version} {hashes}"


@dataclass(frozen=True)
class DebPackage:
    """A Debian package: an exact version, or a glob (``12.6.*``) resolved against the signed index."""

    name: str
    version: str

    @property
    def is_glob(self) -> bool:
        return "*" in self.version


@dataclass(frozen=True)
class AptSource:
    """Where the ``deb`` provider fetches from; the URL itself comes from the mirror profile."""

    upstream: str
    """Which mirror-profile entry: ``debian``, ``ubuntu`` or ``cuda-apt``."""
    suite: str
    """``trixie`` for an archive, ``/`` for a flat repository such as NVIDIA's."""
    components: tuple[str, ...]
    path: str
    """Below the mirror URL (``debian12/x86_64/`` in NVIDIA's repository), usually empty."""
    keyring: str
    """A keyring file on this machine (absolute), or a key file below the repository URL."""
    key_fingerprint: str
    """For a key fetched from the repository: the fingerprint it must have."""
    layout: str
    """How the packages lay files out: ``debian`` (/usr/lib/nvidia-cuda-toolkit) or ``nvidia`` (/usr/local/cuda-X.Y)."""


@dataclass(frozen=True)
class CudaMinor:
    """One CUDA minor version (``13.0``) and how to provision its toolchain."""

    version: str
    provider: str
    packages: tuple[PinnedPackage, ...]
    root: str
    """Where the CUDA root lies inside the installed tree (``nvidia/cu13`` for pip)."""
    runtime_requires: tuple[str, ...]
    """Requires-Dist lines of a wheel in the default ("pypi") runtime mode."""
    apt: AptSource | None = None
    deb_packages: tuple[DebPackage, ...] = ()
    max_gcc: int = 99
    """The newest GCC major this CUDA version's nvcc accepts as host compiler."""
    supported_archs: tuple[str, ...] = ()
    """Overrides the line's list where a minor compiles for more (12.8 adds Blackwell)."""
    runtime_pins: tuple[str, ...] = ()
    """Which releases of the runtime wheels the private index (and so the image) carries: the ones of this
    minor, that the wheel was built against (``nvidia-cublas-cu12==12.4.*``), not the newest the loose
    Requires-Dist allows (cuBLAS 12.9 and the NVRTC it pulls are 500 MB more). From ``runtime-pins``, else
    the toolchain's own ``==`` pins of those packages."""

    @property
    def tag(self) -> str:
        """``13.0`` -> ``cu130``."""
        return variant.cuda_tag(self.version)

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


@dataclass(frozen=True)
class Sdist:
    name: str
    version: str
    sha256: str


@dataclass(frozen=True)
class Recipe:
    """Everything needed to build one line's wheels."""

    name: str
    path: Path
    kind: str  # "cuda" or "cpu"
    description: str
    llama_cpp_python: Sdist
    cmake_args: tuple[str, ...]
    default_archs: tuple[str, ...]
    supported_archs: tuple[str, ...]
    runtime_rpath: tuple[str, ...]
    python_versions: tuple[str, ...]
    """Python versions the published index serves (its dependency closure is fetched for each)."""
    default_minor: str | None
    minors: dict[str, CudaMinor]

    def default_targets(self) -> tuple[archs.ArchTarget, ...]:
        return archs.merge([archs.parse_token(a) for a in self.default_archs])

    def supported_for(self, minor: CudaMinor) -> tuple[str, ...]:
        return minor.supported_archs or self.supported_archs

    def minor(self, version: str | None) -> CudaMinor:
        """The minor for ``version`` (``None``: the line's default)."""
        if self.kind != "cuda":
            raise UsageError(f"recipe {self.name} builds for the CPU: it has no CUDA versions")
        key = version or self.default_minor
        assert key is not None
        if key not in self.minors:
            known = ", ".join(self.minors)
            raise UsageError(
                f"unknown CUDA version {key} for recipe {self.name}{did_you_mean(key, self.minors)}",
                f"known versions: {known}",
            )
        return self.minors[key]


def _pinned(table: datafile.Table) -> PinnedPackage:
    table.allow("name", "version", "sha256")
    hashes = table.data.get("sha256")
    if isinstance(hashes, str):
        hashes = [hashes]
    if not hashes:
        raise table.fail("sha256", "is missing: every pinned package needs its sha256")
    for h in hashes:
        if not isinstance(h, str) or not _SHA256.match(h):
            raise table.fail("sha256", f"{h!r} is not a lowercase hex sha256")
    return PinnedPackage(table.text("name"), table.text("version"), tuple(hashes))


_LAYOUTS = ("debian", "nvidia")
_UPSTREAMS = ("debian", "ubuntu", "cuda-apt")


def _apt(table: datafile.Table) -> AptSource:
    table.allow("upstream", "suite", "components", "path", "keyring", "key-fingerprint", "layout")
    upstream = table.text("upstream")
    if upstream not in _UPSTREAMS:
        hint = did_you_mean(upstream, _UPSTREAMS)
        raise table.fail("upstream", f"'{upstream}' is not one of {', '.join(_UPSTREAMS)}{hint}")
    layout = table.text("layout", "debian")
    if layout not in _LAYOUTS:
        raise table.fail("layout", f"'{layout}' is not one of {', '.join(_LAYOUTS)}{did_you_mean(layout, _LAYOUTS)}")
    keyring = table.text("keyring")
    fingerprint = table.text("key-fingerprint", "").replace(" ", "").upper()
    if not keyring.startswith("/") and not re.fullmatch(r"[0-9A-F]{40}", fingerprint):
        raise table.fail("key-fingerprint", "a key fetched from the repository needs its 40-digit fingerprint pinned")
    return AptSource(
        upstream=upstream,
        suite=table.text("suite"),
        components=table.str_list("components", []),
        path=table.text("path", ""),
        keyring=keyring,
        key_fingerprint=fingerprint,
        layout=layout,
    )


def _deb(table: datafile.Table) -> DebPackage:
    table.allow("name", "version")
    return DebPackage(table.text("name"), table.text("version"))


def _requirement_name(line: str) -> str:
    """``nvidia-cublas-cu12>=12.4,<13`` -> ``nvidia-cublas-cu12``."""
    return re.split(r"[<>=!~;\s\[]", line, maxsplit=1)[0]


def _minor(version: str, table: datafile.Table, line: datafile.Table) -> CudaMinor:
    table.allow("provider", "packages", "root", "runtime-requires", "runtime-pins", "apt", "deb-packages", "max-gcc",
                "supported-archs")
    if not re.fullmatch(r"\d+\.\d+", version):
        raise table.fail("", f"'{version}' is not a CUDA minor version like 13.0")
    provider = table.text("provider")
    if provider not in PROVIDERS:
        raise table.fail("provider", f"unknown provider '{provider}'{did_you_mean(provider, PROVIDERS)}")
    packages = tuple(_pinned(t) for t in table.tables("packages"))
    debs = tuple(_deb(t) for t in table.tables("deb-packages"))
    apt = _apt(table.table("apt")) if "apt" in table.data else None
    if provider == "pypi" and not packages:
        raise table.fail("packages", "provider 'pypi' needs pinned packages")
    if provider == "deb" and (apt is None or not debs):
        key = "apt" if apt is None else "deb-packages"
        raise table.fail(key, "provider 'deb' needs an [apt] table and deb-packages")
    runtime = table.str_list("runtime-requires", line.str_list("runtime-requires", []))
    runtime_names = [_requirement_name(r) for r in runtime]
    if "runtime-pins" in table.data:
        pins = table.str_list("runtime-pins")
        for pin in pins:
            name = _requirement_name(pin)
            if name not in runtime_names:
                raise table.fail("runtime-pins", f"'{name}' is not one of runtime-requires"
                                                  f" ({', '.join(runtime_names)}){did_you_mean(name, runtime_names)}")
    else:
        pins = tuple(f"{p.name}=={p.version}" for p in packages if p.name in runtime_names)
    return CudaMinor(
        version=version,
        provider=provider,
        packages=packages,
        root=table.text("root", ""),
        runtime_requires=runtime,
        apt=apt,
        deb_packages=debs,
        max_gcc=table.number("max-gcc", 99),
        supported_archs=table.str_list("supported-archs", []),
        runtime_pins=tuple(pins),
    )


def _python_versions(doc: datafile.Table) -> tuple[str, ...]:
    versions = doc.str_list("python-versions", ["3.10", "3.11", "3.12", "3.13"])
    for v in versions:
        if not re.fullmatch(r"3\.\d+", v):
            raise doc.fail("python-versions", f"'{v}' is not a Python version like 3.12")
    return versions


def load_recipe(path: Path) -> Recipe:
    """Load and validate one recipe file."""
    doc = datafile.load(path, RecipeError)
    doc.allow("kind", "description", "default-minor", "python-versions", "llama-cpp-python", "build", "cuda", "minors")
    kind = doc.text("kind")
    if kind not in ("cuda", "cpu"):
        raise doc.fail("kind", f"must be 'cuda' or 'cpu', not '{kind}'{did_you_mean(kind, ('cuda', 'cpu'))}")
    lcp = doc.table("llama-cpp-python")
    lcp.allow("version", "sha256")
    sha = lcp.text("sha256")
    if not _SHA256.match(sha):
        raise lcp.fail("sha256", f"{sha!r} is not a lowercase hex sha256")
    build = doc.table("build")
    build.allow("cmake-args")
    cuda = doc.table("cuda", required=(kind == "cuda"))
    cuda.allow("default-archs", "supported-archs", "runtime-rpath", "runtime-requires")
    minors_table = doc.table("minors", required=(kind == "cuda"))
    minors = {v: _minor(v, minors_table.table(v), cuda) for v in minors_table.data}
    default_minor = doc.opt_str("default-minor")
    if kind == "cuda":
        if default_minor is None:
            raise doc.fail("default-minor", "is missing")
        if default_minor not in minors:
            raise doc.fail(
                "default-minor",
                f"'{default_minor}' is not one of the listed minors{did_you_mean(default_minor, minors)}",
            )
    supported = cuda.str_list("supported-archs", [])
    defaults = cuda.str_list("default-archs", [])
    for arch in defaults:
        try:
            target = archs.parse_token(arch)
        except UsageError as exc:
            raise cuda.fail("default-archs", exc.message) from None
        if target.sm not in supported:
            raise cuda.fail("default-archs", f"'{arch}' is not in supported-archs")
    return Recipe(
        name=path.stem,
        path=path,
        kind=kind,
        description=doc.text("description", ""),
        llama_cpp_python=Sdist("llama-cpp-python", lcp.text("version"), sha),
        cmake_args=build.str_list("cmake-args", []),
        default_archs=defaults,
        supported_archs=supported,
        runtime_rpath=cuda.str_list("runtime-rpath", []),
        python_versions=_python_versions(doc),
        default_minor=default_minor,
        minors=minors,
    )


@cache
def all_recipes(directory: Path | None = None) -> dict[str, Recipe]:
    folder = directory or paths.recipes_dir()
    return {p.stem: load_recipe(p) for p in sorted(folder.glob("*.toml"))}


def find_cuda(version: str, directory: Path | None = None) -> tuple[Recipe, CudaMinor]:
    """Resolve ``12`` (a line: its default minor) or ``12.4`` (a minor) to a recipe."""
    recipes = all_recipes(directory)
    line = version.split(".")[0]
    recipe = recipes.get(f"cuda-{line}")
    known = sorted(
        (m for r in recipes.values() for m in (*r.minors, r.name.removeprefix("cuda-")) if r.kind == "cuda"),
        key=lambda v: [int(x) for x in re.findall(r"\d+", v)],
    )
    if recipe is None:
        raise UsageError(
            f"unknown CUDA version {version}{did_you_mean(version, known)}",
            f"known CUDA versions: {', '.join(known)}",
        )
    if "." not in version:
        return recipe, recipe.minor(None)
    if version not in recipe.minors:
        raise UsageError(
            f"unknown CUDA version {version}{did_you_mean(version, known)}",
            f"known CUDA versions: {', '.join(known)}",
        )
    return recipe, recipe.minors[version]


def cpu_recipe(directory: Path | None = None) -> Recipe:
    recipes = all_recipes(directory)
    if "cpu" not in recipes:
        raise RecipeError(f"no recipes/cpu.toml in {directory or paths.recipes_dir()}")
    return recipes["cpu"]
