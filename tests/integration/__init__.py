"""Tests of one part against real peers it cannot do without, kept out of ``tests/unit`` so that
``make unit`` needs nothing but the interpreter.

What they start: a ``redis-server`` (the session's ``redis_server`` of ``tests/conftest.py``,
run by ``services.cli.redis_server.LocalRedis``), HTTPS routes served with the simulators' CA
(``sim_ca``, ``server_ssl``, ``client_ssl``), the probes' HTTP server on a loopback port, and
child interpreters (``mati2sentinel`` as a user runs it; a fresh ``python`` for what importing
the core loads). Each test starts only what it asks for.
"""
