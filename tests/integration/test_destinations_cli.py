"""The commands with ``DESTINATIONS_FILE``, run as a user runs them, in child processes:
``check-config`` checks and prints every destination, a filter or uploader must be told its
destination, operator commands answer one section per destination (or the one named), and a
bad file is one line per problem, naming the destination, with no secret in it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from services.cli.redis_server import LocalRedis
from shared.core.secrets import MASK
from tests.commands import CliResult, run_bare
from tests.helpers import CONTOSO_SECRET, SECRETS, TWO_DESTINATIONS, destinations_env


def environ(tmp_path: Path, text: str = TWO_DESTINATIONS, **more: str) -> dict[str, str]:
    """Two destinations over an environment whose own minimum is 70."""
    return destinations_env(tmp_path, text, MINIMUM_CONFIDENCE="70", **more)


def sections(done: CliResult) -> list[str]:
    return [line for line in done.stdout.splitlines() if line.startswith("== destination ")]


def documents(text: str) -> list[Any]:
    """The JSON documents of a command's output, one after another (as ``jq`` reads them)."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        document, at = decoder.raw_decode(text, at)
        found.append(document)
    return found


def no_secret_in(done: CliResult) -> None:
    for secret in (*SECRETS.values(), CONTOSO_SECRET):
        assert secret not in done.output


async def test_check_config_prints_every_destination_with_its_own_values(tmp_path: Path) -> None:
    done = await run_bare(environ(tmp_path), "check-config")
    assert done.code == 0, done.stderr
    assert sections(done) == ["== destination contoso ==", "== destination fabrikam-gov =="]
    contoso, fabrikam = done.stdout.split("== destination fabrikam-gov ==")
    assert re.search(r"^MINIMUM_CONFIDENCE +90$", contoso, re.MULTILINE)
    assert re.search(r"^MINIMUM_CONFIDENCE +70$", fabrikam, re.MULTILINE)
    assert "https://login.microsoftonline.us" in fabrikam
    assert "https://login.microsoftonline.us" not in contoso
    assert MASK in contoso
    no_secret_in(done)
    one = await run_bare(environ(tmp_path), "check-config", "--destination", "contoso")
    assert one.code == 0, one.stderr
    assert sections(one) == []
    assert re.search(r"^DESTINATION +contoso$", one.stdout, re.MULTILINE)


async def test_a_bad_file_is_one_line_per_problem_naming_the_destination(tmp_path: Path) -> None:
    text = """\
destinations:
  contoso:
    AZURE_CLIENT_SECRET: contoso-secret-Vb83Qw
    MINIMUM_CONFIDENCE: 900
  fabrikam-gov:
    REDIS_URL: redis://elsewhere:6379/0
"""
    done = await run_bare(environ(tmp_path, text), "check-config")
    assert done.code == 2
    lines = done.stderr.strip().splitlines()
    assert lines[0] == "mati2sentinel: invalid settings:"
    assert [line.strip()[:48] for line in lines[1:]] == [
        "DESTINATIONS_FILE: contoso: AZURE_CLIENT_SECRET ",
        "DESTINATIONS_FILE: fabrikam-gov: REDIS_URL is no",
    ]
    no_secret_in(done)


async def test_a_filter_must_be_told_which_destination_it_serves(tmp_path: Path) -> None:
    done = await run_bare(environ(tmp_path), "filter")
    assert done.code == 2
    assert done.stderr.strip().splitlines()[1].strip() == (
        "DESTINATIONS_FILE declares contoso, fabrikam-gov: choose the destination this "
        "process serves with --destination NAME or DESTINATION"
    )
    unknown = await run_bare(environ(tmp_path), "uploader", "--destination", "northwind")
    assert unknown.code == 2
    assert "destination 'northwind' is not in DESTINATIONS_FILE" in unknown.stderr


async def test_operator_commands_answer_per_destination(
    tmp_path: Path, redis_server: LocalRedis
) -> None:
    env = environ(tmp_path, REDIS_URL=redis_server.url)
    done = await run_bare(env, "status")
    assert done.code == 0, done.stderr
    assert sections(done) == ["== destination contoso ==", "== destination fabrikam-gov =="]
    assert "destination  contoso" in done.stdout
    assert "destination  fabrikam-gov" in done.stdout
    as_json = await run_bare(env, "status", "--json")
    assert as_json.code == 0, as_json.stderr
    answered = documents(as_json.stdout)
    assert [d["destination"] for d in answered] == ["contoso", "fabrikam-gov"]
    one = await run_bare(env, "dlq", "list", "--destination", "fabrikam-gov")
    assert one.code == 0, one.stderr
    assert sections(one) == []
    listed = await run_bare(env, "suppress", "list", "--json")
    assert listed.code == 0, listed.stderr
    assert [d["destination"] for d in documents(listed.stdout)] == ["contoso", "fabrikam-gov"]
    no_secret_in(done)
