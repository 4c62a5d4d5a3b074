"""``make demo``'s own checks, on a smaller feed: the documented first command must keep
passing as the product changes (it is not otherwise run by ``make test``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.demo import demo


@pytest.mark.timeout(180)
async def test_the_demo_passes_its_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await demo(3000, 10, tmp_path / "demo") == 0
    out = capsys.readouterr().out
    assert "check: the workspace holds exactly the accepted set, each once" in out
    assert "revoked the" in out
    assert "revoked the 20 downgraded and the suppressed one" in out
    assert "revoked_suppressed              1" in out
    assert "the uploader rebuilt the seen cache from the workspace (" in out
    assert "1 suppression" in out
    assert "check: nothing lost, nothing uploaded twice, the workspace matches" in out
    assert out.rstrip().endswith("demo passed")
