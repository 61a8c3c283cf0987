"""Per-item signal of a rubric over a window: does each item tell the responses to one prompt apart?

GRPO and RLOO learn from differences *within* a group (the completions of one prompt). An item whose score never
varies inside a group adds nothing to the advantage however high or low it is: it is **saturated**. For each
item of a rubric version this module measures, over the window's samples scored under that version:

* ``within_std``: the population standard deviation of the item's points inside each group of two or more
  samples, averaged over the groups (in points, and as a share of the item's span);
* ``corr_total``: the Pearson correlation of the item's points with the sample's total over the window.

An item is saturated when its within-group spread is at most ``saturated_std`` of its span. The meta-reward model
is told which items are saturated, the values are logged as ``rubric/item_std/<item>``, and with
``mpo.prune_saturated`` a saturated item is dropped from the merged rubric.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from metapo.reward.records import ScoredSample
from metapo.rubric.model import Rubric


@dataclass(frozen=True)
class ItemSignal:
    """The signal of one item over a window."""

    item_id: str
    title: str
    within_std: float | None
    within_std_share: float | None
    corr_total: float | None
    groups: int
    samples: int
    saturated: bool

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    if len(x) < 2:
        return None
    sx, sy = statistics.pstdev(x), statistics.pstdev(y)
    if sx == 0 or sy == 0:
        return None
    mx, my = statistics.fmean(x), statistics.fmean(y)
    return sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / (len(x) * sx * sy)


def item_signals(
    rubric: Rubric, version: int, window: Sequence[ScoredSample], saturated_std: float = 0.02
) -> list[ItemSignal]:
    """Signal of every item of ``rubric`` (version ``version``) over the window's samples scored under it.

    An item needs at least one group of two or more scored samples to be judged; otherwise its spread is
    ``None`` and it is not called saturated.
    """
    scored = [
        s
        for s in window
        if s.rubric_version == version and s.raw_score is not None and s.gate is None and s.item_scores
    ]
    out = []
    for item in rubric.items:
        rows = [s for s in scored if item.id in s.item_scores]
        groups: dict[str, list[float]] = defaultdict(list)
        for s in rows:
            groups[s.prompt].append(float(s.item_scores[item.id]))
        spreads = [statistics.pstdev(v) for v in groups.values() if len(v) >= 2]
        within = statistics.fmean(spreads) if spreads else None
        share = within / item.span if within is not None and item.span else None
        corr = _pearson([float(s.item_scores[item.id]) for s in rows], [float(s.raw_score or 0.0) for s in rows])
        out.append(
            ItemSignal(
                item.id,
                item.title,
                within,
                share,
                corr,
                len(spreads),
                len(rows),
                saturated=share is not None and share <= saturated_std,
            )
        )
    return out


def describe(signals: Sequence[ItemSignal]) -> str:
    """The signal as a paragraph for the meta-reward model's analysis prompt ("" when nothing was measured)."""
    lines = []
    for s in signals:
        if s.within_std is None:
            continue
        corr = "n/a" if s.corr_total is None else f"{s.corr_total:.2f}"
        line = (
            f"- {s.title}: spread within a prompt's responses {s.within_std:.2f} points "
            f"({100 * (s.within_std_share or 0.0):.0f}% of its range), correlation with the total {corr}"
        )
        if s.saturated:
            line += (
                " - SATURATED: it gives every response to the same prompt the same score, so it cannot tell "
                "better responses from worse ones; rewrite it so it separates them, or drop it"
            )
        lines.append(line)
    if not lines:
        return ""
    return (
        "How each current item separated the responses to the same prompt over the recent window (the training "
        "signal comes from these differences):\n" + "\n".join(lines)
    )


def prune(candidate: Rubric, saturated: Sequence[ItemSignal]) -> tuple[Rubric, list[str]]:
    """Drop the candidate's items that repeat a saturated item (same id or same title, ignoring case).

    Never leaves a rubric without an item that awards points: then nothing is pruned.
    """
    ids = {s.item_id for s in saturated if s.saturated}
    titles = {s.title.casefold() for s in saturated if s.saturated}
    kept = tuple(i for i in candidate.items if i.id not in ids and i.title.casefold() not in titles)
    if len(kept) == len(candidate.items) or not any(i.max_score > 0 for i in kept):
        return candidate, []
    dropped = [i.title for i in candidate.items if i not in kept]
    return Rubric(kept), dropped
