"""GPU architecture tokens, presets, selection and the wheel's local version label."""

from __future__ import annotations

import pytest

from llamawheel.core.errors import UsageError
from llamawheel.recipe import archs
from llamawheel.recipe.archs import ArchTarget
from llamawheel.recipe.catalog import load_recipe

from .helpers import RECIPES_DIR

CUDA13 = load_recipe(RECIPES_DIR / "cuda-13.toml")


def select(spec: str | None, native: list[str] | None = None) -> tuple[ArchTarget, ...]:
    return archs.select(spec, CUDA13.default_archs, CUDA13.supported_archs, "13.0", native=native or [])


@pytest.mark.parametrize(
    ("token", "sass", "ptx", "cmake", "label"),
    [
        ("86", True, False, "86-real", "sm86"),
        ("86-real", True, False, "86-real", "sm86"),
        ("86-virtual", False, True, "86-virtual", "ptx86"),
        ("90+ptx", True, True, "90", "sm90.ptx90"),
        ("sm_89", True, False, "89-real", "sm89"),
        (" SM120+PTX ", True, True, "120", "sm120.ptx120"),
    ],
)
def test_parse_token(token: str, sass: bool, ptx: bool, cmake: str, label: str) -> None:
    target = archs.parse_token(token)
    assert (target.sass, target.ptx) == (sass, ptx)
    assert target.cmake() == cmake
    assert target.label() == label


def test_target_descriptions() -> None:
    assert str(archs.parse_token("86")) == "sm_86"
    assert str(archs.parse_token("86-virtual")) == "compute_86 (PTX)"
    assert str(archs.parse_token("90+ptx")) == "sm_90 + PTX"


@pytest.mark.parametrize("token", ["8.6", "sm", "86-ptx", "1234", ""])
def test_bad_token_explains_the_format(token: str) -> None:
    with pytest.raises(UsageError) as info:
        archs.parse_token(token)
    assert f"'{token}' is not a GPU architecture" in info.value.message
    assert info.value.tip is not None and "86 for an RTX 3060" in info.value.tip


def test_no_spec_without_gpu_is_the_recipe_default() -> None:
    targets = select(None, native=[])
    assert targets == CUDA13.default_targets()
    assert [str(t) for t in targets] == ["sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120 + PTX"]
    assert archs.cmake_value(targets) == "75-real;80-real;86-real;89-real;90-real;100-real;120"


def test_no_spec_with_a_gpu_is_that_gpu() -> None:
    assert select(None, native=["89"]) == (ArchTarget("89"),)


def test_native_uses_every_visible_gpu() -> None:
    assert select("native", native=["89", "86"]) == (ArchTarget("86"), ArchTarget("89"))


def test_native_without_gpu_fails_with_a_tip() -> None:
    with pytest.raises(UsageError) as info:
        select("native", native=[])
    assert "no NVIDIA GPU is visible" in info.value.message
    assert info.value.tip is not None and "--arch 86" in info.value.tip


def test_detection_is_consulted_when_native_is_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archs, "detect_native", lambda: ["120"])
    assert archs.select(None, CUDA13.default_archs, CUDA13.supported_archs, "13.0") == (ArchTarget("120"),)


@pytest.mark.parametrize(
    ("preset", "expected"),
    [("hopper", ["90"]), ("ampere", ["80", "86"]), ("blackwell", ["100", "120"])],
)
def test_presets(preset: str, expected: list[str]) -> None:
    assert [t.sm for t in select(preset)] == expected
    assert all(t.sass and not t.ptx for t in select(preset))


def test_default_keyword_mixes_with_others() -> None:
    targets = select("default,121")
    assert [t.sm for t in targets][-1] == "121"
    assert len(targets) == len(CUDA13.default_targets()) + 1


def test_unknown_preset_suggests_the_close_one() -> None:
    with pytest.raises(UsageError) as info:
        select("hoper")
    assert "unknown architecture preset 'hoper'" in info.value.message
    assert 'did you mean "hopper"?' in info.value.message
    assert info.value.tip is not None and "hopper" in info.value.tip and "native" in info.value.tip


def test_unsupported_arch_lists_supported_ones() -> None:
    with pytest.raises(UsageError) as info:
        select("35")
    assert info.value.message == "CUDA 13.0 cannot compile for sm_35"
    assert info.value.tip is not None
    assert info.value.tip.startswith("architectures CUDA 13.0 supports: ")
    assert "75" in info.value.tip and "121" in info.value.tip


def test_arch_specific_variant_of_a_supported_arch_is_accepted() -> None:
    assert select("90a") == (ArchTarget("90a"),)


def test_empty_spec_is_an_error() -> None:
    with pytest.raises(UsageError, match="--arch is empty"):
        select(" , ")


def test_requests_for_one_arch_are_merged_and_sorted() -> None:
    targets = select("120,86-virtual,86")
    assert targets == (ArchTarget("86", sass=True, ptx=True), ArchTarget("120"))
    assert archs.cmake_value(targets) == "86;120-real"
