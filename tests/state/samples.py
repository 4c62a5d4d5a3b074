"""Ids, fingerprints and the clock the state tests share."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.core.stix import stix_id

FP_A = "a" * 32
FP_B = "b" * 32
FP_C = "c" * 32


def ids(count: int, start: int = 0) -> list[str]:
    return [stix_id(f"ipv4--{n}", None) for n in range(start, start + count)]


def server_now_close_to_ours() -> datetime:
    """The tests' ``now``; the server runs on this host, so its clock is ours."""
    return datetime.now(UTC)
