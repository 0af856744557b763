"""Repair: the plain scikit-build wheel turned into a clean, relocatable one (`wheel_repair`)."""

from __future__ import annotations

from llamawheel.repair.wheel_repair import CUDA_LIB_PREFIXES, Provided, RepairedWheel, RepairSpec, repair_wheel

__all__ = ["CUDA_LIB_PREFIXES", "Provided", "RepairSpec", "RepairedWheel", "repair_wheel"]
