"""The one module that names every data path llamawheel reads or writes."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path:
    """The checkout holding ``recipes/`` and ``mirrors/`` (``LLAMAWHEEL_ROOT`` overrides)."""
    env = os.environ.get("LLAMAWHEEL_ROOT")
    if env:
        return Path(env).resolve()
    for candidate in (Path.cwd(), *Path.cwd().parents, PACKAGE_DIR.parents[1]):
        if (candidate / "recipes").is_dir() and (candidate / "mirrors").is_dir():
            return candidate
    return PACKAGE_DIR.parents[1]


def recipes_dir() -> Path:
    return project_root() / "recipes"


def mirrors_dir() -> Path:
    return project_root() / "mirrors"


def wheels_dir() -> Path:
    """Default output folder for built wheels and their manifests."""
    return project_root() / "wheels"


def cache_dir() -> Path:
    """Toolchains, sdists, build trees and the compile cache (``LLAMAWHEEL_CACHE``)."""
    env = os.environ.get("LLAMAWHEEL_CACHE")
    if env:
        return Path(env).resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "llamawheel"


def toolchains_dir() -> Path:
    return cache_dir() / "toolchains"


def sdists_dir() -> Path:
    return cache_dir() / "sdists"


def builds_dir() -> Path:
    return cache_dir() / "build"


def compile_cache_dir() -> Path:
    return cache_dir() / "ccache"


def models_dir() -> Path:
    """Vocabularies taken from the sdist, for the tiny verification models."""
    return cache_dir() / "models"
