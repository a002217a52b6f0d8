"""Credentials out of everything shown or stored: URLs lose their `user:password@`, texts lose keys and tokens.

A `base_url` such as `http://user:pass@gateway/v1` is split once, where it enters (adapters, the SDK's
preview): the public part (scheme, host, port, path) is what plans, reprs, saved explanations, cache keys and
logs see; the credentials travel only inside an opaque `Secret` and the SDK client's auth header.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Callable, Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

KEY_SHAPED = re.compile(r"\b(sk|pk|key)-[A-Za-z0-9*_.-]{6,}")
_AUTH_TOKEN = re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9+/=._~-]{4,}")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")


def split_userinfo(url: str | None) -> tuple[str | None, str | None]:
    """(url without `user:password@`, the decoded "user:password" or None)."""
    if not url:
        return url, None
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port is not None else "")
    userinfo = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), userinfo


def public_url(url: str | None) -> str | None:
    """The URL with any credentials removed (safe to show, store, log or hash)."""
    return split_userinfo(url)[0]


def basic_auth_header(userinfo: str) -> str:
    """The HTTP Basic `Authorization` value for "user:password" (what the URL's credentials meant)."""
    return "Basic " + base64.b64encode(userinfo.encode()).decode()


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` without the given secrets (and their Basic-auth base64 forms), URL credentials, auth tokens and
    anything key-shaped: providers echo what they were sent (e.g. 'Incorrect API key provided: ...')."""
    for s in secrets:
        if s:
            for form in (s, base64.b64encode(s.encode()).decode()):
                text = text.replace(form, "***")
    text = _URL_USERINFO.sub(r"\1***@", text)
    text = _AUTH_TOKEN.sub(lambda m: f"{m.group(1)} ***", text)
    return KEY_SHAPED.sub("***", text)


class Secret:
    """An opaque holder of credentials: repr, vars(), copies and pickles never show them.

    The values live in a closure (no instance attributes); a pickled or deep-copied Secret is empty, so a
    pickled object that holds one carries no credentials (the copy falls back to keys from the environment).
    """

    __slots__ = ("_get",)

    def __init__(self, **values: Any) -> None:
        object.__setattr__(self, "_get", (lambda v: (lambda name: v.get(name)))(dict(values)))

    def get(self, name: str) -> Any:
        """The value stored under `name`, or None."""
        getter: Callable[[str], Any] = object.__getattribute__(self, "_get")
        return getter(name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Secret is read-only")

    def __repr__(self) -> str:
        return "Secret(***)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Secret, ())

    def __copy__(self) -> "Secret":
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> "Secret":
        return self
