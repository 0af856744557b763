"""The build pipeline: a `Plan` -> toolchain -> source -> compile -> repair -> verify -> manifest (`steps`), the
manifest written beside each wheel (`manifest`), the wheelhouse a build root's pip reads (`wheelhouse`), and the
companion wheel with llama.cpp's own server (`server`)."""

from __future__ import annotations

from llamawheel.building.planning import Plan
from llamawheel.pipeline.steps import run, work_dir

__all__ = ["Plan", "run", "work_dir"]
