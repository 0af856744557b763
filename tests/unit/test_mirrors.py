"""Mirror profiles: shipped ones load, their URLs reach pip and uv, and a bad profile
fails naming the file and the key."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from llamawheel.core.errors import MirrorError
from llamawheel.mirror import profiles

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
    assert profile.path.resolve() == path.resolve()
    assert profile.description, f"{path.name} has no description for 'llamawheel mirrors list'"
    for key, url in profile.urls().items():
        if url and key != "registry":
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


def test_default_profile_uv_follows_pip_index_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_INDEX_URL", "file:///srv/simple/")
    profile = profiles.load_profile("default")
    assert profile.pip_env() == {}
    assert profile.uv_env() == {"UV_DEFAULT_INDEX": "file:///srv/simple/"}


@pytest.mark.parametrize("path", NAMED, ids=[p.stem for p in NAMED])
def test_named_profile_points_pip_and_uv_at_its_index(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the profile's own index wins over whatever pip is configured with
    monkeypatch.setenv("PIP_INDEX_URL", "file:///somewhere/else/")
    pypi = tomllib.loads(path.read_text())["pypi"]
    assert pypi.startswith("https://")
    profile = profiles.load_profile(path.stem)
    assert profile.pip_env() == {"PIP_INDEX_URL": pypi}
    assert profile.uv_env() == {"UV_DEFAULT_INDEX": pypi}


def test_tsinghua_index() -> None:
    assert profiles.load_profile("tsinghua").pip_env() == {"PIP_INDEX_URL": "https://pypi.tuna.tsinghua.edu.cn/simple/"}


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
                    'registry = "registry.corp.example/hub"\n')
    profile = profiles.load_profile(str(path))
    assert profile.name == "corp"
    assert profile.pip_env() == {"PIP_INDEX_URL": "https://pypi.corp.example/simple/"}
    assert profile.uv_env() == {"UV_DEFAULT_INDEX": "https://pypi.corp.example/simple/"}
    assert profile.registry == "registry.corp.example/hub"  # a registry is a host, not a URL


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
