"""The compile cache's shared stores (Redis, WebDAV, S3-compatible, GitHub Actions' cache) and sccache's build farm:
the URLs a user names, checked and probed before a build, and the settings that carry their credentials.

Credentials come only from the environment (the tools' own variable names, `SECRETS`). They reach the tool through
a settings file only it reads (mode 0600, in the build's own folder, removed when the build ends): never an
argument (a process listing shows those), a manifest or a log line. A URL with credentials in it is refused.
"""

from __future__ import annotations

import base64
import shlex
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, quote, urlsplit, urlunsplit

from llamawheel.core import datafile
from llamawheel.core.errors import StoreError, UsageError, did_you_mean

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


def secret_names() -> tuple[str, ...]:
    """Every variable that may hold a credential of a store or the farm."""
    return (*sorted({name for names in SECRETS.values() for name in names}), FARM_TOKEN)


def settings_text(values: Mapping[str, str]) -> str:
    """``export NAME='value'`` lines for a POSIX shell to read."""
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in values.items())


def farm_config(farm: Farm, client_cache: Path) -> str:
    """sccache's configuration for sending compiles to ``farm`` (it holds the token: written private)."""
    return datafile.toml_text({"dist": {"scheduler_url": farm.scheduler, "toolchains": [],
                               "cache_dir": str(client_cache)},
                      "dist.auth": {"type": "token", "token": farm.token}})
