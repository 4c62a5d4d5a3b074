"""What every simulator shares: a TLS aiohttp server on loopback, faults, the request record
and the ``/_sim/*`` control routes that let another process (``make demo``) drive it, and the
reading of credentials and writing of JSON that every API does alike.
"""

from __future__ import annotations

import base64
import binascii
import ssl
from collections.abc import Mapping
from typing import Any, Self

import orjson
from aiohttp import web

from simulators.faults import Fault, FaultPlan, Recorder, fault_middleware


class SimServer:
    """Base of the simulators: subclasses add their routes in ``routes()``."""

    name = "simulator"

    def __init__(self, ssl_context: ssl.SSLContext, *, host: str = "127.0.0.1", port: int = 0):
        self.faults = FaultPlan()
        self.recorder = Recorder()
        self._ssl = ssl_context
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.app = web.Application(
            middlewares=[fault_middleware(self.faults, self.recorder)],
            client_max_size=32 * 1024**2,
        )
        self.app.router.add_post("/_sim/faults", self._add_fault, name="sim.faults")
        self.app.router.add_delete("/_sim/faults", self._clear_faults, name="sim.faults_clear")
        self.app.router.add_get("/_sim/requests", self._requests, name="sim.requests")
        self.routes(self.app.router)

    def routes(self, router: web.UrlDispatcher) -> None:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"https://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError(f"{self.name} simulator is not started")
        return int(self._runner.addresses[0][1])

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._ssl)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _add_fault(self, request: web.Request) -> web.Response:
        fault = Fault.from_json(orjson.loads(await request.read()))
        self.faults.add(fault)
        return json_response(fault.to_json(), status=201)

    async def _clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return web.Response(status=204)

    async def _requests(self, request: web.Request) -> web.Response:
        rows = [
            {"route": r.route, "method": r.method, "path": r.path, "status": r.status}
            for r in self.recorder.requests
        ]
        return json_response(rows)


def json_response(
    obj: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``obj`` as orjson writes it: the bytes a test compares are the bytes that were sent."""
    return web.Response(
        body=orjson.dumps(obj), status=status, content_type="application/json", headers=headers
    )


def bearer_token(request: web.Request) -> str | None:
    """The token of ``Authorization: Bearer <token>``; None when the header carries none."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def basic_credentials(header: str) -> tuple[str, str] | None:
    """The ``(user, password)`` of an ``Authorization: Basic`` header, decoded by hand: aiohttp
    deprecates ``BasicAuth``, and a simulator must not lean on client code. None when the header
    is not Basic or does not decode to ``user:password``."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None
