"""A variant against the merged model on the same held-out items: kept % with a 95% paired-bootstrap
interval, a verdict (indistinguishable / worse / better) and how many items it would take to tell a loss
of the size that matters.

Paired, because both models answer the same items: what varies is which items they disagree on, and a
variant that gets the same 53 of 60 right as the merged model is not uncertain by the ±4% an unpaired
interval of each score would suggest. The bootstrap resamples items (with a fixed seed, so a report is
reproducible) and reads the interval of the mean difference and of the ratio of means off the same draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z_95 = 1.959963984540054  # two-sided 5%
Z_80 = 0.8416212335729143  # 80% power
DRAWS = 4000
SEED = 20261130


@dataclass
class Paired:
    items: int  # items both models were scored on
    kept: float  # % of the merged model's score kept (oriented: 100 = as good, above = better)
    low: float | None  # 95% interval of kept %; None when the merged score is not positive
    high: float | None
    difference: float  # mean per-item difference, oriented (negative = the variant is worse)
    difference_low: float
    difference_high: float
    verdict: str  # indistinguishable | worse | better
    items_needed: int | None  # items that would tell a loss of (100 - keep)% apart from chance; None: cannot say
    loss_pct: float  # the loss that matters: 100 - keep

    @property
    def enough_items(self) -> bool:
        return self.items_needed is not None and self.items_needed <= self.items


def items_to_tell(spread: float, difference: float) -> int | None:
    """Paired items for a two-sided 5% test to see `difference` with 80% power, given the per-item
    standard deviation of the differences (normal approximation; McNemar's for 0/1 scores)."""
    if difference <= 0 or spread <= 0:
        return None
    return math.ceil(((Z_95 + Z_80) * spread / difference) ** 2)


def compare_items(
    variant: dict[int, float], reference: dict[int, float], higher_is_better: bool, keep: float
) -> Paired | None:
    """None when the two share no item."""
    import numpy as np  # here: the TUI imports the report rules and starts without numpy

    shared = sorted(variant.keys() & reference.keys())
    if not shared:
        return None
    v = np.array([variant[i] for i in shared], dtype=np.float64)
    r = np.array([reference[i] for i in shared], dtype=np.float64)
    sign = 1.0 if higher_is_better else -1.0
    diffs = sign * (v - r)
    draws = np.random.default_rng(SEED).integers(0, len(shared), size=(DRAWS, len(shared)))
    mean_diffs = diffs[draws].mean(axis=1)
    d_low, d_high = (float(x) for x in np.percentile(mean_diffs, [2.5, 97.5]))
    verdict = "worse" if d_high < 0 else "better" if d_low > 0 else "indistinguishable"
    kept = low = high = None
    if r.mean() > 0 and v.mean() >= 0:
        ratios = v[draws].mean(axis=1) / np.maximum(r[draws].mean(axis=1), 1e-300)
        ratios = ratios if higher_is_better else 1.0 / np.maximum(ratios, 1e-300)
        kept = 100.0 * (v.mean() / r.mean() if higher_is_better else r.mean() / max(v.mean(), 1e-300))
        low, high = (float(100.0 * x) for x in np.percentile(ratios, [2.5, 97.5]))
    else:
        kept = 100.0 if diffs.mean() >= 0 else 0.0  # a share means nothing here: as good or not
    spread = float(diffs.std(ddof=1)) if len(shared) > 1 else 0.0
    if spread == 0 and set(np.unique(np.concatenate([v, r]))) <= {0.0, 1.0}:
        # no disagreement seen: the rate could still be up to 3/n (the rule of three, 95%)
        spread = math.sqrt(3.0 / len(shared))
    loss = (100.0 - keep) / 100.0 * abs(float(r.mean()))
    return Paired(
        items=len(shared),
        kept=float(kept),
        low=low,
        high=high,
        difference=float(diffs.mean()),
        difference_low=d_low,
        difference_high=d_high,
        verdict=verdict,
        items_needed=items_to_tell(spread, loss),
        loss_pct=100.0 - keep,
    )


def sample_size_text(paired: Paired) -> str | None:
    """A sentence when the items could not tell a loss of the size that matters (the verdict is
    `indistinguishable` and more items would be needed); None otherwise."""
    if paired.verdict != "indistinguishable" or paired.enough_items:
        return None
    if paired.items_needed is None:
        return f"{paired.items} held-out items cannot tell whether a loss of {paired.loss_pct:g}% happened"
    return (
        f"{paired.items} held-out items are too few to tell a loss of {paired.loss_pct:g}%: "
        f"about {paired.items_needed} would be needed"
    )
