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


def required(value: str) -> str:
    """The variable of ``${NAME:?message}``: compose refuses to start while NAME is unset or empty."""
    match = re.fullmatch(r"\$\{(\w+):\?([^}]+)\}", value)
    assert match, f"{value}: not a required variable"
    return match[1]


def test_the_ui_sends_the_key_the_api_requires_and_there_is_no_default_key(compose: dict[str, Any]) -> None:
    api, ui = compose["services"]["api"]["environment"], compose["services"]["ui"]["environment"]
    assert required(api["API_KEY"]) == required(ui["OPENAI_API_KEY"]) == "API_KEY"
    assert "llamawheel compose-env" in api["API_KEY"]  # what compose prints says what to do


def test_the_ui_reaches_the_api_on_its_port_and_waits_for_it(compose: dict[str, Any]) -> None:
    ui = compose["services"]["ui"]
    assert ui["environment"]["OPENAI_API_HOST"] == "http://api:8000"
    assert ui["environment"]["WAIT_HOSTS"] == "api:8000"
    assert "EXPOSE 8000" in CONTAINERFILE and "PORT=8000" in CONTAINERFILE


def test_only_the_ui_is_published_and_on_loopback_unless_opened(compose: dict[str, Any]) -> None:
    assert "ports" not in compose["services"]["api"]  # the UI reaches it on the compose network
    (port,) = compose["services"]["ui"]["ports"]
    assert port == "${UI_BIND:-127.0.0.1}:${UI_PORT:-3000}:3000"


def test_the_api_runs_with_nothing_it_does_not_need(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert api["cap_drop"] == ["ALL"] and api["security_opt"] == ["no-new-privileges:true"]
    assert api["init"] is True and api["read_only"] is True and "/tmp" in api["tmpfs"]
    assert api["restart"] == "on-failure:3"  # a start that fails (a full disk) is not retried forever
    assert compose["services"]["ui"]["restart"] == "on-failure:3"


def test_models_mount_at_models_and_the_gpu_is_reserved(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert any(re.search(r":/models(:ro)?$", v) for v in api["volumes"])
    (device,) = api["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert default(api["environment"]["N_CTX"]) == str(serve.MIN_CTX)
    assert default(api["environment"]["N_GPU_LAYERS"]) == "auto"
    assert default(api["environment"]["PARALLEL"]) == serve.DEFAULTS["PARALLEL"] == "4"


def test_the_ui_image_is_pinned_and_its_registry_can_be_a_mirror(compose: dict[str, Any]) -> None:
    image = compose["services"]["ui"]["image"]
    assert image == "${UI_IMAGE:-ghcr.io/getumbrel/llama-gpt-ui:1.0.1}"
    assert default(compose["services"]["api"]["image"]) == "localhost/llamawheel-api:cu130"


def test_compose_health_check_is_the_images(compose: dict[str, Any]) -> None:
    test = compose["services"]["api"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    assert "CMD [" + ", ".join(f'"{part}"' for part in test[1:]) + "]" in CONTAINERFILE
