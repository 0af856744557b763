"""The one module that names every data path llamawheel reads or writes.

Data (``recipes/``, ``mirrors/``, ``docker/``) ships inside the package (``llamawheel._data``, read with
importlib.resources), so an installed llamawheel works anywhere and the working directory never changes
which recipes it uses. Another tree's data is used only where one is named. The root, resolved on each call
(`root`), never at import, is the first of:

1. ``llamawheel --root PATH`` (the command line calls `set_root`);
2. ``$LLAMAWHEEL_ROOT``;
3. the source tree this package is imported from (an editable install, or ``src/`` on ``sys.path``): there the
   data is not copied into the package but lies beside ``src/``, where pyproject.toml maps it from, so an
   edited recipe takes effect without reinstalling.

With none (an installed llamawheel), the package's own copy is read. A named root must hold ``recipes/``,
``mirrors/`` and ``docker/``. Outputs (``wheels/``) go under the root, else under the working directory.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from llamawheel.core.errors import UsageError

PACKAGE_DIR = Path(__file__).resolve().parents[1]
"""The installed ``llamawheel`` package folder."""
DATA_KINDS = ("recipes", "mirrors", "docker")
ROOT_ENV = "LLAMAWHEEL_ROOT"

_given_root: Path | None = None
"""The command line's ``--root`` (`set_root`)."""


def set_root(folder: Path | None) -> None:
    """Use ``folder`` (a llamawheel checkout) as the root from now on, before ``$LLAMAWHEEL_ROOT``; None: no
    ``--root``. Checked when the root is next resolved."""
    global _given_root
    _given_root = folder


def _named_root(folder: Path, named_by: str, instead: str) -> Path:
    """``folder`` resolved, if it is a llamawheel checkout (``named_by`` says where it was named: ``--root ``,
    ``LLAMAWHEEL_ROOT=``; ``instead`` how to name none)."""
    folder = folder.expanduser().resolve()
    tip = (f"name a llamawheel checkout (the folder that holds {_listed(DATA_KINDS, 'and')}), or {instead} to use "
           "the recipes, mirror profiles and Containerfile shipped with llamawheel")
    if not folder.is_dir():
        raise UsageError(f"{named_by}{folder}: no such folder", tip)
    missing = [kind for kind in DATA_KINDS if not (folder / kind).is_dir()]
    if missing:
        raise UsageError(f"{named_by}{folder} is not a llamawheel checkout: it has no {_listed(missing, 'or')}", tip)
    return folder


def _listed(kinds: Sequence[str], conjunction: str) -> str:
    """``recipes/, mirrors/ and docker/``."""
    folders = [f"{kind}/" for kind in kinds]
    return folders[0] if len(folders) == 1 else f"{', '.join(folders[:-1])} {conjunction} {folders[-1]}"


def _source_tree() -> Path | None:
    """The source tree this package is imported from (``<tree>/src/llamawheel``, with the data folders beside
    ``src/``), or None for an installed package."""
    tree = PACKAGE_DIR.parents[1]
    if PACKAGE_DIR.parent.name != "src" or not (tree / "pyproject.toml").is_file():
        return None
    return tree if all((tree / kind).is_dir() for kind in DATA_KINDS) else None


def root() -> Path | None:
    """The llamawheel tree whose data is used: ``--root``, else ``$LLAMAWHEEL_ROOT``, else the source tree this
    package runs from; None for an installed llamawheel (its packaged data). A named root that is no llamawheel
    checkout is a `UsageError` that names it and what it lacks."""
    if _given_root is not None:
        return _named_root(_given_root, "--root ", "leave out --root")
    env = os.environ.get(ROOT_ENV)
    if env:
        return _named_root(Path(env), f"{ROOT_ENV}=", f"unset {ROOT_ENV}")
    return _source_tree()


def project_root() -> Path:
    """The root (`root`), else the working directory (where ``wheels/`` goes for an installed llamawheel)."""
    return root() or Path.cwd()


@cache
def _packaged(kind: str) -> Path:
    return Path(str(importlib.resources.files("llamawheel._data") / kind))


def data_dir(kind: str) -> Path:
    """``recipes``, ``mirrors`` or ``docker``: the root's folder, else the copy inside the package."""
    assert kind in DATA_KINDS, kind
    found = root()
    return found / kind if found is not None else _packaged(kind)


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
    """Default output folder for built wheels and their manifests: the root's ``wheels/``, else ``./wheels``."""
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
