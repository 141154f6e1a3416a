"""Early-stopping rules replayed on a full run's rung values, over many arrival orders.

One real run per rule says little: which configurations reach a rung first decides what
an asynchronous rule compares them with, and the bench's single grid order is one draw.
Runs are deterministic per (configuration, seed), so the full run of
:mod:`bench_mo_asha` (every configuration trained to the end, evaluated at every rung,
nobody stopped: its ``rungs.jsonl`` holds each configuration's objectives at each rung)
determines what any rule would see at any rung in any order. This module replays a rule on
those values:

- ``slots`` trials at a time (the study's concurrency); a configuration trains each seed in
  turn to a rung (``seeds x epochs`` time units), is decided against the configurations
  decided at that rung before it (asynchronous, as :class:`~ltsearch.run.rung_scheduler.
  RungScheduler`), and frees its slot when stopped or finished; the next configuration of
  the order starts then;
- per order: epochs trained (configuration x seed), the hypervolume of the front of the
  configurations trained to the end (their final means over seeds) as a share of the full
  run's, against (0, 0) and against the nadir (the worst final mean of each objective over
  all configurations), and how many of the full run's front members were kept.

Time is counted in epochs only (a rung evaluation is not): a real run's wall time also has
evaluations and start-ups, so the replay ranks rules by epochs and hypervolume, not by
seconds. A rule is ``rule(rung, values, recorded) -> goes on`` with a fresh state per order.

:func:`replay_sync` replays *synchronous* successive halving on the same values: every
configuration reaches a rung before any is decided there, and the best ``1/reduction`` of
them (by the same orderings) go on. No scheduler of this project runs that way (a study's
early stopping is asynchronous, as the issue asks); the replay tells whether the
asynchronous arrivals, or the rungs' own information, limit a rule.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ltsearch.report.pareto import hypervolume, pareto_rank
from ltsearch.report.tables import prepare_runs, summarize
from ltsearch.rows import row_label
from ltsearch.rung_log import read_log
from ltsearch.spec.sections import Objective
from ltsearch.store import ResultStore

ReplayRule = Callable[[int, list[float], list[list[float]]], bool]
Selection = Callable[[np.ndarray], set[int]]
"""``select(values) -> kept``: which rows of a full rung's ``[n, m]`` values go on."""


@dataclass(frozen=True)
class FullRun:
    """What a full run determines: per configuration (grid order), its rung values, final
    means and label; the run's epochs, rungs and seeds."""

    configs: list[str]  # configuration hashes
    labels: dict[str, str]
    rung_values: dict[tuple[str, int], list[float]]
    final: dict[str, list[float]]
    epochs: int
    rungs: list[int]
    n_seeds: int
    directions: list[str]
    left_out: list[str] = field(default_factory=list)  # failed (labels): see load_full
    rung_cost: float = 0.0  # epochs per seed that a rung evaluation costs (a cooldown)

    def nadir(self) -> list[float]:
        """The worst value of each objective over every configuration's final means."""
        pts = np.array([self.final[c] for c in self.configs], dtype=float)
        return [
            float(pts[:, j].min() if d == "max" else pts[:, j].max())
            for j, d in enumerate(self.directions)
        ]

    def hv(self, trained: Sequence[str], ref: Sequence[float]) -> float:
        pts = np.array([self.final[c] for c in trained], dtype=float)
        return hypervolume(pts.reshape(-1, len(self.directions)), self.directions, ref)

    def hv_shares(self, trained: Sequence[str]) -> tuple[float, float]:
        """The hypervolume of ``trained`` as a share of all configurations', against
        (0, ..., 0) and against :meth:`nadir`. Against 0 the area down to AP 0 counts, which
        the best AP_r alone nearly fills when AP_f varies little; against the nadir only
        the region the configurations span, the trade-off itself."""
        out = []
        for ref in ([0.0] * len(self.directions), self.nadir()):
            total = self.hv(self.configs, ref)
            out.append(self.hv(trained, ref) / total if total > 0 else math.nan)
        return out[0], out[1]

    def front(self) -> set[str]:
        pts = np.array([self.final[c] for c in self.configs], dtype=float)
        ranks = pareto_rank(pts, self.directions)
        return {c for c, r in zip(self.configs, ranks, strict=True) if r == 1}


def load_full(study_dir: Path, objectives: Sequence[Objective], rungs: Sequence[int],
              epochs: int, leave_out_failed: bool = False,
              rung_cost: float = 0.0) -> FullRun:  # fmt: skip
    """Read a full run (nobody stopped) of :mod:`bench_mo_asha`.

    A configuration whose run failed before its first rung (a loss that diverged in the
    first epoch) fails the same way under every rule: it is left out, named in
    ``FullRun.left_out``. One that failed after a rung would be seen differently by
    different rules (it takes a rung's place, and spends epochs until it fails), and the
    run is refused, unless ``leave_out_failed``: then it is left out too, as if it had
    never been asked (to compare with a run where it failed before the first rung).
    ``rung_cost``: the epochs (per seed) each rung evaluation trains beyond the run's own,
    ``search.early_stopping.cooldown``; the replays count them as epochs spent."""
    records = read_log(study_dir)
    runs = ResultStore(study_dir).load_trials()
    if (runs["status"] == "stopped").any():
        raise ValueError(f"{study_dir}: the full run has stopped rows: not a full run")
    bad = set(runs.loc[runs["status"] != "ok", "config_hash"].astype(str))
    if bad & {r.config_hash for r in records} and not leave_out_failed:
        raise ValueError(f"{study_dir}: a configuration failed after a rung: {sorted(bad)}")
    failed = runs["config_hash"].astype(str).isin(bad)
    left_out = sorted({row_label(r) for _, r in runs[failed].iterrows()})
    runs = runs[~failed]
    seeds = int(runs["seed"].nunique())
    runs, _ = prepare_runs(runs)
    metrics = [o.metric for o in objectives]
    table = summarize(runs, list(objectives), metrics).configs
    final = {
        str(h): [float(table.loc[i, f"{m}.mean"]) for m in metrics]
        for i, h in zip(table.index, table["config_hash"], strict=True)
    }
    labels = dict(zip(table["config_hash"].astype(str), table["label"], strict=True))
    records = [r for r in records if r.config_hash not in bad]
    values = {(r.config_hash, r.rung): list(r.values) for r in records}
    configs = list(dict.fromkeys(r.config_hash for r in records if r.rung == rungs[0]))
    missing = [(c, r) for c in configs for r in rungs if (c, r) not in values]
    if missing or set(configs) != set(final):
        raise ValueError(f"{study_dir}: not a full run with every rung recorded ({missing[:3]})")
    return FullRun(configs, labels, values, final, epochs, list(rungs), seeds,
                   [o.direction for o in objectives], left_out, rung_cost)  # fmt: skip


@dataclass(frozen=True)
class Replay:
    epochs: float
    trained: list[str]
    hv_share: float  # against (0, 0)
    hv_share_nadir: float
    front_kept: int


def replay(full: FullRun, order: Sequence[str], rule: ReplayRule, slots: int) -> Replay:
    """One asynchronous run of ``rule`` with configurations started in ``order``."""
    milestones = [r for r in full.rungs if r < full.epochs] + [full.epochs]
    events: list[tuple[float, int, str, int]] = []  # (time, tie, config, milestone index)
    queue = list(order)
    tie = 0

    def start(at: float) -> None:
        nonlocal tie
        if queue:
            c = queue.pop(0)
            heapq.heappush(events, (at + full.n_seeds * milestones[0], tie, c, 0))
            tie += 1

    for _ in range(slots):
        start(0.0)
    recorded: dict[int, list[list[float]]] = {r: [] for r in milestones[:-1]}
    epochs: float = 0.0
    trained: list[str] = []
    while events:
        t, _, c, i = heapq.heappop(events)
        rung = milestones[i]
        if i == len(milestones) - 1:
            epochs += full.n_seeds * rung
            trained.append(c)
            start(t)
            continue
        values = full.rung_values[(c, rung)]
        go_on = rule(rung, values, recorded[rung])
        recorded[rung].append(values)
        cost = full.n_seeds * full.rung_cost  # the rung's evaluation
        epochs += cost
        if go_on:
            step = milestones[i + 1] - rung
            heapq.heappush(events, (t + cost + full.n_seeds * step, tie, c, i + 1))
            tie += 1
        else:
            epochs += full.n_seeds * rung
            start(t + cost)
    zero, nadir = full.hv_shares(trained)
    return Replay(epochs, trained, zero, nadir, len(full.front() & set(trained)))


def rung_correlations(full: FullRun) -> dict[int, list[float]]:
    """Per rung epoch of the full run, each objective's Spearman rank correlation between the
    configurations' values there and their final means: how well the rung predicts the end
    (a rule decides on the rung's order)."""
    import pandas as pd

    final = pd.DataFrame([full.final[c] for c in full.configs])
    out = {}
    for rung in full.rungs:
        at = pd.DataFrame([full.rung_values[(c, rung)] for c in full.configs])
        out[rung] = [
            float(at[j].rank().corr(final[j].rank())) for j in range(len(full.directions))
        ]
    return out


def replay_sync(full: FullRun, select: Selection) -> Replay:
    """Synchronous successive halving: every configuration still in reaches the rung, then
    ``select`` picks those that go on. Independent of the arrival order."""
    alive, epochs, before = list(full.configs), 0.0, 0
    for rung in [r for r in full.rungs if r < full.epochs]:
        epochs += len(alive) * full.n_seeds * (rung - before + full.rung_cost)
        before = rung
        values = np.array([full.rung_values[(c, rung)] for c in alive], dtype=float)
        keep = select(values)
        alive = [c for i, c in enumerate(alive) if i in keep]
    epochs += len(alive) * full.n_seeds * (full.epochs - before)
    zero, nadir = full.hv_shares(alive)
    return Replay(epochs, alive, zero, nadir, len(full.front() & set(alive)))


@dataclass(frozen=True)
class Summary:
    name: str
    epoch_share: np.ndarray  # per order
    hv_share: np.ndarray  # against (0, 0)
    hv_share_nadir: np.ndarray
    front_kept: np.ndarray

    def line(self, n_front: int) -> str:
        e, h, n = self.epoch_share, self.hv_share, self.hv_share_nadir
        ok = np.mean((e <= 1 / 3 + 1e-9) & (n >= 0.95))
        return (
            f"| {self.name} | {100 * e.mean():.0f}% ({100 * e.min():.0f}-{100 * e.max():.0f}) "
            f"| {100 * h.mean():.1f}% ({100 * np.mean(h >= 0.95):.0f}%) "
            f"| {100 * n.mean():.1f}% ({100 * np.mean(n >= 0.95):.0f}%) "
            f"| {100 * np.percentile(n, 10):.1f}% | {self.front_kept.mean():.2f} of {n_front} "
            f"| {100 * ok:.0f}% |"
        )


def compare(full: FullRun, rules: dict[str, Callable[[], ReplayRule]], orders: int,
            slots: int, seed: int = 0) -> list[Summary]:  # fmt: skip
    """Each rule on the grid order and ``orders - 1`` random permutations of it (the same
    permutations for every rule)."""
    rng = np.random.default_rng(seed)
    perms = [list(full.configs)] + [
        [full.configs[i] for i in rng.permutation(len(full.configs))] for _ in range(orders - 1)
    ]
    full_epochs = len(full.configs) * full.n_seeds * full.epochs
    out = []
    for name, make in rules.items():
        runs = [replay(full, p, make(), slots) for p in perms]
        out.append(
            Summary(
                name,
                np.array([r.epochs / full_epochs for r in runs]),
                np.array([r.hv_share for r in runs]),
                np.array([r.hv_share_nadir for r in runs]),
                np.array([r.front_kept for r in runs]),
            )
        )
    return out


def sync_summary(name: str, full: FullRun, select: Selection) -> Summary:
    """:func:`replay_sync` as a :class:`Summary` row (one outcome: no order to vary)."""
    r = replay_sync(full, select)
    total = len(full.configs) * full.n_seeds * full.epochs
    one = lambda x: np.array([x], dtype=float)  # noqa: E731
    return Summary(name, one(r.epochs / total), one(r.hv_share), one(r.hv_share_nadir),
                   one(r.front_kept))  # fmt: skip


HEADER = (
    "| rule | epochs, mean (min-max) | hypervolume vs (0, 0): mean (orders >= 95%) "
    "| hypervolume vs nadir: mean (orders >= 95%) | its 10th percentile "
    "| full-front members kept | orders meeting both targets (nadir) |\n"
    "|---|---|---|---|---|---|---|"
)

__all__ = [
    "HEADER",
    "FullRun",
    "Replay",
    "ReplayRule",
    "Selection",
    "Summary",
    "compare",
    "load_full",
    "replay",
    "replay_sync",
    "rung_correlations",
    "sync_summary",
]
