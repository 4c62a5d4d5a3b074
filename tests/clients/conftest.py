"""The client worlds as fixtures bound to the run's TLS contexts, so a test's signature and its
``async with`` name only the options the test is about, not the certificates every test shares."""

from __future__ import annotations

import functools
import logging
import ssl

import pytest

from tests.clients import mati_world, sentinel_world
from tests.clients.peers import World


@pytest.fixture
def mati(server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext) -> World:
    """``mati(**options)`` opens ``mati_world.world`` with those options."""
    return functools.partial(mati_world.world, server_ssl, client_ssl)


@pytest.fixture
def sentinel(server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext) -> World:
    """``sentinel(**options)`` opens ``sentinel_world.world`` with those options."""
    return functools.partial(sentinel_world.world, server_ssl, client_ssl)


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """What the clients log, DEBUG included: a secret kept out of the log must stay out at the
    most verbose level too."""
    caplog.set_level(logging.DEBUG)
    return caplog
