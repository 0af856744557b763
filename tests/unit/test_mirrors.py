"""Mirror profiles: shipped ones load, their URLs reach pip (and only theirs), and a bad profile
fails naming the file and the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llamawheel.core import proc
from llamawheel.core.errors import MirrorError, NotOnMirror
from llamawheel.mirror import pipfetch, profiles

from .helpers import MIRRORS_DIR

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SHIPPED = sorted(MIRRORS_DIR.glob("*.toml"))
NAMED = [p for p in SHIPPED if p.stem != "default"]


def test_shipped_profiles_include_default_and_mirrors() -> None:
    assert {p.stem for p in SHIPPED} >= {"default", "aliyun", "tsinghua", "ustc"}
    assert set(profiles.available()) == {p.stem for p in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_profile_loads(path: Path) -> None:
    profile = profiles.load_profile(path.stem)
    assert profile.name == path.stem
    assert profile.path.name == path.name and profile.path.read_bytes() == path.read_bytes()  # this file, or its copy
    assert profile.description, f"{path.name} has no description for 'llamawheel mirrors list'"
    for key, url in profile.urls().items():
        if url and key not in ("dockerhub", "ghcr"):
            assert url.startswith(("http://", "https://", "file://")), (key, url)


def test_default_profile_changes_nothing_for_pip() -> None:
    profile = profiles.load_profile("default")
    assert profile.pip_env() == {}
    assert all(url == "" for url in profile.urls().values())


def test_no_name_means_default() -> None:
    assert profiles.load_profile(None).name == "default"


def test_no_name_follows_llamawheel_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMAWHEEL_MIRROR", "ustc")
    assert profiles.load_profile(None).name == "ustc"


def test_the_default_profile_keeps_pips_own_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "file:///srv/simple/")
    profile = profiles.load_profile("default")
    assert profile.pip_env() == {}
    assert profile.pypi_index() == "file:///srv/simple/"


def _pip_sees(env: dict[str, str]) -> dict[str, str]:
    """What a real pip reports as its configuration under ``env`` laid over this process's environment."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                         env=proc.child_env(env), check=True).stdout
    return {line.partition("=")[0].rpartition(".")[2]: line.partition("=")[2].strip("'") for line in out.splitlines()}


@pytest.mark.parametrize("path", NAMED, ids=[p.stem for p in NAMED])
def test_a_profiles_index_is_the_only_place_pip_looks(
    path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a user's own pip settings that would send pip elsewhere, in a config file and in the environment
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nextra-index-url = http://127.0.0.1:9/simple/\nfind-links = /srv/wheels\n"
                    f"constraint = {tmp_path / 'c.txt'}\ntimeout = 77\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.setenv("PIP_INDEX_URL", "file:///somewhere/else/")
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/elsewhere")
    monkeypatch.setenv("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt")
    pypi = tomllib.loads(path.read_text())["pypi"]
    assert pypi.startswith("https://")
    assert {"extra-index-url", "find-links", "constraint"} <= _pip_sees({}).keys()  # what the user set applies
    profiles._set_aside_notice.cache_clear()
    env = profiles.load_profile(path.stem).pip_env()
    seen = _pip_sees(env)
    assert seen.get("index-url") == pypi
    assert not {"extra-index-url", "find-links", "constraint"} & seen.keys(), seen
    # settings that only say how to connect are kept
    assert seen.get("cert") == "/etc/ssl/certs/ca-certificates.crt" and seen.get("timeout") == "77"
    said = capsys.readouterr().err
    assert "set aside" in said and "extra-index-url" in said and "find-links" in said


def test_tsinghua_index() -> None:
    assert profiles.load_profile("tsinghua").pip_env()["PIP_INDEX_URL"] == "https://pypi.tuna.tsinghua.edu.cn/simple/"


def test_cuda_apt_defaults_to_nvidias_repository_and_the_china_profiles_reach_one() -> None:
    assert profiles.load_profile("default").apt_url("cuda-apt") == profiles.NVIDIA_CUDA_APT
    for name in ("tsinghua", "ustc", "aliyun"):
        url = profiles.load_profile(name).apt_url("cuda-apt")
        assert url and url != profiles.NVIDIA_CUDA_APT, name  # NVIDIA's China CDN or the operator's mirror


def test_the_old_registry_key_says_what_replaced_it(tmp_path: Path) -> None:
    old = tmp_path / "old.toml"
    old.write_text('registry = "hub.example.internal"\n')
    with pytest.raises(MirrorError) as info:
        profiles.load_profile(str(old))
    assert "'dockerhub'" in info.value.message and "'ghcr'" in info.value.message and "old.toml" in info.value.message


def test_a_registry_mirror_with_a_scheme_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('ghcr = "https://ghcr.example.internal/"\n')
    with pytest.raises(MirrorError) as info:
        profiles.load_profile(str(bad))
    assert "ghcr" in info.value.message and "host/prefix" in info.value.message


def test_unknown_profile_suggests_the_close_name() -> None:
    with pytest.raises(MirrorError) as info:
        profiles.load_profile("tsinghau")
    assert info.value.exit_code == 4
    assert "unknown mirror profile 'tsinghau'" in info.value.message
    assert 'did you mean "tsinghua"?' in info.value.message
    assert info.value.tip is not None
    for name in ("default", "aliyun", "tsinghua", "ustc"):
        assert name in info.value.tip


def test_user_profile_by_path(tmp_path: Path) -> None:
    path = tmp_path / "corp.toml"
    path.write_text('description = "our proxy"\npypi = "https://pypi.corp.example/simple/"\n'
                    'dockerhub = "registry.corp.example/hub"\nghcr = "registry.corp.example/ghcr"\n')
    profile = profiles.load_profile(str(path))
    assert profile.name == "corp"
    env = profile.pip_env()
    assert env["PIP_INDEX_URL"] == "https://pypi.corp.example/simple/"
    assert env["PIP_CONFIG_FILE"] == os.devnull  # the user's pip files are set aside
    # a registry mirror is a host (and prefix), not a URL
    assert profile.image("dockerhub", "library/debian:bookworm-slim") == (
        "registry.corp.example/hub/library/debian:bookworm-slim")
    assert profile.image("ghcr", "getumbrel/llama-gpt-ui:1.0.1") == (
        "registry.corp.example/ghcr/getumbrel/llama-gpt-ui:1.0.1")


def test_user_profile_path_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nosuch.toml"
    with pytest.raises(MirrorError, match="does not exist") as info:
        profiles.load_profile(str(missing))
    assert str(missing) in info.value.message


def _profile_error(path: Path, text: str) -> str:
    """The message loading a profile holding ``text`` fails with; it always names the file."""
    path.write_text(text)
    with pytest.raises(MirrorError) as info:
        profiles.load_profile(str(path))
    assert str(path) in info.value.message
    return info.value.message


def test_profile_with_non_url_value_names_file_and_key(tmp_path: Path) -> None:
    message = _profile_error(tmp_path / "bad.toml", 'debian-security = "profiles.example.com/debian-security"\n')
    assert "key 'debian-security'" in message
    assert "is not an http(s) or file URL" in message


def test_profile_with_unknown_key_names_file_key_and_suggestion(tmp_path: Path) -> None:
    message = _profile_error(tmp_path / "typo.toml", 'pipy = "https://pypi.example/simple/"\n')
    assert "key 'pipy'" in message
    assert 'did you mean "pypi"?' in message


def test_profile_value_of_wrong_type(tmp_path: Path) -> None:
    path = tmp_path / "typed.toml"
    path.write_text("pypi = 8080\n")
    with pytest.raises(MirrorError, match=r"key 'pypi': must be a string, not int"):
        profiles.load_profile(str(path))


def test_a_pin_the_index_does_not_offer_is_explained_with_pips_command_and_last_lines(tmp_path: Path) -> None:
    index = tmp_path / "simple"
    index.mkdir()
    own = tmp_path / "empty.toml"
    own.write_text(f'description = "an empty index"\npypi = "{index.as_uri()}/"\n')
    with pytest.raises(NotOnMirror) as failed:
        pipfetch.download([f"diskcache==5.6.3 --hash=sha256:{'0' * 64}"], tmp_path / "dl",
                          profiles.load_profile(str(own)), binary=True)
    assert failed.value.exit_code == 5
    message = failed.value.message
    assert message.startswith(f"{index.as_uri()}/ does not offer a pinned package\ncommand: {sys.executable} -m pip "
                              "download --no-deps --require-hashes ")
    assert "\nreturn code: 1\noutput (last lines):\n" in message
    assert "\n    ERROR: No matching distribution found for diskcache==5.6.3" in message
