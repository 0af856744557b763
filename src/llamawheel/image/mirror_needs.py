"""What each feature of the pipeline fetches, for ``llamawheel mirrors check``: read from the recipes (the pinned
sdist, NVIDIA's wheels, the Debian suites and components, NVIDIA's apt repository), the build roots and the
runtime image (its Debian base, Debian's slim image on Docker Hub, llama-gpt's UI on ghcr.io). This module sits
in the last stage because it needs every earlier one; the probing itself is `llamawheel.mirror.probe`."""

from __future__ import annotations

from collections.abc import Iterable

from llamawheel.building.sdist import sdist_file_name
from llamawheel.image import compose
from llamawheel.image.base import REGISTRY_BASE, SUITE
from llamawheel.mirror.probe import Feature, Need
from llamawheel.pipeline.wheelhouse import BUILD_TOOLS
from llamawheel.recipe import catalog
from llamawheel.recipe.model import CudaMinor
from llamawheel.toolchain.buildroot import SUITES

SERVER_DEPENDENCIES = ("numpy", "diskcache", "jinja2", "typing-extensions", "fastapi", "uvicorn", "sse-starlette",
                       "starlette-context", "pydantic-settings", "pyyaml")
"""What ``llama-cpp-python[server]`` 0.3.x needs at install time: the private index carries them."""
BUILD_BACKEND = ("scikit-build-core",)


def _project(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _page(name: str, *contains: str) -> Need:
    label = name if not contains else f"{name} {' '.join(contains).strip('-')}"
    return Need(label, "pypi", f"{_project(name)}/", tuple(contains))


def _suite(suite: str, components: Iterable[str] = ("main",)) -> Need:
    comps = tuple(components)
    return Need(f"Debian {suite} ({' '.join(comps)})", "debian", f"dists/{suite}/Release", components=comps)


def _security(suite: str) -> Need:
    return Need(f"Debian {suite}-security", "debian-security", f"dists/{suite}-security/Release")


def _label(minors: list[CudaMinor]) -> str:
    return "CUDA " + ", ".join(m.version for m in minors)


def cuda_features() -> list[Feature]:
    """One feature per way the recipes provision CUDA: NVIDIA's PyPI wheels (per minor), Debian's non-free
    packages (per suite), NVIDIA's apt repository (per repository folder)."""
    features = []
    by_repo: dict[tuple[str, str, str], list[CudaMinor]] = {}
    for recipe in catalog.all_recipes().values():
        for minor in recipe.minors.values():
            if minor.provider == "pypi":
                needs = tuple(_page(p.name, f"-{p.version}-") for p in minor.packages)
                features.append(Feature(f"CUDA {minor.version} (NVIDIA's PyPI wheels)", needs))
            elif minor.provider == "deb" and minor.apt is not None:
                apt = minor.apt
                by_repo.setdefault((apt.upstream, apt.suite if apt.suite != "/" else apt.path, apt.keyring),
                                   []).append(minor)
    for (upstream, where, keyring), minors in by_repo.items():
        first = minors[0].apt
        assert first is not None
        apt = first
        if upstream == "cuda-apt":
            needs = (Need("NVIDIA's repository index", upstream, f"{apt.path}Release"),
                     Need("NVIDIA's repository key", upstream, f"{apt.path}{keyring}"))
            features.append(Feature(f"{_label(minors)} (NVIDIA's apt repository)", needs))
        else:
            features.append(Feature(f"{_label(minors)} (Debian {where} {' '.join(apt.components[1:])})",
                                    (_suite(where, apt.components),)))
    return features


def features() -> list[Feature]:
    """Every feature, in the order a user meets them."""
    cpu = catalog.cpu_recipe().llama_cpp_python
    build = (_page(cpu.name, sdist_file_name(cpu)), *(_page(n) for n in BUILD_BACKEND),
             *(_page(t.split(">")[0].split("=")[0]) for t in BUILD_TOOLS))
    roots = [Feature(f"Debian {s.debian} build root (glibc {s.glibc[0]}.{s.glibc[1]}, GCC {s.gcc})",
                     (_suite(s.name), _security(s.name))) for s in SUITES.values() if s.name == "bullseye"]
    return [
        Feature("CPU wheels (the pinned sdist and its build requirements)", build, core=True),
        *roots,
        *cuda_features(),
        Feature("private index (what llama-cpp-python[server] needs)", tuple(_page(n) for n in SERVER_DEPENDENCIES)),
        Feature(f"runtime image base from the apt mirror (Debian {SUITE})", (_suite(SUITE), _security(SUITE))),
        Feature("runtime image base from a registry (--base registry)",
                (Need(f"Docker Hub {REGISTRY_BASE}", "dockerhub", REGISTRY_BASE),)),
        Feature("llama-gpt's UI image (docker compose)", (Need(f"ghcr.io {compose.UI_IMAGE}", "ghcr",
                                                              compose.UI_IMAGE),)),
    ]
