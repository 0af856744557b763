"""The variant label: one type formats it (the wheel's local version) and parses it back."""

from __future__ import annotations

import pytest

from llamawheel.core.errors import UsageError
from llamawheel.recipe import archs
from llamawheel.recipe.archs import ArchTarget
from llamawheel.recipe.catalog import load_recipe
from llamawheel.recipe.variant import Variant, cuda_tag, cuda_version_of, flags_label, index_name

from .helpers import RECIPES_DIR

CUDA13 = load_recipe(RECIPES_DIR / "cuda-13.toml")


def label_for(spec: str | None, system: bool = False) -> str:
    targets = archs.select(spec, CUDA13.default_archs, CUDA13.supported_archs, "13.0", native=[])
    return Variant.for_build("13.0", targets, CUDA13.default_targets(), system).label


@pytest.mark.parametrize(
    ("spec", "system", "label"),
    [
        (None, False, "cu130"),
        ("default", False, "cu130"),
        ("86", False, "cu130.sm86"),
        ("89,90+ptx", False, "cu130.sm89.sm90.ptx90"),
        ("86-virtual", False, "cu130.ptx86"),
        ("86", True, "cu130.sm86.sys"),
        (None, True, "cu130.sys"),
    ],
)
def test_label_names_only_what_differs_from_the_recipe(spec: str | None, system: bool, label: str) -> None:
    assert label_for(spec, system) == label


@pytest.mark.parametrize("label", ["cpu", "cu130", "cu130.sm86", "cu130.sm89.sm90.ptx90", "cu124.ptx86.sys",
                                   "cu1310.sm120"])
def test_parse_gives_back_the_label(label: str) -> None:
    assert Variant.parse(label).label == label


def test_parse_reads_each_part() -> None:
    v = Variant.parse("cu124.sm86.ptx90.sys")
    assert (v.cuda, v.cuda_major, v.index, v.system_runtime) == ("12.4", 12, "cu124", True)
    assert v.targets == (ArchTarget("86"), ArchTarget("90", sass=False, ptx=True))
    assert Variant.parse("cpu").is_cpu and Variant.parse("cpu").index == "cpu"


@pytest.mark.parametrize("label", ["", "cu13", "gpu", "cu130.sm86.fast", "cu130.86"])
def test_parse_refuses_what_llamawheel_never_writes(label: str) -> None:
    with pytest.raises(UsageError):
        Variant.parse(label)


def test_cuda_tags_round_trip() -> None:
    assert cuda_tag("13.0") == "cu130" and cuda_version_of("cu130") == "13.0"
    assert cuda_tag("13.10") == "cu1310" and cuda_version_of("cu1310") == "13.10"
    assert cuda_version_of("cpu") is None


@pytest.mark.parametrize(("local", "name"), [("cu130.sm90", "cu130"), ("CU124.sm86.sys", "cu124"), ("cpu", "cpu"),
                                             ("!x", "")])
def test_index_name_is_the_first_label(local: str, name: str) -> None:
    assert index_name(local) == name


def test_extra_cmake_flags_show_in_the_label() -> None:
    native = flags_label(["-DGGML_NATIVE=ON"])
    assert native != flags_label(["-DGGML_AVX512=ON"]) and native.startswith("cm") and len(native) == 10
    cpu = Variant.for_build(None, (), (), flags=native)
    assert cpu.label == f"cpu.{native}" and cpu.index == "cpu"
    assert Variant.parse(cpu.label) == cpu
    cuda = Variant.parse(f"cu130.sm86.sys.{native}")
    assert (cuda.flags, cuda.system_runtime, cuda.label) == (native, True, f"cu130.sm86.sys.{native}")
