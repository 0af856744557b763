"""The one module that names every data path llamawheel reads or writes.

Data (``recipes/``, ``mirrors/``, ``docker/``) ships inside the package (``llamawheel._data``, read with
importlib.resources), so an installed llamawheel works anywhere. Run from a checkout, the checkout's
own copies are used instead, so that an edited recipe takes effect without reinstalling. The checkout
is, in this order: ``$LLAMAWHEEL_ROOT``; the source tree this package was imported from; the nearest
folder at or above the working directory that holds llamawheel's ``pyproject.toml``.
"""

from __future__ import annotations

import importlib.resources
import os
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
"""The installed ``llamawheel`` package folder."""
DATA_KINDS = ("recipes", "mirrors", "docker")


def _is_checkout(folder: Path) -> bool:
    pyproject = folder / "pyproject.toml"
    try:
        text = pyproject.read_text()
    except OSError:
        return False
    return 'name = "llamawheel"' in text and all((folder / kind).is_dir() for kind in DATA_KINDS)


def checkout() -> Path | None:
    """The llamawheel checkout in use, or None for an installed llamawheel run elsewhere."""
    env = os.environ.get("LLAMAWHEEL_ROOT")
    if env:
        return Path(env).resolve()
    for candidate in (PACKAGE_DIR.parents[1], Path.cwd(), *Path.cwd().parents):
        if _is_checkout(candidate):
            return candidate
    return None


def project_root() -> Path:
    """The checkout, else the working directory (where ``wheels/`` goes for an installed llamawheel)."""
    return checkout() or Path.cwd()


@cache
def _packaged(kind: str) -> Path:
    return Path(str(importlib.resources.files("llamawheel._data") / kind))


def data_dir(kind: str) -> Path:
    """``recipes``, ``mirrors`` or ``docker``: the checkout's folder, else the copy inside the package."""
    assert kind in DATA_KINDS, kind
    root = checkout()
    return root / kind if root is not None else _packaged(kind)


def recipes_dir() -> Path:
    return data_dir("recipes")


def mirrors_dir() -> Path:
    return data_dir("mirrors")


def containerfile() -> Path:
    return data_dir("docker") / "Containerfile"


def runtime_dir() -> Path:
    """The image's runtime package (standard library only), copied into images as ``llamawheel_runtime``."""
    return PACKAGE_DIR / "runtime"


def wheels_dir() -> Path:
    """Default output folder for built wheels and their manifests: the checkout's ``wheels/``, else
    ``./wheels``."""
    return project_root() / "wheels"


def cache_dir() -> Path:
    """Toolchains, sdists, build trees and the compile cache (``LLAMAWHEEL_CACHE``)."""
    env = os.environ.get("LLAMAWHEEL_CACHE")
    if env:
        return Path(env).resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "llamawheel"


def config_dir() -> Path:
    """Settings that hold secrets, apart from the cache (``LLAMAWHEEL_CONFIG``; else ``$XDG_CONFIG_HOME/llamawheel``,
    ``~/.config/llamawheel``): the farm's tokens. Nothing under it is ever bound into a build root."""
    env = os.environ.get("LLAMAWHEEL_CONFIG")
    if env:
        return Path(env).resolve()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "llamawheel"


def toolchains_dir() -> Path:
    return cache_dir() / "toolchains"


def sdists_dir() -> Path:
    return cache_dir() / "sdists"


def builds_dir() -> Path:
    return cache_dir() / "build"


def compile_cache_dir() -> Path:
    return cache_dir() / "ccache"


def images_dir() -> Path:
    """Runtime images: pip's wheel, build logs, the base's log, manifests of images built without --save."""
    return cache_dir() / "images"


def models_dir() -> Path:
    """Vocabularies taken from the sdist, for the tiny verification models."""
    return cache_dir() / "models"


def tools_dir() -> Path:
    """The compile-cache tools llamawheel installs (sccache, ccache): bound read-only into build roots."""
    return cache_dir() / "tools"


def compile_stores_dir() -> Path:
    """The compile caches' local stores, one folder per tool: the only part of the cache a build root writes."""
    return cache_dir() / "compile-cache"
