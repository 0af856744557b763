"""The CI build matrix (CUDA minor x architectures x variant), computed from the recipes.

``llamawheel ci-matrix`` prints it as JSON for a GitHub Actions ``strategy.matrix.include``;
``.github/workflows/wheels.yml`` builds every entry in parallel.
"""

from __future__ import annotations

from typing import Any

from llamawheel.recipe import archs, platforms
from llamawheel.recipe.model import Recipe
from llamawheel.recipe.variant import Variant


def matrix(
    recipes: dict[str, Recipe], arch_sets: list[str] | None = None, lines: list[str] | None = None,
    runtimes: tuple[str, ...] = ("pypi",), targets: tuple[str, ...] = tuple(platforms.PLATFORMS),
) -> list[dict[str, Any]]:
    """One entry per buildable CUDA minor, architecture set, runtime mode and platform, plus the CPU wheel per
    platform.

    ``arch_sets`` are ``--arch`` values (``default`` = the recipe's list); each becomes its own
    wheel variant (``cu124`` for the default, ``cu124.sm86`` for ``86``). Every entry builds on an x86-64 runner:
    an ``aarch64`` one is cross-compiled (``--platform aarch64``) by the same toolchain, for the CUDA minors whose
    recipe lists NVIDIA's aarch64 runtime wheels (``targets.aarch64``).
    """
    sets = arch_sets or ["default"]
    entries: list[dict[str, Any]] = []
    for recipe in recipes.values():
        if recipe.kind == "cpu":
            if not lines or "cpu" in lines:
                entries += [{"session": "build-cpu", "target": "cpu", "cuda": "", "arch": "", "variant": "cpu",
                             "runtime": "", "provider": "", "gcc": "", "platform": name} for name in targets]
            continue
        line = recipe.name.removeprefix("cuda-")
        if lines and line not in lines:
            continue
        for version, minor in recipe.minors.items():
            for arch_set in sets:
                chosen = archs.select(arch_set, recipe.default_archs, recipe.supported_for(minor), version, native=[])
                for runtime in runtimes:
                    variant = Variant.for_build(version, chosen, recipe.default_targets(), runtime == "system").label
                    entries += [{
                        "session": f"build-cuda-{version}",
                        "target": version,
                        "cuda": version,
                        "arch": arch_set,
                        "variant": variant,
                        "runtime": runtime,
                        "provider": minor.provider,
                        # a build root brings its own GCC (bullseye: 10); on the host, an older g++ where needed
                        "gcc": f"g++-{minor.max_gcc}" if minor.max_gcc < 12 and recipe.build.env == "host" else "",
                        "platform": name,
                    } for name in targets if name == platforms.X86_64.name or name in minor.targets]
    return entries


def build_sessions(recipes: dict[str, Recipe]) -> list[tuple[str, str, str]]:
    """The nox build sessions the recipes give: (session name, ``llamawheel build`` target, one-line help),
    one per CUDA line (its default minor) and one per minor, then the CPU build."""
    sessions: list[tuple[str, str, str]] = []
    for recipe in recipes.values():
        if recipe.kind != "cuda":
            continue
        line = recipe.name.removeprefix("cuda-")
        options = "after --: --arch 86, --mirror NAME, --jobs N, --out DIR."
        sessions.append((f"build-cuda-{line}", line,
                         f"Build a CUDA {recipe.default_minor} (the {line}.x default) wheel; {options}"))
        sessions += [(f"build-cuda-{v}", v, f"Build a CUDA {v} wheel; {options}") for v in recipe.minors]
    return sessions
