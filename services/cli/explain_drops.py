"""Why the destination's filters dropped an indicator, in the words of the settings that
decided it: the half of an ``explain`` verdict an operator acts on (change a setting, or
accept the drop). Pure, like ``services.cli.explain_core``, which uses it.
"""

from __future__ import annotations

from shared.core.filters import DropReason, FilterPolicy, excluded_lists
from shared.core.indicator import Indicator, IndicatorType


def drop_detail(reason: DropReason, indicator: Indicator, policy: FilterPolicy) -> str:
    """Why ``reason`` fired, with the numbers and the setting that decided it."""
    if reason is DropReason.TYPE_EXCLUDED:
        kind = "hash" if indicator.type is IndicatorType.MD5 else indicator.type.value
        text = f"type {indicator.type} is excluded (INCLUDE_{kind.upper()}=false)"
    elif reason is DropReason.LOW_CONFIDENCE:
        text = _below("mscore", indicator.mscore, "MINIMUM_CONFIDENCE", policy.minimum_confidence)
    elif reason is DropReason.LOW_THREAT_SCORE:
        text = _below(
            "threat_rating.threat_score",
            indicator.threat_score,
            "MINIMUM_THREAT_SCORE",
            policy.minimum_threat_score,
        )
    elif reason is DropReason.OSINT:
        names = ", ".join(s.name for s in indicator.sources)
        text = f"every source is OSINT ({names}) and EXCLUDE_OSINT=true"
    elif reason is DropReason.UNCATEGORIZED:
        text = "no category, and INCLUDE_UNCATEGORIZED=false"
    elif reason is DropReason.WARNINGLIST:
        names = ", ".join(excluded_lists(indicator, policy))
        text = f"on MISP warning list(s) {names}, excluded by EXCLUDE_WARNINGLISTS"
    elif reason is DropReason.WARNINGLIST_UNKNOWN:
        text = (
            "MATI sent no warning-list flags although EXCLUDE_WARNINGLISTS is set: set it for "
            "the fetcher too, then run sync --once --full"
        )
    else:
        wanted = policy.hash_selection.value
        text = f"no {wanted} hash in associated_hashes (HASH_TYPE={wanted})"
    return text


def _below(path: str, score: int | None, setting: str, minimum: int) -> str:
    """Both score floors drop an indicator that lacks the score as well as one under it; the
    operator needs to know which of the two it was."""
    if score is None:
        return f"no {path}, and {setting} {minimum} needs one"
    return f"{path.rpartition('.')[2]} {score} < {setting} {minimum}"
