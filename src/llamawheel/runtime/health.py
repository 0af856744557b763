"""The image's health check: ``python -m llamawheel_runtime.health`` exits 0 when the server answers
``/v1/models`` (with the ``API_KEY`` when one is set) and lists the served id, 1 otherwise."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

from .serve import DEFAULTS


def check(environ: Mapping[str, str], timeout: float = 4.0) -> tuple[bool, str]:
    """Ask the server on loopback for its models; (healthy, what was seen)."""
    port = environ.get("PORT") or DEFAULTS["PORT"]
    alias = environ.get("MODEL_ALIAS") or DEFAULTS["MODEL_ALIAS"]
    url = f"http://127.0.0.1:{port}/v1/models"
    headers = {"Authorization": f"Bearer {environ['API_KEY']}"} if environ.get("API_KEY") else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as response:
            ids = [m.get("id") for m in json.load(response).get("data", [])]
    except urllib.error.HTTPError as exc:
        return False, f"{url} answered {exc.code}"
    except (OSError, ValueError) as exc:
        return False, f"{url}: {exc}"
    if alias not in ids:
        return False, f"{url} lists {ids}, not {alias}"
    return True, f"{url} lists {alias}"


def main() -> int:
    healthy, seen = check(os.environ)
    print(("healthy: " if healthy else "unhealthy: ") + seen, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())
