from __future__ import annotations

from pathlib import Path

import pytest

INTEGRATION = Path(__file__).parent / "integration"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow", action="store_true", default=False,
        help="also run tests marked slow (a full llama-cpp-python CUDA build: tens of minutes on 2 cores)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Everything under tests/integration is marked `integration` (real pip, apt, compilers, servers), so that
    # `-m integration` and `-m "not integration"` select what they say.
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.integration)
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(
        reason="slow: a full llama-cpp-python build; run with --run-slow (nox -s integration -- --run-slow)"
    )
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
