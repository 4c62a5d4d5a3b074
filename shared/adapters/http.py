"""The process's one aiohttp session, and safe messages built from what peers answer.

One session per process so every client (MATI, Sentinel, and azure-identity's transport) shares
one connection pool and, above all, one TLS context (``shared.adapters.tls.client_context``: the
system store plus ``SSL_CERT_FILE``). Verification is never switched off anywhere.
"""

from __future__ import annotations

import ssl
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final

import aiohttp
import orjson

from shared.core.secrets import MASK


def _version() -> str:
    try:
        return version("mati2sentinel")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


USER_AGENT: Final = f"mati2sentinel/{_version()}"

#: How much of a peer's error message we keep: enough to act on, never a whole payload.
MAX_PEER_MESSAGE: Final = 500


def open_session(
    ssl_context: ssl.SSLContext,
    *,
    timeout_s: float = 30,
    user_agent: str = USER_AGENT,
) -> aiohttp.ClientSession:
    """Open the process's HTTP session; call it inside the running event loop, close it last.

    - ``TCPConnector(ssl=ssl_context)``: every request, including azure-identity's (which sends
      ``ssl=True``, meaning "the connector's context"), verifies against our one context.
    - ``timeout_s`` bounds a whole request (connect, send, read); a hung peer becomes a timeout
      the clients translate to ``UpstreamUnavailable`` and retry, never a stuck worker.
    - ``trust_env=False``: with it on, aiohttp looks every request's host up in ``~/.netrc``
      (a thread hop per request) and would attach whatever Basic credentials it finds there
      to our requests. An egress proxy therefore needs an explicit setting (none exists yet);
      ``HTTPS_PROXY`` is ignored by every client, azure-identity's included (it uses this
      session).
    - No cookie jar: no peer we talk to uses cookies, and a jar is state shared between clients.
    """
    if not timeout_s > 0:
        raise ValueError("timeout_s must be a positive number of seconds")
    connector = aiohttp.TCPConnector(
        ssl=ssl_context,
        limit=100,
        limit_per_host=20,
        ttl_dns_cache=300,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s, connect=min(timeout_s, 10.0)),
        headers={"User-Agent": user_agent},
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        raise_for_status=False,
    )


def redact(text: str, *secrets: str) -> str:
    """``text`` with every occurrence of each non-empty secret replaced by the mask.

    Defence in depth for messages built from peer bodies: a peer echoing our token or key back
    in an error must not carry it into our exceptions and logs.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text


def peer_message(body: bytes, *, secrets: tuple[str, ...] = ()) -> str:
    """The human message in a peer's error body, shortened and redacted; ``""`` if none.

    Understands the envelopes our peers use: APIM-style ``{"statusCode", "message"}``, ARM-style
    ``{"error": {"code", "message"}}``, OAuth ``{"error", "error_description"}``, and MATI's
    ``{"error": "..."}`` / ``{"message": "..."}``. Falls back to the raw text, because an
    operator reading "HTTP 400" alone cannot fix anything.
    """
    if not body:
        return ""
    text = ""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", errors="replace")
    else:
        text = _message_of(data)
    text = " ".join(text.split())
    if len(text) > MAX_PEER_MESSAGE:
        text = text[: MAX_PEER_MESSAGE - 1] + "…"
    return redact(text, *secrets)


def _message_of(data: Any) -> str:
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            parts = [str(error[k]) for k in ("code", "message") if error.get(k)]
            if parts:
                return ": ".join(parts)
        for key in ("message", "error_description", "detail", "title"):
            value = data.get(key)
            if isinstance(value, str) and value:
                return value
        if isinstance(error, str) and error:
            return error
    if isinstance(data, str):
        return data
    return orjson.dumps(data).decode()
