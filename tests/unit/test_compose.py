"""docker/compose.yaml against what the stock llama-gpt UI needs (llama-gpt-contract.md) and what the API
image serves: a mismatch here is a UI that spins forever or never reaches the API."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from llamawheel.runtime import serve

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = (ROOT / "docker" / "Containerfile").read_text()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    return data


def default(value: str) -> str:
    """The value compose gives ``${NAME:-default}`` when NAME is unset."""
    match = re.fullmatch(r"\$\{(\w+):-([^}]*)\}", value)
    assert match, value
    return match[2]


def variable(value: str) -> str:
    match = re.search(r"\$\{(\w+)", value)
    assert match, value
    return match[1]


def test_the_ui_asks_for_a_model_id_the_api_serves(compose: dict[str, Any]) -> None:
    api, ui = compose["services"]["api"]["environment"], compose["services"]["ui"]["environment"]
    assert default(api["MODEL_ALIAS"]) == default(ui["DEFAULT_MODEL"]) == serve.DEFAULT_ALIAS
    assert variable(api["MODEL_ALIAS"]) == variable(ui["DEFAULT_MODEL"])  # one setting moves both
    assert serve.DEFAULT_ALIAS in serve.UI_MODEL_IDS[:3]  # the ids UI 1.0.1 lists


def test_the_ui_sends_the_key_the_api_requires(compose: dict[str, Any]) -> None:
    api, ui = compose["services"]["api"]["environment"], compose["services"]["ui"]["environment"]
    assert variable(api["API_KEY"]) == variable(ui["OPENAI_API_KEY"])
    assert default(ui["OPENAI_API_KEY"]) != ""  # an empty key: the UI never asks for models


def test_the_ui_reaches_the_api_on_its_port_and_waits_for_it(compose: dict[str, Any]) -> None:
    ui = compose["services"]["ui"]
    assert ui["environment"]["OPENAI_API_HOST"] == "http://api:8000"
    assert ui["environment"]["WAIT_HOSTS"] == "api:8000"
    assert "EXPOSE 8000" in CONTAINERFILE and "PORT=8000" in CONTAINERFILE
    assert compose["services"]["api"]["ports"] == ["3001:8000"]  # llama-gpt's own mapping


def test_models_mount_at_models_and_the_gpu_is_reserved(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert any(re.search(r":/models(:ro)?$", v) for v in api["volumes"])
    (device,) = api["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert default(api["environment"]["N_CTX"]) == str(serve.MIN_CTX)
    assert default(api["environment"]["N_GPU_LAYERS"]) == "auto"


def test_the_ui_image_is_pinned_and_its_registry_can_be_a_mirror(compose: dict[str, Any]) -> None:
    image = compose["services"]["ui"]["image"]
    assert image == "${UI_IMAGE:-ghcr.io/getumbrel/llama-gpt-ui:1.0.1}"
    assert default(compose["services"]["api"]["image"]) == "localhost/llamawheel-api:cu130"


def test_compose_health_check_is_the_images(compose: dict[str, Any]) -> None:
    test = compose["services"]["api"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert "CMD [" + ", ".join(f'"{part}"' for part in test[1:]) + "]" in CONTAINERFILE
