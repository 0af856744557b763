"""The pieces of provenance and of the compose environment that need no network: reading pip's log, a Debian
root's packages from its signed lists, the env file a user already has, the name an image archive carries."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from llamawheel.cli import main
from llamawheel.image import compose
from llamawheel.image.engine import archive_ref
from llamawheel.mirror import profiles, provenance
from llamawheel.toolchain.buildroot import debs_fetched

PIP_LOG = """\
14:03:51,494 Fetching project page and analyzing links: https://index.example/simple/six/
14:03:51,525   Found link https://files.example/0e/six-1.15.0-py2.py3-none-any.whl#sha256=aa (from https://i/), x
14:03:51,529   Found link https://files.example/d9/six-1.16.0-py2.py3-none-any.whl#sha256=bb (from https://i/), x
14:03:51,529   Found link file:///srv/wheels/pip-25.0-py3-none-any.whl (from -f file:///srv/wheels), version: 25.0
14:03:51,568   Downloading six-1.16.0-py2.py3-none-any.whl (11 kB)
14:03:51,572 Saved {dest}/six-1.16.0-py2.py3-none-any.whl
14:03:51,580 File was already downloaded {dest}/pip-25.0-py3-none-any.whl
"""


def test_pips_log_says_which_url_each_resolved_file_came_from(tmp_path: Path) -> None:
    for name in ("six-1.16.0-py2.py3-none-any.whl", "pip-25.0-py3-none-any.whl", "other-1.0-py3-none-any.whl"):
        (tmp_path / name).write_bytes(name.encode())
    found = {f.path.name: f for f in provenance.from_pip_log(PIP_LOG.format(dest=tmp_path), tmp_path)}
    assert set(found) == {"six-1.16.0-py2.py3-none-any.whl", "pip-25.0-py3-none-any.whl"}  # not other-1.0
    assert found["six-1.16.0-py2.py3-none-any.whl"].url == "https://files.example/d9/six-1.16.0-py2.py3-none-any.whl"
    assert found["six-1.16.0-py2.py3-none-any.whl"].host == "files.example"
    assert found["pip-25.0-py3-none-any.whl"].url == "file:///srv/wheels/pip-25.0-py3-none-any.whl"
    assert all(len(f.sha256) == 64 and f.size > 0 for f in found.values())


def test_origins_are_kept_beside_cached_files(tmp_path: Path) -> None:
    wheel = tmp_path / "a-1.0-py3-none-any.whl"
    wheel.write_bytes(b"a")
    provenance.record_origins(tmp_path, [provenance.described(wheel, "https://files.example/a-1.0-py3-none-any.whl")])
    again = provenance.read_origins(tmp_path)[wheel.name]
    assert again.url == "https://files.example/a-1.0-py3-none-any.whl" and again.size == 1
    # a later pip log that no longer shows the link still knows where the file came from
    log = f"File was already downloaded {wheel}\n"
    (kept,) = provenance.from_pip_log(log, tmp_path)
    assert kept.url == again.url


def test_a_roots_packages_get_their_urls_from_the_signed_lists(tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "archive.example_debian_dists_bullseye_main_binary-amd64_Packages").write_text(
        "Package: libc6\nVersion: 2.31-13\nArchitecture: amd64\nFilename: pool/main/g/glibc/libc6_2.31-13_amd64.deb\n"
        "Size: 2800000\nSHA256: " + "1" * 64 + "\n\nPackage: libcrypt1\nVersion: 1:4.4.18-4\nArchitecture: amd64\n"
        "Filename: pool/main/libx/libxcrypt/libcrypt1_4.4.18-4_amd64.deb\nSize: 90000\nSHA256: " + "2" * 64 + "\n")
    status = tmp_path / "status"
    status.write_text("Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.31-13\n\n"
                      "Package: libcrypt1\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:4.4.18-4\n\n"
                      "Package: gone\nStatus: deinstall ok config-files\nArchitecture: all\nVersion: 1\n\n"
                      "Package: mystery\nStatus: install ok installed\nArchitecture: all\nVersion: 1\n")
    found = debs_fetched(tmp_path, ["deb http://archive.example/debian bullseye main"], status)
    assert found == [
        {"file": "libc6_2.31-13_amd64.deb", "sha256": "1" * 64, "size": 2800000,
         "url": "http://archive.example/debian/pool/main/g/glibc/libc6_2.31-13_amd64.deb"},
        {"file": "libcrypt1_4.4.18-4_amd64.deb", "sha256": "2" * 64, "size": 90000,  # the epoch is no part of it
         "url": "http://archive.example/debian/pool/main/libx/libxcrypt/libcrypt1_4.4.18-4_amd64.deb"},
        {"file": "mystery_1_all.deb", "url": "", "sha256": "", "size": 0},  # in no list: said so, not guessed
    ]


def test_compose_env_names_both_images_and_keeps_the_users_lines(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("# mine\nMODELS=/srv/models\nUI_IMAGE=old\nAPI_KEY=sk-mine\nUI_IMAGE=older\n")
    own = tmp_path / "corp.toml"
    own.write_text('ghcr = "ghcr.mirror.example/prefix"\n')
    values = compose.compose_env(profiles.load_profile(str(own)), "cpu", compose.read_env(env))
    compose.write_env(env, values)
    assert env.read_text() == ("# mine\nMODELS=/srv/models\n"
                               "UI_IMAGE=ghcr.mirror.example/prefix/getumbrel/llama-gpt-ui:1.0.1\n"
                               "API_KEY=sk-mine\nAPI_IMAGE=localhost/llamawheel-api:cpu\n")  # the user's key kept
    assert env.stat().st_mode & 0o777 == 0o600
    assert compose.compose_env(profiles.load_profile("default"), "cu130")["UI_IMAGE"] == (
        "ghcr.io/getumbrel/llama-gpt-ui:1.0.1")


def test_compose_env_makes_a_key_of_its_own_and_replaces_the_old_shared_one(tmp_path: Path) -> None:
    first = compose.compose_env(profiles.load_profile("default"), "cpu")["API_KEY"]
    second = compose.compose_env(profiles.load_profile("default"), "cpu", {"API_KEY": "sk-llamawheel"})["API_KEY"]
    assert first != second and first.startswith("sk-") and len(first) >= 40 and len(second) >= 40
    assert "API_KEY" not in compose.compose_env(profiles.load_profile("default"), "cpu", {"API_KEY": first})


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_an_image_archive_says_its_name(tmp_path: Path) -> None:
    oci = _tar(tmp_path / "oci.tar", {"index.json": json.dumps({"manifests": [{"annotations": {
        "org.opencontainers.image.ref.name": "localhost/llamawheel-api:cpu"}}]}).encode(), "oci-layout": b"{}"})
    docker = _tar(tmp_path / "docker.tar", {"manifest.json": json.dumps(
        [{"RepoTags": ["ghcr.io/getumbrel/llama-gpt-ui:1.0.1"]}]).encode()})
    nameless = _tar(tmp_path / "nameless.tar", {"index.json": b'{"manifests": [{}]}'})
    assert archive_ref(oci) == "localhost/llamawheel-api:cpu"
    assert archive_ref(docker) == "ghcr.io/getumbrel/llama-gpt-ui:1.0.1"
    assert archive_ref(nameless) == ""
    assert archive_ref(tmp_path / "missing.tar") == ""


def test_compose_env_command_writes_the_file_and_says_what_the_ui_comes_through(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "docker.env"
    own = tmp_path / "corp.toml"
    own.write_text('ghcr = "ghcr.mirror.example"\n')
    assert main(["compose-env", "--variant", "cpu", "--mirror", str(own), "--env-file", str(target)]) == 0
    written = compose.read_env(target)
    assert written.pop("API_KEY").startswith("sk-")
    assert written == {"API_IMAGE": "localhost/llamawheel-api:cpu",
                       "UI_IMAGE": "ghcr.mirror.example/getumbrel/llama-gpt-ui:1.0.1"}
    said = capsys.readouterr().out
    assert f"--env-file {target} up" in said and compose.read_env(target)["API_KEY"] not in said  # never printed
    key = compose.read_env(target)["API_KEY"]
    assert main(["compose-env", "--mirror", "tsinghua", "--env-file", str(target)]) == 0
    assert compose.read_env(target)["API_KEY"] == key  # a second run keeps the site's key
    said = capsys.readouterr().out
    assert "UI_IMAGE=ghcr.io/getumbrel/llama-gpt-ui:1.0.1" in said and "--ui-archive" in said  # no ghcr mirror
