"""What the test_parsing_*.py modules share: the three hashes of the §6 md5 example, and
``at``, so an expected instant reads as its UTC fields."""

from __future__ import annotations

from datetime import UTC, datetime

MD5 = "b3becab76a6d36861357bfa3fe966003"
SHA1 = "537f7341e42b72c88032e89aafa94ce5861f2e2a"
SHA256 = "268791330e6cf922e1c53392031cfcbe203630e416342e5503d39f402b6f0ca5"


def at(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)
