"""The process's one aiohttp session, and safe messages built from what peers answer.

One session per process so every client (MATI, Sentinel, and azure-identity's transport) shares
one connection pool and, above all, one TLS context (``shared.adapters.tls.client_context``: the
system store plus ``SSL_CERT_FILE``). Verification is never switched off anywhere. And one set
of bounds on what any peer makes us read (``shared.adapters.http_limits``): a body limit per
client, no redirect ever followed.
"""

from __future__ import annotations

import ssl
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final

import aiohttp
import orjson

from shared.adapters.http_limits import BoundedResponse, refuse_redirects
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
    - ``BoundedResponse`` reads every body within the limit in force, and ``refuse_redirects``
      ends any request answered with a redirect (``shared.adapters.http_limits``).
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
        response_class=BoundedResponse,
        middlewares=(refuse_redirects,),
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
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):
            text = _TOO_DEEP  # its raw text would be a wall of brackets
        else:
            text = body[:_RAW_BYTES].decode("utf-8", errors="replace")
    else:
        text = _message_of(data)
    text = " ".join(text.split())
    if len(text) > MAX_PEER_MESSAGE:
        text = text[: MAX_PEER_MESSAGE - 1] + "…"
    return redact(text, *secrets)


_TOO_DEEP: Final = "an error body nested deeper than JSON allows"
#: How much of a body that is not JSON is looked at: far more than a message keeps, far less
#: than a whole page.
_RAW_BYTES: Final = 16 * MAX_PEER_MESSAGE


def _message_of(data: Any) -> str:
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            parts = [json_text(error[k]) for k in ("code", "message") if error.get(k)]
            if parts:
                return ": ".join(parts)
        for key in ("message", "error_description", "detail", "title"):
            value = data.get(key)
            if isinstance(value, str) and value:
                return value
        if isinstance(error, str) and error:
            return error
    return json_text(data)


def json_text(value: Any) -> str:
    """A decoded JSON ``value`` as text, for a message. Not ``str()``: a list nested a thousand
    deep (valid JSON to orjson) exhausts Python's recursion in ``repr``; orjson writes at most
    254 levels and says so."""
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        kind = "object" if isinstance(value, dict) else "array"
        return f"a JSON {kind} nested too deep to show"
