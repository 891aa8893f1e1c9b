"""The quality scores of a saliency store, in one registry (`satpipe list scores`).

Each score says what it measures, which way is better, and what a map that knows nothing
would score (its chance value): a closed form where one exists (a map independent of the
object puts the area share of its mass inside it), else the same score measured on the same
images with the map replaced by chance (a random pixel order, for the deletion and insertion
curves). So every number can be read against its chance value at a glance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from satpipe.core.registry import Registry

FAMILIES = ("localisation", "faithfulness", "sanity")


@dataclass(frozen=True)
class Score:
    """One quality score.

    family: localisation (needs masks or boxes), faithfulness or sanity (need the source
    model). higher_is_better: the direction. chance: how its chance value is obtained, in
    words (the provenance records the number). summary: what it measures, one line.
    reference: where the score comes from. fn / chance_fn: per-image value and chance value
    (localisation scores: `fn(a, pos, m) -> (B,)`, see localisation.py); the other families
    compute their scores together and leave them None.
    """

    name: str
    family: str
    summary: str
    higher_is_better: bool
    chance: str
    reference: str = ""
    fn: Callable[..., Any] | None = None
    chance_fn: Callable[..., Any] | None = None

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


SCORES: Registry[Score] = Registry("quality score", plural="scores")


def register_score(score: Score) -> Score:
    if score.family not in FAMILIES:
        raise ValueError(f"score family {score.family!r} not in {FAMILIES}")
    return SCORES.register(score.name, score, summary=score.summary)


def family_scores(family: str) -> list[str]:
    """Names of the registered scores of `family`, in registration order."""
    return [name for name, s in SCORES.items() if s.family == family]
