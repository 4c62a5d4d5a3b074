"""The MATI v4 adapter: a bearer token, ``GET /v4/indicator`` paged with ``next``, and every
failure mode of the API turned into the pipeline's error tree.

What the API needs from a client (specs/mati-api-v4.md §2, §3, §8, §11) and how we answer it:

- **Auth.** ``POST /token`` with HTTP Basic ``key:secret`` and ``grant_type=client_credentials``;
  the bearer is cached and renewed *before* it expires (5 min or 10 % of its lifetime, whichever
  is shorter), because the server hands back a cached token with its *remaining* lifetime and a
  token that dies mid-window costs a page. A 401/403 on an API call means the token was revoked
  or expired early: fetch a new one and retry once; a refusal of that fresh token in the very
  next answer is ``AuthenticationFailed``. The "once" is per run of consecutive refusals, not per
  page: a 401 that follows a retried 5xx is a new token problem and re-authenticates again
  (still bounded, because every 5xx retry counts against the back-off policy).
- **Paging.** The first request carries the whole query; follow-ups carry ``next`` plus the
  ``include_*`` flags only (the cursor holds the query state but not those flags, §3.2). Paging
  ends on any of the forms the API uses: no ``next``, an empty page, HTTP 204 / an empty body.
  A short page is *not* an end by itself: the API was seen to send short pages that still carry
  ``next``, so a short page ends paging only because it has no ``next``.
- **Failures.** 429 waits ``Retry-After`` when the server sends one (it is not documented), else
  jittered back-off; 5xx, empty 500s, timeouts, connection resets and undecodable bodies back off
  and retry the *same* request. Attempts and total waiting are both bounded
  (``shared.core.backoff``); then ``UpstreamUnavailable`` / ``RateLimited`` / ``MalformedResponse``.
  A body that would not end is such a timeout (the session's).
  A 400 on a ``next`` request is an expired cursor (they live ~10 minutes): ``PagingInterrupted``,
  restart the window. Any other 4xx is ``QueryRejected`` with the server's message. A TLS handshake
  that refuses the server (untrusted or expired certificate, wrong host) is
  ``TlsVerificationFailed`` at once: no retry fixes a certificate, and retrying would hide a missing
  CA behind "MATI is down".
- **Bounds** (``shared.adapters.http_limits``). An answer larger than ``max_body_bytes`` (token
  answers: ``TOKEN_MAX_BODY``), counted decompressed, is ``MalformedResponse`` at once, and a
  redirect, never followed (neither the key and secret nor the bearer reach another host), is
  ``UpstreamUnavailable`` at once: asking again brings the same (``mati_answers.refused``).
- **Pace.** Every request — token requests and retries included — passes one ``Pacer``: MATI
  publishes no limit and ≈1 request/second is what survives (§8).

Records are not validated here: a page's indicators are handed on as decoded JSON, and the
parser counts and dead-letters the bad ones (DESIGN.md §4, bad input never vanishes). One too
large or nested too deep for a message is no reason to refuse its page either: the fetcher
publishes a stand-in for it (``shared.core.record_bounds``), so it costs that record alone. A
looked-up record too deep to show is refused (``mati_answers.check_encodable``).

Nothing secret (key, secret, token) ever reaches a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, TypeVar
from urllib.parse import quote

import aiohttp
from yarl import URL

from shared.adapters import mati_answers as answers
from shared.adapters.http_limits import MATI_MAX_BODY, TOKEN_MAX_BODY, body_limit
from shared.adapters.mati_answers import Answer, Retry
from shared.adapters.mati_paging import IndicatorQuery, RawPage
from shared.core.backoff import Backoff
from shared.core.errors import (
    AuthenticationFailed,
    MalformedResponse,
    UpstreamUnavailable,
)
from shared.core.events import get_logger
from shared.core.pacing import Pacer
from shared.core.retrying import Retrier, retry
from shared.core.secrets import Secret
from shared.core.timing import Monotonic, Sleep

log = get_logger(__name__)

T = TypeVar("T")

DEFAULT_BASE_URL: Final = "https://api.intelligence.mandiant.com"
#: Renew the bearer this long before it expires at most (a tenth of its lifetime when shorter).
REFRESH_MARGIN_S: Final = 300.0
#: Lifetime assumed for a token answered without ``expires_in``: short, never "forever".
DEFAULT_TOKEN_TTL_S: Final = 600.0
_AUTH_STATUSES: Final = frozenset({401, 403})


class MatiClient:
    """Async client of the MATI v4 indicator API; one per process, over the shared session.

    ``sleep``, ``clock`` and ``rng`` are injected so tests see every wait the client chose
    (pacing and back-off) without sleeping. ``max_wait_s`` bounds the total back-off of one
    request; keep it well under the cursor's ~10 minute life. ``max_body_bytes`` bounds what one
    answer (a page) may be; the default fits the largest page with wide headroom (tests lower it).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_key: Secret,
        api_secret: Secret,
        requests_per_second: float = 1.0,
        app_name: str = "mati2sentinel",
        max_attempts: int = 6,
        max_wait_s: float = 300.0,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 60.0,
        max_body_bytes: int = MATI_MAX_BODY,
        sleep: Sleep = asyncio.sleep,
        clock: Monotonic = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if not base_url.startswith("https://"):
            raise ValueError("base_url must be an https:// URL")
        if not api_key or not api_secret:
            raise ValueError("api_key and api_secret are required")
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be at least 1")
        self._session = session
        self._base = base_url.rstrip("/")
        self._key = api_key
        self._secret = api_secret
        self._app_name = app_name
        self._max_body = max_body_bytes
        self._backoff = Backoff(
            base_s=backoff_base_s,
            cap_s=backoff_cap_s,
            max_attempts=max_attempts,
            budget_s=max_wait_s,
        )
        self._pacer = Pacer(requests_per_second, clock=clock, sleep=sleep)
        self._sleep = sleep
        self._clock = clock
        # Jitter only de-synchronises retries; it is not a security value.
        self._rng = rng if rng is not None else random.Random()  # noqa: S311
        self._token: str | None = None
        self._refresh_at = -math.inf
        self._token_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"MatiClient(base_url={self._base!r})"

    # ---- paging -------------------------------------------------------------------------

    async def pages(self, query: IndicatorQuery) -> AsyncIterator[RawPage]:
        """Yield every non-empty page of ``query`` in order, until the API says it is done.

        Consume promptly: the cursor expires about ten minutes after it was issued, and a slow
        consumer turns into ``PagingInterrupted`` on the next page.
        """
        params = query.first_params()
        follow_up = False
        index = 0
        while True:
            page = await self._page(params, index=index, follow_up=follow_up)
            if page is None or not page.indicators:
                return
            yield page
            if not page.next:
                return
            params = {"next": page.next, **query.include_params()}
            follow_up = True
            index += 1

    async def _page(self, params: dict[str, str], *, index: int, follow_up: bool) -> RawPage | None:
        url = f"{self._base}/v4/indicator"

        async def attempt() -> RawPage | None:
            answer, token = await self._get_authenticated(url, params)
            return self._read_page(answer, token, index=index, follow_up=follow_up)

        return await self._with_retries(f"GET /v4/indicator (page {index})", attempt)

    async def _get_authenticated(self, url: str, params: dict[str, str]) -> tuple[Answer, str]:
        """GET ``url`` with the bearer token; a 401/403 gets one fresh token and one more try,
        a second refusal in a row is ``AuthenticationFailed``. Per attempt of the retry loop,
        not per page: a retried failure starts afresh and may re-authenticate again."""
        reauthed = False
        while True:
            token = await self._bearer()
            headers = {
                "Authorization": f"Bearer {token}",
                "Accept": "application/json",
                "X-App-Name": self._app_name,
            }
            answer = await self._exchange("GET", url, params=params, headers=headers)
            if answer.status not in _AUTH_STATUSES:
                return answer, token
            message = self._message(answer, token)
            if reauthed:
                raise AuthenticationFailed(
                    f"MATI refused a fresh token (HTTP {answer.status}): {message}",
                    status=answer.status,
                )
            reauthed = True
            log.info("mati.token_refused", status=answer.status)
            self._forget(token)

    def _read_page(
        self, answer: Answer, token: str, *, index: int, follow_up: bool
    ) -> RawPage | None:
        status = answer.status
        if 200 <= status < 300:
            if status == 204 or not answer.body.strip():
                return None  # an end of paging the API uses (spec §3.2, form 3)
            data = answers.decode(answer)
            if not isinstance(data, dict):
                raise MalformedResponse(
                    f"MATI answered a JSON {type(data).__name__}, not an object"
                )
            indicators = data.get("indicators", [])
            if indicators is None:
                indicators = []
            if not isinstance(indicators, list):
                raise MalformedResponse("MATI page's 'indicators' is not a list")
            cursor = data.get("next")
            if cursor is not None and not isinstance(cursor, str):
                raise MalformedResponse("MATI page's 'next' is not a string")
            return RawPage(
                index=index,
                indicators=indicators,
                next=cursor or None,
                size_bytes=len(answer.body),
            )
        raise self._failure(answer, token, follow_up=follow_up)

    # ---- one indicator ------------------------------------------------------------------

    async def lookup(
        self,
        *,
        indicator_id: str | None = None,
        indicator_type: str | None = None,
        value: str | None = None,
        include_misp: bool = False,
    ) -> dict[str, Any] | None:
        """One indicator as MATI holds it now, by id (``GET /v4/indicator/{id}``) or by type
        and value (``GET /v4/indicator/{type}/{value}``), spec §4; ``None`` when MATI does not
        know it (404, or the 204 its look-ups use for "no match").

        For an operator's question, not for paging: the same token, pacing, retries and
        error tree as ``pages``, and the ``include_*`` flags the fetcher asks for (pass its
        ``include_misp``), so the record looks as the pipeline sees it.
        """
        if (indicator_id is None) == (value is None) or (value is None) != (indicator_type is None):
            raise ValueError("give indicator_id, or indicator_type and value")
        if indicator_id is not None:
            path = quote(indicator_id, safe="")
        else:
            path = f"{quote(str(indicator_type), safe='')}/{quote(str(value), safe='')}"
        url = f"{self._base}/v4/indicator/{path}"
        params = IndicatorQuery(0, 0, include_misp=include_misp).include_params()
        return await self._one(url, params, "GET /v4/indicator/{…}", "an indicator object")

    async def actor(self, actor_id: str) -> dict[str, Any] | None:
        """One threat actor's profile (``GET /v4/actor/{id}``: name, description, aliases),
        ``None`` when MATI does not know it; paced, authenticated and retried like every
        other request, so profiles spend the same request ceiling as the pages."""
        url = f"{self._base}/v4/actor/{quote(actor_id, safe='')}"
        return await self._one(url, {}, "GET /v4/actor/{…}", "an actor object")

    async def _one(
        self, url: str, params: dict[str, str], what: str, shape: str
    ) -> dict[str, Any] | None:
        """One object of MATI's, or ``None`` for "not found" (404, or the 204 or empty 200 its
        look-ups use for "no match")."""

        async def attempt() -> dict[str, Any] | None:
            answer, token = await self._get_authenticated(url, params)
            if (
                answer.status == 404
                or answer.status == 204
                or (answer.status == 200 and not answer.body.strip())
            ):
                return None
            if answer.status != 200:
                raise self._failure(answer, token, follow_up=False)
            data = answers.decode(answer)
            if not isinstance(data, dict):
                raise MalformedResponse(f"MATI answered a JSON {type(data).__name__}, not {shape}")
            answers.check_encodable(data)
            return data

        return await self._with_retries(what, attempt)

    # ---- token --------------------------------------------------------------------------

    async def _bearer(self) -> str:
        """The cached bearer, renewed when it is within its refresh margin."""
        if self._token is not None and self._clock() < self._refresh_at:
            return self._token
        async with self._token_lock:
            if self._token is None or self._clock() >= self._refresh_at:
                await self._with_retries("POST /token", self._request_token)
            if self._token is None:  # _request_token sets it or raises
                raise AuthenticationFailed("MATI token request returned no token")
            return self._token

    def _forget(self, token: str) -> None:
        """Drop ``token`` unless another request already replaced it."""
        if self._token == token:
            self._token = None
            self._refresh_at = -math.inf

    async def _request_token(self) -> None:
        headers = {
            "Accept": "application/json",
            # The single point where the key and secret are revealed (spec §2.2: HTTP Basic).
            "Authorization": aiohttp.encode_basic_auth(self._key.reveal(), self._secret.reveal()),
        }
        answer = await self._exchange(
            "POST",
            f"{self._base}/token",
            headers=headers,
            data={"grant_type": "client_credentials"},
            max_bytes=TOKEN_MAX_BODY,
        )
        if answer.status in _AUTH_STATUSES or answer.status == 400:
            raise AuthenticationFailed(
                f"MATI refused the API key (HTTP {answer.status}): {self._message(answer)}",
                status=answer.status,
            )
        if answer.status != 200:
            raise self._failure(answer, None, follow_up=False)
        data = answers.decode(answer)
        token = data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise MalformedResponse("MATI token answer has no access_token")
        ttl = answers.seconds(data.get("expires_in"))
        if ttl is None:
            log.warning("mati.token_without_expiry")
            ttl = DEFAULT_TOKEN_TTL_S
        margin = min(REFRESH_MARGIN_S, ttl * 0.1)
        self._token = token
        self._refresh_at = self._clock() + ttl - margin

    # ---- one exchange, failures, retries ------------------------------------------------

    async def _exchange(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        params: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
        max_bytes: int | None = None,
    ) -> Answer:
        """One paced request; transport failures become ``Retry``, refused answers the
        errors the module docstring names."""
        await self._pacer.wait()
        try:
            with body_limit(max_bytes or self._max_body):
                async with self._session.request(
                    method, url, params=params, headers=headers, data=data
                ) as response:
                    body = await response.read()
                    return Answer(response.status, body, response.headers)
        except aiohttp.InvalidURL:
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise answers.unanswered(exc) from exc
        except (MalformedResponse, UpstreamUnavailable) as exc:  # the session's bounds
            raise answers.refused(exc, f"{method} {URL(url).path}") from exc

    def _message(self, answer: Answer, token: str | None = None) -> str:
        return answers.message(answer, (self._key.reveal(), self._secret.reveal(), token or ""))

    def _failure(self, answer: Answer, token: str | None, *, follow_up: bool) -> Exception:
        return answers.failure(answer, lambda: self._message(answer, token), follow_up=follow_up)

    async def _with_retries(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` until it succeeds, raises a non-retryable error, or the policy stops."""
        retrier = Retrier(self._backoff, self._rng, clock=self._clock)

        def retrying(exc: BaseException, wait: float) -> None:
            reason = exc.reason if isinstance(exc, Retry) else str(exc)
            log.warning(
                "mati.retry", request=what, reason=reason, retry=retrier.failures, wait_s=wait
            )

        try:
            return await retry(
                attempt,
                on=Retry,
                retrier=retrier,
                sleep=self._sleep,
                server_wait=lambda exc: exc.server_wait_s if isinstance(exc, Retry) else None,
                on_retry=retrying,
            )
        except Retry as failed:
            raise answers.exhausted(what, failed, retrier.failures) from failed.__cause__
