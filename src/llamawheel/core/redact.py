"""Credentials out of everything llamawheel writes: manifests, the index, logs, error messages.

An index URL may carry a user and a token (``https://user:token@host/simple``) and a file link a signed query
(``?X-Amz-Signature=...``, ``?token=...``). `redact` replaces each with ``***`` wherever a URL appears in a
string: a URL alone, a command line (``--index-url https://u:t@h/simple``), a line of pip's log. Every writer of
manifests and logs passes what it writes through it; `redact_tree` does the same for a whole JSON value.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^\s/?#@\"'<>]+)@")
"""``scheme://user:password@``: everything between ``://`` and ``@`` before the first ``/``, ``?`` or ``#``."""

_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;](?:[\w.-]*?(?:token|secret|signature|passw(?:or)?d|credential|api[_-]?key|access[_-]?key"
    r"|auth)[\w.-]*|sig|key))=(?P<value>[^&#;\s\"'<>]*)",
    re.IGNORECASE,
)
"""A query parameter that holds a secret: ``token=``, ``access_token=``, ``private_token=``, ``X-Amz-Signature=``,
``X-Amz-Credential=``, ``X-Amz-Security-Token=``, ``sig=`` (an Azure SAS), ``key=``, ``api_key=``, ``password=``."""


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``: the user and password
    (``https://***@host/simple``) and secret query parameters (``?token=***``)."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['name']}={MASK}" if m["value"] else m[0], text)


def redact_tree(value: Any) -> Any:
    """A JSON-like value (dicts, lists, tuples, strings, numbers) with `redact` applied to every string in it,
    keys included."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_tree(k): redact_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_tree(v) for v in value)
    return value
