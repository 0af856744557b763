from __future__ import annotations

from pathlib import Path

import pytest

INTEGRATION = Path(__file__).parent / "integration"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow", action="store_true", default=False,
        help="also run tests marked slow (full llama-cpp-python CUDA builds, for x86-64 and aarch64: tens of minutes "
             "on 2 cores each; the arm64 image's chat under QEMU)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Everything under tests/integration is marked `integration` (real pip, apt, compilers, servers), so that
    # `-m integration` and `-m "not integration"` select what they say.
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.integration)
    if config.getoption("--run-slow"):
        return
    for item in items:
        if "slow" in item.keywords:  # the reason says what the test is (its docstring's first sentence)
            doc = " ".join((getattr(item.function, "__doc__", None) or "a full llama-cpp-python build.").split())
            what = doc.split(". ")[0].rstrip(".")
            item.add_marker(pytest.mark.skip(reason=f"slow ({what}); run with --run-slow (nox -s integration -- "
                                                    "--run-slow)"))
