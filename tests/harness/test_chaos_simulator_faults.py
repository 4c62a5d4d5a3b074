"""What the chaos run adds to the simulators, against a real simulator over TLS with a real
client: a body that stalls halfway (the handler ran, the headers and half the body came,
then nothing until the client gives up), a share of requests faulted at random and counted,
the control routes never faulted, and the gates (a request held on arrival; a hook told once
the 200 was written; the client's port, which names the client's own connection in
``/proc``)."""

from __future__ import annotations

import asyncio
import os
import random
import ssl

import aiohttp
import pytest

from harness.chaos.phases import client_ports
from simulators.entra import EntraSimulator
from simulators.gates import Gates, Passing
from simulators.random_faults import RandomFaults, RandomKind
from simulators.tokens import TokenMinter

TENANT = "00000000-0000-4000-8000-0000000000aa"
ROUTE = "openid_configuration"


def entra(server_ssl: ssl.SSLContext) -> EntraSimulator:
    return EntraSimulator(server_ssl, minter=TokenMinter(), tenant_id=TENANT)


def metadata_url(sim: EntraSimulator) -> str:
    return f"{sim.url}/{TENANT}/v2.0/.well-known/openid-configuration"


async def test_a_stalled_body_sends_its_headers_and_half_then_nothing(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    sim = entra(server_ssl)
    heard: list[RandomKind] = []
    faults = RandomFaults("entra", random.Random(1), 1.0, kinds=(RandomKind.STALL,),
                          listener=lambda request, fired: heard.append(fired.kind))  # fmt: skip
    faults.install(sim.app)
    async with sim, aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl)) as http:
        async with http.get(metadata_url(sim)) as response:
            assert response.status == 200
            assert response.content_type == "application/json", "the handler's own answer"
            half = await response.content.read(10)
            assert half, "the first half of the body arrives"
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(response.read(), 1.0)
        assert heard == [RandomKind.STALL]
        assert faults.fired == {RandomKind.STALL: 1}


async def test_a_share_of_requests_is_faulted_and_control_routes_never(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    sim = entra(server_ssl)
    kinds = (RandomKind.SERVER_ERROR, RandomKind.RATE_LIMIT, RandomKind.RATE_LIMIT_BODY_ONLY)
    faults = RandomFaults("entra", random.Random(3), 0.5, kinds=kinds)
    faults.install(sim.app)
    async with sim, aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl)) as http:
        statuses = []
        for _ in range(60):
            async with http.get(metadata_url(sim)) as response:
                statuses.append(response.status)
                if response.status == 429 and "Retry-After" in response.headers:
                    assert 1 <= int(response.headers["Retry-After"]) <= 3
        for _ in range(20):
            async with http.get(f"{sim.url}/_sim/requests") as response:
                assert response.status == 200
        faulted = sum(status != 200 for status in statuses)
        assert 15 <= faulted <= 45, statuses
        assert sum(faults.fired.values()) == faulted
        assert set(faults.fired) <= set(kinds)
        faults.rate = 0.0
        async with http.get(metadata_url(sim)) as response:
            assert response.status == 200


async def test_gates_hold_a_request_on_arrival_and_tell_its_answer_once_written(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    sim = entra(server_ssl)
    gates = Gates()
    gates.install(sim.app)
    arrived: list[Passing] = []
    answered: list[Passing] = []
    came, release = asyncio.Event(), asyncio.Event()

    async def hold(passing: Passing) -> None:
        arrived.append(passing)
        came.set()
        await release.wait()

    async def told(passing: Passing) -> None:
        answered.append(passing)

    gates.on_arrival[ROUTE] = hold
    gates.on_answer[ROUTE] = told
    async with sim, aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl)) as http:
        request = asyncio.create_task(http.get(metadata_url(sim)))
        await asyncio.wait_for(came.wait(), 10)
        assert list(gates.in_flight) == [arrived[0].serial], "held, so still in flight"
        assert not request.done()
        release.set()
        async with await request as response:
            assert response.status == 200
            await response.read()
        assert [p.status for p in answered] == [200]
        assert gates.in_flight == {}
        # The port names our own connection, as the harness finds it in /proc.
        assert arrived[0].peer_port in client_ports(os.getpid(), sim.port)
