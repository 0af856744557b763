from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow", action="store_true", default=False,
        help="also run tests marked slow (a full llama-cpp-python CUDA build: tens of minutes on 2 cores)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(
        reason="slow: a full llama-cpp-python build; run with --run-slow (nox -s tests -- --run-slow)"
    )
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
