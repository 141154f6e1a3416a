"""``bench/mo_asha_replay.py``: rules replayed on hand-made rung values, counted by hand."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from mo_asha_replay import FullRun, compare, replay, replay_sync, rung_correlations  # noqa: E402
from mo_asha_rules import pareto_selection, top_selection  # noqa: E402

from ltsearch.run.moasha import promote  # noqa: E402

MAX2 = ["max", "max"]


def _full() -> FullRun:
    """Three configurations, 2 seeds, 9 epochs, rungs [1, 3]. At the end ``a`` and ``c``
    are the front (hypervolume against (0, 0): 0.5 x 0.9 + 0.4 x 0.1 = 0.49); ``b`` is
    dominated by ``a``. At rung 1, ``b`` looks best in both objectives."""
    rung = {
        ("a", 1): [0.2, 0.2], ("b", 1): [0.3, 0.3], ("c", 1): [0.1, 0.1],
        ("a", 3): [0.4, 0.4], ("b", 3): [0.3, 0.3], ("c", 3): [0.5, 0.1],
    }  # fmt: skip
    final = {"a": [0.5, 0.9], "b": [0.4, 0.8], "c": [0.9, 0.1]}
    return FullRun(["a", "b", "c"], {c: c for c in "abc"}, rung, final, 9, [1, 3], 2, MAX2)


def test_a_rule_that_never_stops_trains_every_epoch_and_keeps_the_whole_front() -> None:
    full = _full()
    got = replay(full, ["a", "b", "c"], lambda rung, v, rec: True, slots=1)
    assert got.epochs == 3 * 2 * 9 and sorted(got.trained) == ["a", "b", "c"]
    assert got.hv_share == pytest.approx(1.0) and got.hv_share_nadir == pytest.approx(1.0)
    assert got.front_kept == 2 and full.front() == {"a", "c"}
    assert full.hv(["a", "c"], [0, 0]) == pytest.approx(0.5 * 0.9 + 0.4 * 0.1)
    # the nadir: the worst final AP_r (b's 0.4) and AP_f (c's 0.1); b adds nothing there
    assert full.nadir() == pytest.approx([0.4, 0.1])
    assert full.hv(["a", "c"], full.nadir()) == pytest.approx(0.1 * 0.8)


def test_one_slot_decides_in_order_and_counts_the_epochs_of_stopped_configurations() -> None:
    """ASHA-like on AP_r, one at a time: ``a`` is first at each rung (goes on); ``b`` beats
    ``a`` at rung 1 and goes on, then loses to ``a`` at rung 3 with a quota of 1 of 2;
    ``c`` is last of three at rung 1."""
    full = _full()

    def best_half_on_apr(rung: int, v: list[float], rec: list[list[float]]) -> bool:
        return promote([r[:1] for r in rec], v[:1], 2, ["max"])

    got = replay(full, ["a", "b", "c"], best_half_on_apr, slots=1)
    assert got.trained == ["a"]
    # a: 9 epochs x 2 seeds; b: stopped at rung 3; c: stopped at rung 1
    assert got.epochs == 2 * 9 + 2 * 3 + 2 * 1
    assert got.hv_share == pytest.approx(0.45 / 0.49) and got.front_kept == 1
    # against the nadir (0.4, 0.1), a alone spans (0.5 - 0.4) x (0.9 - 0.1), all of it
    assert got.hv_share_nadir == pytest.approx(1.0)


def test_two_slots_interleave_rungs_by_time() -> None:
    """With two slots ``a`` and ``b`` reach rung 1 at the same time (a first, by start);
    ``c`` starts when the first of them stops, so it meets both records at rung 1."""
    full = _full()
    seen: list[tuple[int, list[float], int]] = []

    def log(rung: int, v: list[float], rec: list[list[float]]) -> bool:
        seen.append((rung, v, len(rec)))
        return rung == 1 and v[0] >= 0.2  # a and b pass rung 1; everyone stops at rung 3

    got = replay(full, ["a", "b", "c"], log, slots=2)
    assert [(r, n) for r, _, n in seen] == [(1, 0), (1, 1), (3, 0), (3, 1), (1, 2)]
    assert got.trained == [] and got.epochs == 2 * 3 + 2 * 3 + 2 * 1
    assert got.hv_share == 0.0


def test_compare_replays_every_rule_on_the_same_orders() -> None:
    full = _full()
    rules = {"all": lambda: lambda r, v, rec: True, "none": lambda: lambda r, v, rec: False}
    got = {s.name: s for s in compare(full, rules, orders=5, slots=2)}
    assert np.allclose(got["all"].epoch_share, 1.0) and np.allclose(got["all"].hv_share, 1.0)
    assert np.allclose(got["none"].epoch_share, 2 / 18) and np.allclose(got["none"].hv_share, 0)
    line = "| all | 100% (100-100) | 100.0% (100%) | 100.0% (100%) | 100.0% | 2.00 of 2 | 0% |"
    assert got["all"].line(2) == line


def test_synchronous_halving_decides_each_full_rung_at_once() -> None:
    full = _full()
    # on AP_r, reduction 3: b alone goes on at rung 1 (0.3) and at rung 3
    got = replay_sync(full, top_selection(3, 0))
    assert got.trained == ["b"]
    assert got.epochs == 3 * 2 * 1 + 1 * 2 * 2 + 1 * 2 * 6  # 22
    assert got.hv_share == pytest.approx(0.4 * 0.8 / 0.49) and got.front_kept == 0
    # MO, reduction 2: at rung 1 b (the front) then a (rank 2) go on; at rung 3 a beats b
    got = replay_sync(full, pareto_selection(2, MAX2, "ranked"))
    assert got.trained == ["a"]
    assert got.epochs == 3 * 2 * 1 + 2 * 2 * 2 + 1 * 2 * 6  # 26
    assert got.hv_share == pytest.approx(0.45 / 0.49) and got.front_kept == 1


def test_a_rung_cooldown_counts_as_epochs_at_every_rung_evaluation() -> None:
    """``rung_cost`` (search.early_stopping.cooldown): each evaluation at a rung trains that
    many epochs per seed beyond the run, whether the configuration goes on or stops."""
    full = replace(_full(), rung_cost=0.25)
    # asynchronous, one slot, as above: a passes rungs 1 and 3, b passes 1 and stops at 3,
    # c stops at 1: five rung evaluations of 2 seeds

    def rule(rung: int, v: list[float], rec: list[list[float]]) -> bool:
        return v[0] >= (0.2 if rung == 1 else 0.4)

    got = replay(full, ["a", "b", "c"], rule, slots=1)
    assert got.trained == ["a"]
    assert got.epochs == pytest.approx(2 * 9 + 2 * 3 + 2 * 1 + 5 * 2 * 0.25)
    # synchronous on AP_r, reduction 3: 3 evaluations at rung 1, 1 at rung 3
    got = replay_sync(full, top_selection(3, 0))
    assert got.epochs == pytest.approx(22 + (3 + 1) * 2 * 0.25)


def test_synchronous_front_selection_keeps_every_non_dominated_point() -> None:
    values = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.1, 0.1]])
    # one of four by the quota: the two ends have infinite crowding, the later goes first
    assert pareto_selection(4, MAX2, "ranked")(values) == {1}
    assert pareto_selection(4, MAX2, "front")(values) == {0, 1, 2}
    assert top_selection(2, 0)(np.array([[np.nan, 1.0], [0.2, 0.0], [0.3, 0.0]])) == {1, 2}


def test_rung_correlations_are_spearman_of_each_rung_against_the_end() -> None:
    rho = rung_correlations(_full())
    # rung 1 ranks AP_r b > a > c, the end c > a > b; AP_f rung 1 b > a > c, the end a > b > c
    assert rho[1] == pytest.approx([-1.0, 0.5])
    assert rho[3] == pytest.approx([1.0, 1.0])


def _row(chash: str, seed: int, status: str, apr: float, apf: float) -> dict[str, object]:
    return {"study": "full", "trial_id": f"t-{chash}", "config_hash": chash, "loss": "ce",
            "seed": seed, "status": status, "bbox/APr": apr, "bbox/APf": apf}  # fmt: skip


def test_load_full_leaves_out_a_configuration_that_failed_before_its_first_rung(
    tmp_path: Path,
) -> None:
    from mo_asha_replay import load_full

    from ltsearch.rung_log import CONTINUE, RungRecord, append_log
    from ltsearch.spec.sections import Objective
    from ltsearch.store import ResultStore

    store = ResultStore(tmp_path)
    for chash, apr, apf in (("aaaa", 0.2, 0.5), ("bbbb", 0.4, 0.3)):
        for seed in (0, 1):
            store.write_trial(_row(chash, seed, "ok", apr, apf))
        append_log(tmp_path, RungRecord(chash, 1, [apr / 2, apf / 2], CONTINUE))
    store.write_trial(_row("cccc", 0, "failed", float("nan"), float("nan")))
    objectives = [Objective("bbox/APr", "max"), Objective("bbox/APf", "max")]
    full = load_full(tmp_path, objectives, [1], 3)
    assert full.configs == ["aaaa", "bbbb"] and full.left_out == ["ce"]
    assert full.final["bbbb"] == pytest.approx([40.0, 30.0])  # means over seeds, in %
    # a configuration that failed after a rung would be seen differently by each rule
    append_log(tmp_path, RungRecord("cccc", 1, [0.0, 0.0], CONTINUE))
    with pytest.raises(ValueError, match="failed after a rung"):
        load_full(tmp_path, objectives, [1], 3)
    # unless asked to leave it out, as a run where it failed before the first rung does
    again = load_full(tmp_path, objectives, [1], 3, leave_out_failed=True)
    assert again.configs == ["aaaa", "bbbb"] and again.left_out == ["ce"]
    assert ("cccc", 1) not in again.rung_values
