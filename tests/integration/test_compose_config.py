"""docker/compose.yaml as docker compose itself renders it: Compose v2 (Debian trixie's ``docker-compose``
package, fetched from the Debian mirror into a private apt state and unpacked; no engine is needed to render).
What a site gets from the README's commands: nothing published beyond loopback, no start without a key."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from llamawheel.mirror import profiles
from llamawheel.recipe.model import AptSource, DebPackage
from llamawheel.toolchain.deb import AptSession, extract, repo_url

from .conftest import llamawheel

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
TRIXIE = AptSource("debian", "trixie", "/usr/share/keyrings/debian-archive-keyring.gpg", ("main",))


@pytest.fixture(scope="module")
def compose_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Compose v2 from Debian trixie (2.26), through this machine's Debian mirror."""
    work = tmp_path_factory.mktemp("compose-bin")
    session = AptSession(work / "apt", repo_url(TRIXIE, profiles.load_profile(None)), TRIXIE)
    session.update()
    fetched = session.download(session.resolve((DebPackage("docker-compose", "2.*"),)), work / "debs")
    extract([f.path for f in fetched], work / "tree")
    binary = work / "tree" / "usr" / "libexec" / "docker" / "cli-plugins" / "docker-compose"
    assert binary.is_file(), sorted(str(p) for p in (work / "tree").rglob("*"))[:20]
    return binary


def render(compose_bin: Path, tmp_path: Path, env: dict[str, str], *files: str) -> subprocess.CompletedProcess[str]:
    """``docker compose config --format json`` with only ``env`` set (as a fresh shell without docker/.env)."""
    args = [str(compose_bin)]
    for name in files or ("compose.yaml",):
        args += ["-f", str(DOCKER / name)]
    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env}
    return subprocess.run([*args, "--project-directory", str(DOCKER), "config", "--format", "json"],
                          capture_output=True, text=True, env=clean, cwd=tmp_path, timeout=120)


def published(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(name, p.get("host_ip", "0.0.0.0"), str(p.get("published")))
            for name, service in config["services"].items() for p in service.get("ports", [])]


def test_without_a_key_compose_refuses_to_start(compose_bin: Path, tmp_path: Path) -> None:
    result = render(compose_bin, tmp_path, {})
    assert result.returncode != 0
    assert "required variable API_KEY is missing a value" in result.stderr
    assert "llamawheel compose-env" in result.stderr


@pytest.mark.parametrize("files", [("compose.yaml",), ("compose.yaml", "compose.cpu.yaml")])
def test_with_a_key_only_the_ui_is_published_and_on_loopback(compose_bin: Path, tmp_path: Path,
                                                            files: tuple[str, ...]) -> None:
    result = render(compose_bin, tmp_path, {"API_KEY": "sk-" + "x" * 40}, *files)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert published(config) == [("ui", "127.0.0.1", "3000")]
    api = config["services"]["api"]
    assert api["cap_drop"] == ["ALL"] and api["read_only"] is True and api["init"] is True
    assert api["environment"]["API_KEY"] == config["services"]["ui"]["environment"]["OPENAI_API_KEY"]


def test_the_documented_variable_opens_the_ui(compose_bin: Path, tmp_path: Path) -> None:
    result = render(compose_bin, tmp_path, {"API_KEY": "sk-" + "x" * 40, "UI_BIND": "0.0.0.0", "UI_PORT": "8080"})
    assert result.returncode == 0, result.stderr
    assert published(json.loads(result.stdout)) == [("ui", "0.0.0.0", "8080")]


def test_the_env_file_compose_env_writes_is_enough(compose_bin: Path, tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    made = llamawheel("compose-env", "--variant", "cpu", "--env-file", str(env_file))
    assert made.returncode == 0, made.stderr
    result = render(compose_bin, tmp_path, {}, "compose.yaml")
    assert result.returncode != 0  # no key in the environment ...
    args = [str(compose_bin), "-f", str(DOCKER / "compose.yaml"), "--env-file", str(env_file), "config",
            "--format", "json"]
    result = subprocess.run(args, capture_output=True, text=True, env={"PATH": os.environ["PATH"],
                                                                       "HOME": str(tmp_path)}, timeout=120)
    assert result.returncode == 0, result.stderr  # ... and the file supplies one
    config = json.loads(result.stdout)
    key = config["services"]["api"]["environment"]["API_KEY"]
    assert key.startswith("sk-") and len(key) >= 40 and key not in made.stdout
    assert config["services"]["api"]["image"] == "localhost/llamawheel-api:cpu"
