"""``llamawheel mirrors check``: whether the places a profile names answer, each probed with a small file
that proves it serves what a build needs, timed."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from llamawheel.mirror.profiles import MirrorProfile, pip_configured_index, system_apt_uris


@dataclass(frozen=True)
class Probe:
    upstream: str
    url: str
    ok: bool
    detail: str
    seconds: float


# What to fetch below each upstream's base URL: a small file that proves it serves what we need.
PROBE_PATHS = {
    "pypi": "pip/",
    "debian": "dists/bookworm/Release",
    "debian-security": "dists/bookworm-security/Release",
    "ubuntu": "dists/noble/Release",
    "registry": "v2/",
}


def probe(upstream: str, url: str, timeout: float = 5.0) -> Probe:
    """Fetch a small file below ``url`` once (first bytes only) and time it."""
    if upstream == "registry" and "://" not in url:
        url = f"https://{url}"
    kind = upstream.split(" ")[0]
    if kind in PROBE_PATHS:
        url = url.rstrip("/") + "/" + PROBE_PATHS[kind]
    start = time.monotonic()
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "llamawheel-mirror-check"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read(512)
            status = f"HTTP {resp.status}"
        ok = True
    except urllib.error.HTTPError as exc:
        # A registry answers 401 on /v2/ when it is alive; anything else is a failure.
        ok = upstream == "registry" and exc.code == 401
        status = f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        ok, status = False, f"unreachable: {reason}"
    return Probe(upstream, url, ok, status, time.monotonic() - start)


def check(profile: MirrorProfile, timeout: float = 5.0) -> list[Probe]:
    """Probe every URL the profile (or, for empty entries of ``default``, this machine) uses."""
    targets: list[tuple[str, str]] = [(k, v) for k, v in profile.urls().items() if v]
    if profile.name == "default":
        index = pip_configured_index()
        if index:
            targets.append(("pypi (pip config)", index))
        targets.extend(("apt (system)", uri) for uri in system_apt_uris())
    return [probe(kind, url, timeout) for kind, url in targets]

