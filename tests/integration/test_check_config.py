"""``mati2sentinel check-config`` as a user runs it, in a child process: the effective settings
with every secret masked, each invalid value on a line of its own and exit 2, and no secret in
either. How the settings are read and checked is in tests/unit/test_settings.py."""

from __future__ import annotations

from shared.core.secrets import MASK
from tests.commands import CliResult, run_bare
from tests.helpers import REDIS_PASSWORD, SECRETS, VALID_ENV


async def check_config(env: dict[str, str], *args: str) -> CliResult:
    return await run_bare(env, "check-config", *args)


async def test_check_config_prints_settings_and_no_secret() -> None:
    done = await check_config({**VALID_ENV, "USE_UPLOAD_INDICATORS_API": "TRUE"})
    assert done.code == 0, done.stderr
    assert "MINIMUM_CONFIDENCE" in done.stdout
    assert MASK in done.stdout
    assert done.stderr.count("USE_UPLOAD_INDICATORS_API is removed in v1.2") == 1
    for secret in SECRETS.values():
        assert secret not in done.output


async def test_start_up_failure_lists_problems_and_no_secret() -> None:
    done = await check_config({**VALID_ENV, "HASH_TYPE": "sha512", "AZURE_WORKSPACE_ID": "nope"})
    assert done.code == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert lines[0] == "mati2sentinel: invalid settings:"
    assert "AZURE_WORKSPACE_ID='nope' is not valid" in lines[1]
    assert "HASH_TYPE='sha512' is not valid: one of md5, sha1, sha256, all" in lines[2]
    assert len(lines) == 3
    for secret in SECRETS.values():
        assert secret not in done.stderr


async def test_check_config_for_one_service() -> None:
    done = await check_config({}, "--service", "filter")
    assert done.code == 0, done.stderr


async def test_the_redis_password_never_prints() -> None:
    url = f"rediss://default:{REDIS_PASSWORD}@cache.example:6380/0"
    done = await check_config({**VALID_ENV, "REDIS_URL": url})
    assert done.code == 0
    assert REDIS_PASSWORD not in done.output
    bad = await check_config({**VALID_ENV, "REDIS_URL": f"http://:{REDIS_PASSWORD}@x"})
    assert bad.code == 2
    assert REDIS_PASSWORD not in bad.stderr
    assert f"REDIS_URL='http://:{MASK}@x' is not valid" in bad.stderr
