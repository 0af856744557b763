"""The compile cache's options (no tool is installed here: the integration tests build through real ones): which
stores a URL names, what each tool is told, credentials kept out of URLs, arguments and messages, and the counts
read from each tool's own report."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from llamawheel.building import cache, cache_stats, cache_stores, farm, options
from llamawheel.core import fileio, proc
from llamawheel.core.compat import tomllib
from llamawheel.core.errors import BuildError, ToolchainError, UsageError


def test_a_redis_url_names_host_port_and_database() -> None:
    remote = cache_stores.parse_remote("redis://10.0.0.5:6380/3")
    assert (remote.backend, remote.endpoint) == ("redis", "redis://10.0.0.5:6380")
    env = {"SCCACHE_REDIS_PASSWORD": "pw", "UNRELATED": "x"}
    assert remote.settings("sccache", env) == {"SCCACHE_REDIS_ENDPOINT": "redis://10.0.0.5:6380",
                                               "SCCACHE_REDIS_DB": "3", "SCCACHE_REDIS_PASSWORD": "pw"}
    assert remote.ccache_url(env) == "redis://default:pw@10.0.0.5:6380/3"  # ccache AUTHs only with a user
    assert remote.ccache_url({"SCCACHE_REDIS_USERNAME": "u", "SCCACHE_REDIS_PASSWORD": "p@ss/word"}) == \
        "redis://u:p%40ss%2Fword@10.0.0.5:6380/3"


def test_webdav_s3_and_github_actions_stores() -> None:
    dav = cache_stores.parse_remote("webdav+https://cache.example.org/llama/")
    assert (dav.backend, dav.endpoint) == ("webdav", "https://cache.example.org/llama/")
    assert cache_stores.parse_remote("http://10.1.1.1:8080/dav").endpoint == "http://10.1.1.1:8080/dav"
    assert dav.settings("sccache", {"SCCACHE_WEBDAV_TOKEN": "t"}) == {
        "SCCACHE_WEBDAV_ENDPOINT": "https://cache.example.org/llama/", "SCCACHE_WEBDAV_TOKEN": "t"}
    assert dav.ccache_url({"SCCACHE_WEBDAV_TOKEN": "t"}) == "https://cache.example.org/llama/|bearer-token=t"
    s3 = cache_stores.parse_remote("s3://wheels-cache/llamawheel")
    assert s3.settings("sccache", {"SCCACHE_ENDPOINT": "minio:9000", "AWS_SECRET_ACCESS_KEY": "k"}) == {
        "SCCACHE_BUCKET": "wheels-cache", "SCCACHE_S3_KEY_PREFIX": "llamawheel", "SCCACHE_ENDPOINT": "minio:9000",
        "AWS_SECRET_ACCESS_KEY": "k"}
    gha = cache_stores.parse_remote("gha")
    assert gha.settings("sccache", {"ACTIONS_RUNTIME_TOKEN": "r"}) == {"SCCACHE_GHA_ENABLED": "on",
                                                                      "ACTIONS_RUNTIME_TOKEN": "r"}
    with pytest.raises(UsageError, match="ccache cannot use a s3 store"):
        s3.ccache_url({})


def test_credentials_in_the_url_are_refused_without_being_repeated() -> None:
    with pytest.raises(UsageError) as err:
        cache_stores.parse_remote("redis://admin:hunter2@10.0.0.5:6379")
    text = str(err.value) + str(err.value.tip)
    assert "hunter2" not in text and "admin" not in text
    assert "SCCACHE_REDIS_PASSWORD" in text and "recorded in every wheel's manifest" in text


def test_an_unknown_store_lists_the_known_ones() -> None:
    with pytest.raises(UsageError, match="unknown kind of store 'redi'") as err:
        cache_stores.parse_remote("redi://10.0.0.5")
    assert 'did you mean "redis"' in str(err.value) and "s3://BUCKET" in str(err.value.tip)
    with pytest.raises(UsageError, match="not a URL llamawheel knows"):
        cache_stores.parse_remote("10.0.0.5:6379")


def test_options_check_the_cache_before_anything_is_downloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cache_stores.FARM_TOKEN, raising=False)
    assert options.resolve({}).compile_cache is None  # None: the build takes the default
    monkeypatch.setenv("LLAMAWHEEL_COMPILE_CACHE", "scache")
    with pytest.raises(UsageError, match="--compile-cache scache: choose one of sccache, ccache, none"):
        options.resolve({})
    monkeypatch.setenv("LLAMAWHEEL_COMPILE_CACHE", "none")
    with pytest.raises(UsageError, match="none cannot use a remote store"):
        options.resolve({"compile_cache_url": "redis://h"})
    with pytest.raises(UsageError, match="LLAMAWHEEL_FARM_TOKEN is not set"):
        options.resolve({"compile_cache": "sccache", "farm": "http://10.0.0.1:10600"})
    monkeypatch.setenv(cache_stores.FARM_TOKEN, "tok")
    with pytest.raises(UsageError, match="--farm needs --compile-cache sccache"):
        options.resolve({"compile_cache": "ccache", "farm": "http://10.0.0.1:10600"})
    with pytest.raises(UsageError, match="ccache cannot use a gha store"):
        options.resolve({"compile_cache": "ccache", "compile_cache_url": "gha"})
    opts = options.resolve({"compile_cache": "sccache", "farm": "http://10.0.0.1:10600/"})
    assert cache_stores.farm_from(opts.farm, os.environ) == cache_stores.Farm("http://10.0.0.1:10600", "tok")
    monkeypatch.delenv("LLAMAWHEEL_COMPILE_CACHE")
    options.resolve({"farm": "http://10.0.0.1:10600/"})  # no tool named: the farm's own, not a refusal
    options.resolve({"compile_cache_url": "gha"})


def test_the_default_tool_is_ccache_unless_only_sccache_can_do_the_job() -> None:
    assert cache.default_for(None, None) == "ccache"
    assert cache.default_for("redis://10.0.0.5/2", None) == "ccache"
    assert cache.default_for("webdav+https://cache.lan/llama", None) == "ccache"
    assert cache.default_for("s3://bucket/prefix", None) == "sccache"
    assert cache.default_for("gha", None) == "sccache"
    assert cache.default_for(None, "http://10.0.0.1:10600") == "sccache"


def test_settings_files_are_private_and_read_back_exactly_by_a_shell(tmp_path: Path) -> None:
    tricky = "it's $HOME `id` \"quoted\" \\ end"
    path = tmp_path / "s.env"
    fileio.write_private(path, cache_stores.settings_text({"SCCACHE_REDIS_PASSWORD": tricky, "B": "plain"}))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    out = subprocess.run(["sh", "-c", f'set -a; . {path}; printf "%s|%s" "$SCCACHE_REDIS_PASSWORD" "$B"'],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}).stdout
    assert out == f"{tricky}|plain"


def test_the_manifest_names_tool_store_and_counts_but_no_credential() -> None:
    cc = cache.CompileCache("sccache", Path("/x"), Path("/s"), cache_stores.parse_remote("redis://10.0.0.5:6379"),
                            cache_stores.Farm("http://10.0.0.1:10600", "secret-token"))
    fields = cc.manifest_fields(cache_stats.Stats("sccache", hits=3, misses=1, remote_hits=2))
    assert fields["tool"] == "sccache 0.16.0" and fields["backend"] == "local+redis"
    assert fields["remote"] == "redis://10.0.0.5:6379" and fields["farm"] == "http://10.0.0.1:10600"
    assert (fields["hits"], fields["misses"], fields["remote_hits"]) == (3, 1, 2)
    assert "secret-token" not in repr(fields) and "secret-token" not in repr(cc)
    assert cache.CompileCache("none").manifest_fields(None) == {"tool": "none"}


def test_sccache_counts_split_local_and_remote_hits() -> None:
    """The shape of ``sccache --show-stats --stats-format=json`` (0.16) with a disk + redis chain."""
    report = {"stats": {
        "requests_not_cacheable": 2,
        "cache_hits": {"counts": {"C/C++": 10, "CUBIN": 4}}, "cache_misses": {"counts": {"CUDA": 1}},
        "dist_compiles": {"127.0.0.1:10501": 3, "127.0.0.1:10502": 2},
        "multi_level": [{"name": "L0 (disk)", "hits": 5}, {"name": "L1 (redis)", "hits": 9}]}}
    stats = cache_stats.sccache_stats(report)
    assert (stats.hits, stats.misses, stats.remote_hits, stats.remote_compiles) == (14, 1, 9, 5)
    assert stats.by_language == {"C/C++": [10, 0], "CUBIN": [4, 0], "CUDA": [0, 1]}
    assert stats.describe() == ("sccache: 14 of 15 compiles served from cache (93%, 9 from the remote store); "
                                "5 compiled on the farm")


def test_ccache_counts_are_the_difference_over_the_build() -> None:
    before = cache_stats.ccache_stats("direct_cache_hit\t5\ncache_miss\t7\nremote_storage_hit\t1\n"
                                      "stats_updated_timestamp\t9")
    after = cache_stats.ccache_stats("direct_cache_hit\t9\npreprocessed_cache_hit\t1\ncache_miss\t8\n"
                                     "remote_storage_hit\t4\nremote_storage_error\t2")
    stats = cache_stats.ccache_delta(before, after)
    assert (stats.hits, stats.misses, stats.remote_hits, stats.remote_errors) == (5, 1, 3, 2)
    assert stats.describe().endswith("the remote store failed 2 time(s) (those compiles used the local store)")


def test_counts_a_tool_cannot_report_stop_the_build_instead_of_reading_as_zero(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """(An empty answer read as no hits, and the build's counts as negative.)"""
    monkeypatch.setenv("CCACHE_DIR", "/from/the/user")
    print_stats = 'echo "cache_miss\t${CCACHE_DIR-unset}"; echo "$CCACHE_CONFIGPATH"'
    overlay = {"CCACHE_DIR": proc.UNSET, "CCACHE_CONFIGPATH": "/build/c"}  # laid over this process's environment
    assert cache_stats.run_quiet(["sh", "-c", print_stats], overlay) == "cache_miss\tunset\n/build/c\n"
    with pytest.raises(BuildError) as failed:
        cache_stats.run_quiet(["sh", "-c", "echo 'ccache: error: no such option' >&2; exit 1"], None)
    assert failed.value.exit_code == 7
    assert failed.value.message.startswith("the compile cache could not report its counts\ncommand: sh -c ")
    assert failed.value.message.endswith("return code: 1\noutput (last lines):\n    ccache: error: no such option")


def test_farm_addresses_and_the_clients_configuration() -> None:
    assert str(farm.parse_address("10.0.0.2", farm.SERVER_PORT, "--server")) == "10.0.0.2:10501"
    assert farm.parse_address("build-1.lan:9000", farm.SERVER_PORT, "--server").slug == "build-1.lan-9000"
    with pytest.raises(UsageError, match=r"--server '10\.0\.0\.2:port': expected HOST or HOST:PORT"):
        farm.parse_address("10.0.0.2:port", farm.SERVER_PORT, "--server")
    farm_at = cache_stores.Farm("http://10.0.0.1:10600", "t0k")
    conf = tomllib.loads(cache_stores.farm_config(farm_at, Path("/c/dist-client")))
    assert conf == {"dist": {"scheduler_url": "http://10.0.0.1:10600", "toolchains": [],
                             "cache_dir": "/c/dist-client", "auth": {"type": "token", "token": "t0k"}}}


def test_the_farm_status_asks_sccache_with_only_its_own_settings(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """None of the user's ``SCCACHE_*`` reaches the client that asks; a scheduler that does not answer is a
    ToolchainError with what sccache said."""
    monkeypatch.setenv("SCCACHE_USER_SETTING", "7")
    sccache = tmp_path / "sccache"
    sccache.write_text('#!/bin/sh\n[ "$1" = --stop-server ] && exit 0\n'
                       '[ -f "$SCCACHE_CONF" ] || { echo "no configuration" >&2; exit 2; }\n'
                       'echo \'{"SchedulerStatus": ["x", {"num_servers": 2, "num_cpus": 16, "in_progress": \''
                       '"${SCCACHE_USER_SETTING-0}}]}"\n')
    sccache.chmod(0o755)
    assert farm.status(cache_stores.Farm("http://10.0.0.1:10600", "t0k"), tmp_path) == {"servers": 2, "cores": 16,
                                                                                 "in_progress": 0}
    sccache.write_text("#!/bin/sh\necho 'error: connection refused' >&2\nexit 2\n")
    with pytest.raises(ToolchainError, match=r"did not answer: error: connection refused$"):
        farm.status(cache_stores.Farm("http://10.0.0.1:10600", "t0k"), tmp_path)
