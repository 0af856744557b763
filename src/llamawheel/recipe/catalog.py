"""Recipes: what to build for one CUDA line (or the CPU), as validated data.

A recipe is a TOML file in ``recipes/`` (``cuda-13.toml``, ``cpu.toml``, ...) layered on
``recipes/defaults.toml`` (the llama-cpp-python pin, the Python versions, the common CMake flags): a
table's keys are merged, any other value the recipe gives replaces the default. The result is loaded
once into the frozen dataclasses of `model`, which are the only statement of the format: an unknown
key, a missing hash or an unknown version is a `RecipeError` naming the file, the key and the closest
valid spelling. `schema` writes the JSON schema editors use from the same dataclasses.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from llamawheel.core import datafile, paths, records
from llamawheel.core.errors import RecipeError, UsageError, did_you_mean
from llamawheel.recipe.model import CudaMinor, Recipe, RecipeDefaults
from llamawheel.recipe.platforms import Platform

DEFAULTS = "defaults.toml"
SCHEMA_FILE = "recipe.schema.json"


def _layered(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on ``base``: tables merge key by key, any other value of ``over`` replaces ``base``'s."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _layered(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _defaults(folder: Path) -> dict[str, Any]:
    """The raw ``defaults.toml`` beside the recipes (checked on its own first), or nothing."""
    path = folder / DEFAULTS
    if not path.is_file():
        return {}
    table = datafile.load(path, RecipeError)
    records.load(RecipeDefaults, table)
    return dict(table.data)


def load_recipe(path: Path) -> Recipe:
    """Load and validate one recipe file, layered on the ``defaults.toml`` beside it."""
    own = datafile.load(path, RecipeError)
    data = _layered(_defaults(path.parent), own.data)
    line = data.get("cuda")
    for minor in data.get("minors", {}).values() if isinstance(data.get("minors"), dict) else ():
        # a minor's runtime-requires default to the line's
        if isinstance(minor, dict) and isinstance(line, dict) and "runtime-requires" in line:
            minor.setdefault("runtime-requires", line["runtime-requires"])
    table = datafile.Table(data, path, "", RecipeError)
    return records.load(Recipe, table, name=path.stem, path=path)


def fingerprint(recipe: Recipe, target: Platform | None = None) -> str:
    """The sha256 of what makes a recipe: its file, the ``defaults.toml`` beside it and its patches (with those a
    ``target`` platform adds: `patch_files`)."""
    digest = hashlib.sha256()
    defaults = recipe.path.parent / DEFAULTS
    for part in (recipe.path, *([defaults] if defaults.is_file() else []), *patch_files(recipe, target)):
        digest.update(part.name.encode() + b"\0" + part.read_bytes() + b"\0")
    return digest.hexdigest()


def patch_files(recipe: Recipe, target: Platform | None = None) -> tuple[Path, ...]:
    """The patches a build of ``recipe`` for ``target`` applies, in order: the recipe's, then the platform's (both
    relative to the recipes folder)."""
    extra = target.patches if target is not None else ()
    return (*recipe.patch_files, *(recipe.path.parent / p for p in extra))


def recipe_files(folder: Path) -> list[Path]:
    """The recipe files of a folder (``defaults.toml`` is not one)."""
    return [p for p in sorted(folder.glob("*.toml")) if p.name != DEFAULTS]


def all_recipes(directory: Path | None = None) -> dict[str, Recipe]:
    """The recipes of ``directory``, else of `paths.recipes_dir` (resolved on each call); each folder read once."""
    return _recipes_in(directory or paths.recipes_dir())


@cache
def _recipes_in(folder: Path) -> dict[str, Recipe]:
    return {p.stem: load_recipe(p) for p in recipe_files(folder)}


def schema() -> dict[str, Any]:
    """The JSON schema of a recipe file, from the dataclasses (published as ``recipes/recipe.schema.json``)."""
    return records.json_schema(Recipe, "llamawheel recipe")


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
