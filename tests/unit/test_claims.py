"""What verify-static checks a wheel against: its label, or what the user says instead."""

from __future__ import annotations

import pytest

from llamawheel.building.options import resolve
from llamawheel.building.planning import _source
from llamawheel.core.errors import UsageError
from llamawheel.recipe import archs
from llamawheel.recipe.catalog import cpu_recipe
from llamawheel.verify.static import Expectations


def test_unlabelled_wheel_can_be_checked_against_an_explicit_claim() -> None:
    expect = Expectations.from_claim("0.3.36", cuda="13.0", arch="86", runtime="pypi")
    assert expect.cuda_major == 13
    assert expect.targets == (archs.ArchTarget("86"),)
    assert "nvidia-cublas>=13.0,<14" in expect.requires


def test_unlabelled_wheel_without_a_claim_is_refused_with_a_tip() -> None:
    with pytest.raises(UsageError) as err:
        Expectations.from_claim("0.3.36")
    assert err.value.tip and "--cuda" in err.value.tip


def test_arch_default_means_the_recipe_list() -> None:
    expect = Expectations.from_claim("0.3.36+cu130.sm90", arch="default")
    assert len(expect.targets) == 7


def test_runtime_override_drops_the_nvidia_requirements() -> None:
    assert Expectations.from_claim("0.3.36+cu130.sm90", runtime="system").requires == ()


def test_two_digit_minor_label() -> None:
    assert Expectations.from_version("0.3.36+cu1310.sm90", recipes={}).cuda_major == 13


def test_arch_tokens_are_case_insensitive() -> None:
    assert archs.select("SM_86,Hopper", (), (), "13.0", native=[]) == (archs.ArchTarget("86"), archs.ArchTarget("90"))


def test_sdist_hash_must_look_like_a_hash() -> None:
    with pytest.raises(UsageError, match="64 hex digits"):
        _source(cpu_recipe(), resolve({"llama_cpp_python": "0.3.35", "sdist_sha256": "abc"}))
