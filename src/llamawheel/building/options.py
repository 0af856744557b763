"""Build options, resolved in one place and one order:
built-in defaults < recipe < mirror profile < ``LLAMAWHEEL_*`` environment < command line."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from llamawheel.building import cache, glibc
from llamawheel.core.errors import UsageError
from llamawheel.recipe import platforms

RUNTIME_MODES = ("pypi", "system")
TOOLCHAIN_CHOICES = ("auto", "pypi", "deb", "system")


@dataclass(frozen=True)
class BuildOptions:
    mirror: str = "default"
    """Mirror profile name or path (``LLAMAWHEEL_MIRROR``)."""
    arch: str | None = None
    """GPU architectures (``LLAMAWHEEL_ARCH``); None: native with a GPU, else the recipe's default."""
    jobs: int | None = None
    """Parallel compile jobs (``LLAMAWHEEL_JOBS``); None: bounded by cores and memory."""
    llama_cpp_python: str | None = None
    """llama-cpp-python version (``LLAMAWHEEL_LLAMA_CPP_PYTHON``); None: the recipe's pin."""
    sdist_sha256: str | None = None
    """sha256 of that version's sdist; required when the version is not the recipe's."""
    source: Path | None = None
    """Build this local source tree instead of the pinned sdist (a patched checkout, a test fixture)."""
    out: Path | None = None
    """Output folder for the wheel and its manifest (``LLAMAWHEEL_OUT``); None: ``wheels/``."""
    toolchain: str = "auto"
    """Toolchain provider: auto (the recipe's), pypi, deb, system (``LLAMAWHEEL_TOOLCHAIN``)."""
    runtime: str = "pypi"
    """Where the wheel finds cudart/cuBLAS: NVIDIA's PyPI wheels (``pypi``) or the system (``system``)."""
    build_env: str | None = None
    """Where to compile (``LLAMAWHEEL_BUILD_ENV``): an older Debian root (``bullseye``) or ``host``; None: the
    recipe's ``build.env``."""
    glibc: str | None = None
    """The oldest glibc the wheel runs on (``LLAMAWHEEL_GLIBC``); None: the recipe's ``build.glibc`` in a root, this
    machine's own on the host."""
    platform: str | None = None
    """The machine the wheel runs on (``LLAMAWHEEL_PLATFORM``): ``x86_64`` or ``aarch64``; None: the recipe's
    ``build.platform``."""
    verify: bool = True
    """Run static verification after the build."""
    server: bool = True
    """Also build the companion wheel with llama.cpp's own server (``llamawheel_server``), which the runtime image
    serves with; reused when one of the same sources is in the output folder. Not with ``source`` (a local tree)."""
    compile_cache: str | None = None
    """sccache, ccache or none (``LLAMAWHEEL_COMPILE_CACHE``); None: ccache (sccache with an S3
    or GitHub Actions' cache store, or a farm), or none where the mirror lacks it."""
    compile_cache_url: str | None = None
    """A shared store besides the local one (``LLAMAWHEEL_COMPILE_CACHE_URL``): redis://, webdav+http(s)://, s3://,
    gha; its credentials come from the environment only."""
    farm: str | None = None
    """An sccache-dist scheduler to send compiles to (``LLAMAWHEEL_FARM``); its token in ``LLAMAWHEEL_FARM_TOKEN``."""


NAMES = tuple(f.name for f in fields(BuildOptions))
"""Every build option; the command line's ``build`` options carry the same names."""


def env_variable(name: str) -> str | None:
    """The environment variable that sets option ``name`` (``arch``: ``LLAMAWHEEL_ARCH``); None for the options only
    the command line turns off (``verify``, ``server``) and for names that are not options."""
    if name in ("verify", "server") or name not in NAMES:
        return None
    return f"LLAMAWHEEL_{name.upper()}"


def _env_overrides() -> dict[str, object]:
    out: dict[str, object] = {}
    for f in fields(BuildOptions):
        variable = env_variable(f.name)
        value = os.environ.get(variable) if variable else None
        if value is None:
            continue
        if f.name == "jobs":
            try:
                out[f.name] = int(value)
            except ValueError:
                raise UsageError(f"LLAMAWHEEL_JOBS={value!r} is not a whole number") from None
        elif f.name in ("out", "source"):
            out[f.name] = Path(value)
        else:
            out[f.name] = value
    return out


def resolve(cli: dict[str, object]) -> BuildOptions:
    """Merge defaults, environment and command line (only values the user gave)."""
    merged: dict[str, object] = {**_env_overrides(), **{k: v for k, v in cli.items() if v is not None}}
    opts = BuildOptions(**merged)  # type: ignore[arg-type]
    if opts.runtime not in RUNTIME_MODES:
        raise UsageError(f"--runtime {opts.runtime}: choose one of {', '.join(RUNTIME_MODES)}")
    if opts.toolchain not in TOOLCHAIN_CHOICES:
        raise UsageError(f"--toolchain {opts.toolchain}: choose one of {', '.join(TOOLCHAIN_CHOICES)}")
    if opts.glibc is not None:
        version = glibc.parse_version(opts.glibc, "--glibc")
        if version < glibc.OLDEST:
            oldest = glibc.dotted(glibc.OLDEST)
            raise UsageError(f"--glibc {opts.glibc}: older than {oldest} (manylinux2014), the oldest glibc CUDA's "
                             "libraries support", f"pass --glibc {oldest} or newer")
    if opts.platform is not None:
        opts = replace(opts, platform=platforms.get(opts.platform).name)  # Debian's arm64 is aarch64
    if opts.jobs is not None and opts.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    tool = opts.compile_cache or cache.default_for(opts.compile_cache_url, opts.farm)
    cache.check(tool, opts.compile_cache_url, opts.farm)  # before anything is downloaded
    return opts
