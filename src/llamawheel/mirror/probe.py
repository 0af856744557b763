"""``llamawheel mirrors check``: whether a profile serves what the pipeline will really fetch.

A `Feature` (CPU wheels, CUDA 12.6+, the runtime image's base, llama-gpt's UI ...) needs some files; each
`Need` names one below an upstream of the profile and what its answer must hold: a pinned file on a PyPI
project page, a component in a Debian suite's ``Release``, NVIDIA's repository index and signing key, a
registry manifest. Every need is fetched once (in parallel, timed); a feature is served when all of its needs
are. Which features exist, and what each needs, is read from the recipes by the caller
(`llamawheel.image.mirror_needs`).
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from llamawheel.core import proc
from llamawheel.core.redact import redact
from llamawheel.mirror.profiles import MirrorProfile, pip_configured_index

READ_LIMIT = 64 * 1024 * 1024
"""The most of one answer read (a big project's index page is a few MB)."""
AGENT = "llamawheel-mirror-check"
REGISTRY_APIS = {"dockerhub": "registry-1.docker.io", "ghcr": "ghcr.io"}
"""Where the registries themselves answer the registry API (Docker Hub's images are named docker.io/...)."""


@dataclass(frozen=True)
class Need:
    """One file a feature fetches: ``path`` below the profile's ``upstream`` (``pypi``, ``debian``,
    ``debian-security``, ``cuda-apt``, ``dockerhub``, ``ghcr``), and what it must hold."""

    label: str
    upstream: str
    path: str
    contains: tuple[str, ...] = ()
    """Strings the answer must hold (a pinned file's name on a project page)."""
    components: tuple[str, ...] = ()
    """For a Debian ``Release``: components its ``Components:`` line must list (``non-free``)."""


@dataclass(frozen=True)
class Feature:
    """Something llamawheel can do when the profile serves every one of ``needs``."""

    name: str
    needs: tuple[Need, ...]
    core: bool = False
    """A feature nothing works without (the check fails when it is not served)."""


@dataclass(frozen=True)
class Probe:
    """What one need's fetch answered. Its URL and detail are shown to the user: without credentials (`redact`)."""

    need: Need
    url: str
    ok: bool
    detail: str
    seconds: float
    links_to: tuple[str, ...] = ()
    """For a PyPI project page: the hosts its file links point to (where pip then downloads from)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", redact(self.url))
        object.__setattr__(self, "detail", redact(self.detail))


@dataclass(frozen=True)
class Served:
    feature: Feature
    ok: bool
    why: str
    """For a feature not served: the first need that failed, and why."""


@dataclass
class Report:
    profile: MirrorProfile
    probes: list[Probe] = field(default_factory=list)
    served: list[Served] = field(default_factory=list)

    @property
    def file_hosts(self) -> set[str]:
        """The hosts the profile's PyPI index sends pip to for files (itself, or a file host it links to)."""
        return {h for p in self.probes for h in p.links_to}

    @property
    def core_ok(self) -> bool:
        return all(s.ok for s in self.served if s.feature.core)


def pip_default_index() -> str:
    """pip's built-in default index (what pip uses when nothing configures one)."""
    code = "from pip._internal.models.index import PyPI; print(PyPI.simple_url)"
    done = proc.probe([sys.executable, "-c", code], timeout=30)
    return done.stdout.strip() if done is not None else ""


def base_url(profile: MirrorProfile, upstream: str) -> str:
    """The URL ``upstream`` is fetched from with this profile: its own entry, else what pip and apt on this machine
    use, else the upstream itself (NVIDIA's repository, Docker Hub, ghcr.io)."""
    if upstream == "pypi":
        return profile.pypi or pip_configured_index() or pip_default_index()
    if upstream in ("dockerhub", "ghcr"):
        mirror: str = getattr(profile, upstream)
        return f"https://{mirror or REGISTRY_APIS[upstream]}/"
    return profile.apt_url(upstream)


def need_url(base: str, need: Need) -> str:
    if need.upstream in ("dockerhub", "ghcr"):
        # host[/prefix]/repository:tag -> https://host/v2/[prefix/]repository/manifests/tag
        parts = urlsplit(base)
        prefix = parts.path.strip("/")
        repository, _, tag = need.path.rpartition(":")
        name = f"{prefix}/{repository}" if prefix else repository
        return f"{parts.scheme}://{parts.netloc}/v2/{name}/manifests/{tag}"
    return base.rstrip("/") + "/" + need.path.lstrip("/")


Answer = tuple[int, bytes, dict[str, str]]


def _open(url: str, timeout: float, headers: dict[str, str]) -> Answer:
    req = urllib.request.Request(url, headers={"User-Agent": AGENT, **headers})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(READ_LIMIT), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, b"", dict(exc.headers or {})


class _Pages:
    """Each URL fetched once per check, however many needs read it (one project page serves every pinned
    version on it); an error is remembered as well as an answer."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.lock = threading.Lock()
        self.urls: dict[str, threading.Lock] = {}
        self.answers: dict[str, Answer | Exception] = {}

    def get(self, url: str, headers: dict[str, str]) -> Answer:
        with self.lock:
            url_lock = self.urls.setdefault(url, threading.Lock())
        with url_lock:
            if url not in self.answers:
                try:
                    self.answers[url] = _open(url, self.timeout, headers)
                except (urllib.error.URLError, OSError, ValueError) as exc:
                    self.answers[url] = exc
        answer = self.answers[url]
        if isinstance(answer, Exception):
            raise answer
        return answer


_MANIFEST_TYPES = ", ".join((
    "application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json",
))


def _registry_get(url: str, timeout: float) -> tuple[int, bytes]:
    """A manifest, the way an engine pulls it: anonymously, with the bearer token the registry's 401 points to."""
    headers = {"Accept": _MANIFEST_TYPES}
    status, body, answer = _open(url, timeout, headers)
    challenge = answer.get("WWW-Authenticate", answer.get("www-authenticate", ""))
    if status == 401 and challenge.lower().startswith("bearer "):
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        query = "&".join(f"{k}={params[k]}" for k in ("service", "scope") if k in params)
        _, token_body, _ = _open(f"{params.get('realm', '')}?{query}", timeout, {})
        token = json.loads(token_body or b"{}")
        bearer = token.get("token") or token.get("access_token") or ""
        status, body, _ = _open(url, timeout, {**headers, "Authorization": f"Bearer {bearer}"})
    return status, body


def _links(base: str, text: str) -> tuple[str, ...]:
    hrefs = re.findall(r'href="([^"]+)"', text)
    return tuple(sorted({urlsplit(urljoin(base, h)).hostname or "" for h in hrefs} - {""}))


def probe(need: Need, base: str, pages: _Pages) -> Probe:
    """Fetch what ``need`` names below ``base`` and check its answer."""
    url = need_url(base, need)
    start = time.monotonic()
    links: tuple[str, ...] = ()
    try:
        if need.upstream in ("dockerhub", "ghcr"):
            status, body = _registry_get(url, pages.timeout)
        else:
            status, body, _ = pages.get(url, {"Accept": "text/html"} if need.upstream == "pypi" else {})
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return Probe(need, url, False, f"unreachable: {getattr(exc, 'reason', exc)}", time.monotonic() - start)
    seconds = time.monotonic() - start
    if status != 200:
        return Probe(need, url, False, f"HTTP {status}", seconds)
    text = body.decode("utf-8", "replace")
    if need.upstream == "pypi":
        links = _links(url, text)
    missing = [c for c in need.contains if c not in text]
    if need.components:
        listed = re.search(r"^Components:(.*)$", text, re.M)
        have = set(listed.group(1).split()) if listed else set()
        missing += [f"component {c}" for c in need.components if c not in have]
    if missing:
        return Probe(need, url, False, f"answers, but lacks {', '.join(missing)}", seconds, links)
    return Probe(need, url, True, f"HTTP {status}", seconds, links)


def check(profile: MirrorProfile, features: list[Feature], timeout: float = 5.0) -> Report:
    """Probe every need of ``features`` once, in parallel, and say which features the profile serves."""
    needs = list(dict.fromkeys(n for f in features for n in f.needs))
    bases = {u: base_url(profile, u) for u in {n.upstream for n in needs}}
    report = Report(profile)
    pages = _Pages(timeout)

    def one(need: Need) -> Probe:
        base = bases[need.upstream]
        if not base:
            return Probe(need, "", False, f"no {need.upstream} URL: the profile names none and this machine has none",
                         0.0)
        return probe(need, base, pages)

    with ThreadPoolExecutor(max_workers=8) as pool:
        report.probes = list(pool.map(one, needs))
    by_need = {p.need: p for p in report.probes}
    for feature in features:
        failed = [by_need[n] for n in feature.needs if not by_need[n].ok]
        why = f"{failed[0].need.label}: {failed[0].detail} ({failed[0].url or failed[0].need.upstream})" \
            if failed else ""
        report.served.append(Served(feature, not failed, why))
    return report
