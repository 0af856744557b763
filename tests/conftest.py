from __future__ import annotations

from pathlib import Path

import pytest

from .gpu import host_gpu

INTEGRATION = Path(__file__).parent / "integration"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow", action="store_true", default=False,
        help="also run tests marked slow (full llama-cpp-python CUDA builds, for x86-64 and aarch64: tens of minutes "
             "on 2 cores each; the arm64 image's chat under QEMU)",
    )


def _what(item: pytest.Item, default: str) -> str:
    """What a test is, for a skip reason: its docstring's first sentence, else ``default``."""
    doc = " ".join((getattr(getattr(item, "function", None), "__doc__", None) or "").split())
    return doc.split(". ")[0].rstrip(".") or default


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Everything under tests/integration is marked `integration` (real pip, apt, compilers, servers), here and
    # nowhere else, so that `-m integration` and `-m "not integration"` select what they say. A bare `pytest`
    # does not collect them at all (testpaths in pyproject.toml): `pytest tests/integration` (nox -s integration).
    run_slow = config.getoption("--run-slow")
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("gpu") and not host_gpu():
            what = _what(item, "this test")
            what = what[:1].lower() + what[1:] if what[1:2].islower() else what  # "The chat" -> "the chat"
            item.add_marker(pytest.mark.skip(reason=f"no NVIDIA GPU and driver on this machine: {what} runs only "
                                                    "where one is (CI has none)"))
        if item.get_closest_marker("slow") and not run_slow:  # the reason says what the test is
            item.add_marker(pytest.mark.skip(reason=f"slow ({_what(item, 'a full llama-cpp-python build')}); run with "
                                                    "--run-slow (nox -s integration -- --run-slow)"))
