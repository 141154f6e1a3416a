"""How much of a full run's front is noise: the ceiling of any early-stopping rule.

An early-stopping rule keeps the configurations that look best at a rung, and is scored on
the front of the full run's final means over its seeds. Those means carry seed noise: a
configuration on the observed front may be there because its seeds were lucky. What a rung
could know at best is what a complete run knows, so two questions bound every rule:

- :func:`seed_agreement`: how well one half of the seeds' final values rank the
  configurations as the other half's do (Spearman, per objective). A rung that predicts the
  end as well as this predicts it as well as a second complete training would.
- :func:`split_half_shares`: keep ``keep`` configurations chosen, by the promotion order of
  :mod:`ltsearch.run.moasha`, from one half's final means, and score them on the other
  half's: the share of its hypervolume they hold (against (0, 0) and against the nadir),
  averaged over both directions. This is a rule that waits for the end of an independent
  run, at the budget's number of survivors; no rule deciding at a rung can be expected to
  beat it on new seeds.

Halves: with ``n`` seeds, the first ``n // 2`` against the rest (one seed each for two).

Two more questions need more seeds than the issue's protocol (2) has:

- :func:`protocol_shares`: the protocol scores a rule on the front of seeds 0 and 1 alone.
  Keep the configurations that the mean of *every other* seed puts first (the closest this
  run comes to each configuration's expected final value) and score them there: what a rule
  that knew the expected end exactly, and nothing of seeds 0 and 1's own luck, would keep.
- :func:`ceiling_by_seeds`: the split-half share with ``h`` seeds on each side, for ``h`` = 1
  to ``n // 2`` (the first ``2h`` seeds): does a front repeat once it is averaged over more
  seeds?
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ltsearch.report.pareto import hypervolume
from ltsearch.report.tables import prepare_runs
from ltsearch.run.moasha import promotion_order
from ltsearch.spec.sections import Objective
from ltsearch.store import ResultStore


def seed_table(study_dir: Path, objectives: Sequence[Objective]) -> dict[int, pd.DataFrame]:
    """Per seed, the ok runs' objective values in % (rows: configuration hashes, columns:
    the objectives' metrics), restricted to configurations that have every seed."""
    runs = ResultStore(study_dir).load_trials()
    runs, _ = prepare_runs(runs[runs["status"] == "ok"])
    metrics = [o.metric for o in objectives]
    seeds = sorted(int(s) for s in runs["seed"].unique())
    tables = {s: runs[runs["seed"] == s].set_index("config_hash")[metrics] for s in seeds}
    common = sorted(set.intersection(*(set(t.index) for t in tables.values())))
    return {s: t.loc[common].astype(float) for s, t in tables.items()}


def seed_halves(per_seed: dict[int, pd.DataFrame]) -> tuple[list[int], list[int]]:
    """The first ``n // 2`` seeds and the rest.

    Raises:
        ValueError: fewer than two seeds.
    """
    seeds = sorted(per_seed)
    if len(seeds) < 2:
        raise ValueError("the noise ceiling needs at least two seeds")
    return seeds[: len(seeds) // 2], seeds[len(seeds) // 2 :]


def halves(per_seed: dict[int, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The mean over each of :func:`seed_halves`."""

    first, second = seed_halves(per_seed)
    return _mean(per_seed, first), _mean(per_seed, second)


def seed_agreement(per_seed: dict[int, pd.DataFrame]) -> list[float]:
    """Per objective, the Spearman rank correlation of the two halves' final values."""
    a, b = halves(per_seed)
    return [float(a[c].rank().corr(b[c].rank())) for c in a.columns]


def split_half_shares(
    per_seed: dict[int, pd.DataFrame], directions: Sequence[str], keep: int
) -> tuple[float, float]:
    """The hypervolume share (against (0, ..., 0), against the scored half's nadir) of the
    ``keep`` configurations one half's promotion order puts first, on the other half's
    values; the mean of both directions."""
    a, b = halves(per_seed)
    shares = [chosen_share(a, b, directions, keep), chosen_share(b, a, directions, keep)]
    zero, nadir = np.mean(shares, axis=0)
    return float(zero), float(nadir)


def chosen_share(
    chooser: pd.DataFrame, scored: pd.DataFrame, directions: Sequence[str], keep: int
) -> tuple[float, float]:
    """The share of ``scored``'s hypervolume (against (0, ..., 0), against its nadir) held by
    the ``keep`` configurations that ``chooser``'s promotion order puts first (both tables:
    rows the same configurations, columns the objectives)."""
    pick = promotion_order(chooser.to_numpy(), directions)[:keep]
    values = scored.loc[chooser.index].to_numpy()
    worst = [
        float(values[:, j].min() if d == "max" else values[:, j].max())
        for j, d in enumerate(directions)
    ]
    pair = []
    for ref in ([0.0] * len(directions), worst):
        total = hypervolume(values, directions, ref)
        pair.append(hypervolume(values[pick], directions, ref) / total if total > 0 else 0.0)
    return pair[0], pair[1]


def _mean(per_seed: dict[int, pd.DataFrame], seeds: Sequence[int]) -> pd.DataFrame:
    return sum(per_seed[s] for s in seeds) / len(seeds)  # type: ignore[return-value]


def protocol_shares(
    per_seed: dict[int, pd.DataFrame], directions: Sequence[str], keep: int, protocol: int = 2
) -> tuple[float, float]:
    """Keep the ``keep`` configurations that the mean over every seed after the first
    ``protocol`` puts first; their share of the first ``protocol`` seeds' hypervolume
    (against (0, ..., 0), against the nadir).

    Raises:
        ValueError: no seed beyond the protocol's.
    """
    seeds = sorted(per_seed)
    if len(seeds) <= protocol:
        raise ValueError(f"the protocol's share needs more than {protocol} seeds")
    scored = _mean(per_seed, seeds[:protocol])
    return chosen_share(_mean(per_seed, seeds[protocol:]), scored, directions, keep)


def ceiling_by_seeds(
    per_seed: dict[int, pd.DataFrame], directions: Sequence[str], keep: int
) -> list[tuple[int, list[float], float, float]]:
    """For ``h`` = 1 .. ``n // 2``: ``(h, Spearman per objective, share vs (0, ...), share
    vs the nadir)`` of :func:`split_half_shares` on the first ``2h`` seeds."""
    seeds = sorted(per_seed)
    out = []
    for h in range(1, len(seeds) // 2 + 1):
        part = {s: per_seed[s] for s in seeds[: 2 * h]}
        zero, nadir = split_half_shares(part, directions, keep)
        out.append((h, seed_agreement(part), zero, nadir))
    return out


def budget_survivors(n: int, epochs: int, first_rung: int, budget: float) -> int:
    """How many of ``n`` configurations can train to the end when every one trains to
    ``first_rung`` and the whole run may spend ``budget`` of the full run's epochs."""
    spare = budget * n * epochs - n * first_rung
    return max(0, min(n, int(spare // (epochs - first_rung))))


def ceiling_report(study_dir: Path, objectives: Sequence[Objective], epochs: int) -> None:
    """Print the seed agreement and the split-half shares at the survivors a 1/3 budget with
    a first rung at epoch 1 allows, and at a third and a half of the configurations."""
    per_seed = seed_table(study_dir, objectives)
    n = len(next(iter(per_seed.values())))
    a, b = seed_halves(per_seed)
    names = ", ".join(o.metric for o in objectives)
    rho = " / ".join(f"{r:+.2f}" for r in seed_agreement(per_seed))
    print(f"\nthe noise ceiling: seeds {a} against seeds {b}, {n} configurations")
    print(f"  Spearman rank correlation of the halves' final values ({names}): {rho}")
    directions = [o.direction for o in objectives]
    survivors = budget_survivors(n, epochs, 1, 1 / 3)
    for keep in sorted({survivors, -(-n // 3), -(-n // 2)}):
        zero, nadir = split_half_shares(per_seed, directions, keep)
        print(
            f"  keep {keep} of {n} chosen by one half's complete run, scored on the other's: "
            f"{100 * zero:.1f}% of the hypervolume ({100 * nadir:.1f}% against the nadir)"
        )
    if len(per_seed) < 4:
        return
    print(f"  with more seeds on each side, keeping {survivors}:")
    for h, rhos, zero, nadir in ceiling_by_seeds(per_seed, directions, survivors):
        rho = " / ".join(f"{r:+.2f}" for r in rhos)
        print(
            f"    {h} seed(s) a side: Spearman {rho}, {100 * zero:.1f}% of the hypervolume "
            f"({100 * nadir:.1f}% against the nadir)"
        )
    seeds = sorted(per_seed)
    print(f"  the issue's protocol (the front of seeds {seeds[:2]}), keeping the configurations "
          f"the mean of seeds {seeds[2:]} puts first:")  # fmt: skip
    for keep in sorted({survivors, -(-n // 3), -(-n // 2)}):
        zero, nadir = protocol_shares(per_seed, directions, keep)
        print(
            f"    keep {keep} of {n}: {100 * zero:.1f}% of the hypervolume "
            f"({100 * nadir:.1f}% against the nadir)"
        )


__all__ = [
    "budget_survivors",
    "ceiling_by_seeds",
    "ceiling_report",
    "chosen_share",
    "halves",
    "protocol_shares",
    "seed_agreement",
    "seed_halves",
    "seed_table",
    "split_half_shares",
]
