"""Credentials never reach what llamawheel writes: `redact` on URLs, command lines and pip's log lines, and
the writers that use it (the manifest, the command echo and the log, provenance records, mirror messages)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from llamawheel.core import log, proc
from llamawheel.core.errors import DownloadError
from llamawheel.core.redact import redact, redact_tree
from llamawheel.mirror import probe, profiles, provenance
from llamawheel.pipeline import manifest

SECRET = "s3cr3t-token"


@pytest.mark.parametrize(("text", "shown"), [
    ("https://user:s3cr3t-token@host.example/simple", "https://***@host.example/simple"),
    ("https://s3cr3t-token@host.example/simple/", "https://***@host.example/simple/"),
    ("http://user:p%40ss@127.0.0.1:8080/simple", "http://***@127.0.0.1:8080/simple"),
    ("redis://:s3cr3t-token@cache:6379", "redis://***@cache:6379"),
    ("https://host.example/f.whl?token=s3cr3t-token", "https://host.example/f.whl?token=***"),
    ("https://host.example/f.whl?a=1&access_token=s3cr3t-token&b=2",
     "https://host.example/f.whl?a=1&access_token=***&b=2"),
    ("https://b.s3.example/f.whl?X-Amz-Algorithm=AWS4&X-Amz-Credential=AKIA/s3&X-Amz-Signature=abc123#sha256=00ff",
     "https://b.s3.example/f.whl?X-Amz-Algorithm=AWS4&X-Amz-Credential=***&X-Amz-Signature=***#sha256=00ff"),
    ("https://acct.blob.example/c/f.whl?sv=2022&sig=AbC%2Bd", "https://acct.blob.example/c/f.whl?sv=2022&sig=***"),
    ("https://gitlab.example/api/v4/projects/1/packages/pypi/simple?private_token=s3cr3t-token",
     "https://gitlab.example/api/v4/projects/1/packages/pypi/simple?private_token=***"),
])
def test_a_url_keeps_its_place_and_loses_its_credentials(text: str, shown: str) -> None:
    assert redact(text) == shown
    assert redact(shown) == shown  # applying it again changes nothing


@pytest.mark.parametrize("text", [
    "https://host.example/simple/llama-cpp-python/",
    "https://host.example/f-1.0-py3-none-any.whl#sha256=" + "0" * 64,
    "file:///srv/wheels/cu130/simple",
    "pip install --index-url http://127.0.0.1:8080/cpu/simple \"llama-cpp-python[server]\"",
    "git@github.com:owner/repo.git",
    "user@example.com wrote: ok",
    "CMAKE_ARGS=-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=86",
    "Collecting diskcache>=5.6.1",
])
def test_text_without_credentials_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_a_command_line_and_pip_log_lines() -> None:
    cmd = ["pip", "download", "--index-url", f"https://u:{SECRET}@mirror.example/simple",
           "--extra-index-url", f"https://mirror.example/extra?token={SECRET}", "diskcache"]
    shown = proc.echo(cmd)
    assert SECRET not in shown
    assert shown == ("pip download --index-url 'https://***@mirror.example/simple' "
                     "--extra-index-url 'https://mirror.example/extra?token=***' diskcache")
    line = (f"  Found link https://files.example/d/diskcache-5.6.3-py3-none-any.whl?token={SECRET}#sha256=ab (from "
            f"https://user:****@mirror.example/simple/diskcache/), version: 5.6.3")
    assert SECRET not in redact(line)
    assert "diskcache-5.6.3-py3-none-any.whl?token=***#sha256=ab" in redact(line)
    env_line = f"PIP_INDEX_URL=https://user:{SECRET}@mirror.example/simple pip install x"
    assert redact(env_line) == "PIP_INDEX_URL=https://***@mirror.example/simple pip install x"


def test_redact_tree_reaches_every_string() -> None:
    url = f"https://u:{SECRET}@mirror.example/simple"
    data = {"mirror": {"pypi": url}, "fetched": [{"url": url + "/x.whl", "size": 3}], "ok": True, "n": None,
            url: (url, 1.5)}
    assert SECRET not in json.dumps(redact_tree(data))
    assert redact_tree(data)["fetched"][0] == {"url": "https://***@mirror.example/simple/x.whl", "size": 3}
    assert redact_tree(data)["https://***@mirror.example/simple"] == ("https://***@mirror.example/simple", 1.5)


def test_the_manifest_writer_redacts_every_string(tmp_path: Path) -> None:
    wheel = tmp_path / "x-1.0-py3-none-any.whl"
    wheel.write_bytes(b"not a real wheel")
    url = f"https://u:{SECRET}@mirror.example/simple"
    data = manifest.compose(wheel, {"mirror": {"name": "mine", "pypi": url}},
                            {"fetched": {"source": [{"url": f"https://files.example/x.tar.gz?sig={SECRET}"}]}})
    written = manifest.write(wheel, data)
    text = written.read_text()
    assert SECRET not in text
    assert json.loads(text)["mirror"] == {"name": "mine", "pypi": "https://***@mirror.example/simple"}


def test_the_log_and_the_command_echo_redact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log.info(f"fetching from https://u:{SECRET}@mirror.example/simple")
    log.warn(f"slow: https://mirror.example/simple?access_token={SECRET}")
    log_file = tmp_path / "build.log"
    script = f"print('Looking in https://u:{SECRET}@mirror.example/simple'); raise SystemExit(3)"
    with pytest.raises(DownloadError) as failed:
        proc.stream([sys.executable, "-c", script, f"https://u:{SECRET}@mirror.example/simple"], error=DownloadError,
                    what="pip failed", log_file=log_file)
    err = capsys.readouterr().err
    assert "https://***@mirror.example/simple" in err and "access_token=***" in err
    assert SECRET not in err
    assert SECRET not in log_file.read_text()
    assert f"$ {sys.executable} -c " in log_file.read_text()
    assert "'https://***@mirror.example/simple'\nLooking in https://***@mirror.example/simple\n" in (
        log_file.read_text())  # the command's last argument, then its output
    assert SECRET not in failed.value.message and SECRET not in str(failed.value)


def test_provenance_records_hold_no_credentials(tmp_path: Path) -> None:
    (tmp_path / "d-1.0-py3-none-any.whl").write_bytes(b"wheel")
    pip_log = (f"Found link https://files.example/d-1.0-py3-none-any.whl?X-Amz-Signature={SECRET} (from "
               "https://mirror.example/simple/d/)\nSaved ./d-1.0-py3-none-any.whl\n")
    fetched = provenance.from_pip_log(pip_log, tmp_path)
    assert [f.url for f in fetched] == ["https://files.example/d-1.0-py3-none-any.whl?X-Amz-Signature=***"]
    assert fetched[0].host == "files.example"
    provenance.record_origins(tmp_path, [provenance.described(tmp_path / "d-1.0-py3-none-any.whl",
                                                               f"https://u:{SECRET}@files.example/d.whl")])
    assert SECRET not in (tmp_path / provenance.ORIGINS).read_text()


def test_a_profiles_index_is_shown_without_its_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "private.toml"
    path.write_text(f'description = "private"\npypi = "https://u:{SECRET}@mirror.example/simple"\n')
    profile = profiles.load_profile(str(path))
    assert profile.pypi_index() == "https://***@mirror.example/simple"
    assert profile.pip_env()["PIP_INDEX_URL"] == f"https://u:{SECRET}@mirror.example/simple"  # pip needs it
    monkeypatch.setenv("PIP_INDEX_URL", f"https://u:{SECRET}@other.example/simple")
    assert profiles.load_profile("default").pypi_index() == "https://***@other.example/simple"


def test_a_probe_shows_its_url_and_error_without_credentials() -> None:
    need = probe.Need("pypi page", "pypi", "diskcache/")
    url = f"http://u:{SECRET}@127.0.0.1:9/simple"
    result = probe.Probe(need, url, False, f"unreachable: {url} refused", 0.1)
    assert SECRET not in result.url + result.detail
    assert result.url == "http://***@127.0.0.1:9/simple"


def test_escaped_shows_control_characters() -> None:
    assert log.escaped("GET /\x1b[31mred\x1b[0m HTTP/1.1") == "GET /\\x1b[31mred\\x1b[0m HTTP/1.1"
    assert log.escaped("a\r\nb\x00\x7f\x9b\u202e") == "a\\x0d\\x0ab\\x00\\x7f\\x9b\\u202e"
    assert log.escaped("C:\\x1b") == "C:\\\\x1b"
    assert log.escaped("/cpu/simple/llama-cpp-python/ é") == "/cpu/simple/llama-cpp-python/ é"
