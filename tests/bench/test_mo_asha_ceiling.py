"""``bench/mo_asha_ceiling.py``: the noise ceiling of early stopping, on hand-made values
counted by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from mo_asha_ceiling import (  # noqa: E402
    budget_survivors,
    ceiling_by_seeds,
    halves,
    protocol_shares,
    seed_agreement,
    seed_table,
    split_half_shares,
)

MAX2 = ["max", "max"]
COLS = ["bbox/APr", "bbox/APf"]


def _seeds() -> dict[int, pd.DataFrame]:
    """Seed 0: a (10, 90), b (40, 80), c (90, 10), all on its front. Seed 1: a (50, 90)
    dominates b (40, 80); c (90, 10)."""
    idx = ["a", "b", "c"]
    return {
        0: pd.DataFrame([[10, 90], [40, 80], [90, 10]], index=idx, columns=COLS, dtype=float),
        1: pd.DataFrame([[50, 90], [40, 80], [90, 10]], index=idx, columns=COLS, dtype=float),
    }


def test_seed_agreement_is_spearman_between_the_halves() -> None:
    # AP_r ranks a, b, c: (1, 2, 3) against (2, 1, 3): 1 - 6 * 2 / (3 * 8) = 0.5
    assert seed_agreement(_seeds()) == pytest.approx([0.5, 1.0])


def test_split_half_shares_score_one_halfs_choice_on_the_other() -> None:
    # seed 0 chooses c (its front's ends tie at infinite crowding: the later row first);
    # seed 1's hypervolume: a 50 x 90 plus c's strip 40 x 10 = 4900, of which c holds 900.
    # seed 1 chooses c too (front {a, c}); seed 0's: c 900 + b 40 x 70 + a 10 x 10 = 3800.
    zero, nadir = split_half_shares(_seeds(), MAX2, keep=1)
    assert zero == pytest.approx((900 / 4900 + 900 / 3800) / 2)
    assert nadir == pytest.approx(0.0)  # c has the worst AP_f: nothing above the nadir
    assert split_half_shares(_seeds(), MAX2, keep=3) == pytest.approx((1.0, 1.0))


def test_protocol_shares_score_the_other_seeds_choice_on_the_first_two() -> None:
    # seeds 0-1 mean: a (30, 90), b (40, 80), c (90, 10), all on the front; hypervolume vs
    # (0, 0): 30 x 90 + 10 x 80 + 50 x 10 = 4000; vs the nadir (30, 10): only b's 10 x 70.
    # Seed 2 puts a first (it dominates there): a holds 2700 of 4000 and nothing above the
    # nadir.
    idx = ["a", "b", "c"]
    per_seed = {**_seeds(), 2: pd.DataFrame([[99, 99], [1, 1], [2, 2]], index=idx,
                                            columns=COLS, dtype=float)}  # fmt: skip
    assert protocol_shares(per_seed, MAX2, keep=1) == pytest.approx((2700 / 4000, 0.0))
    assert protocol_shares(per_seed, MAX2, keep=3) == pytest.approx((1.0, 1.0))
    with pytest.raises(ValueError, match="more than 2 seeds"):
        protocol_shares(_seeds(), MAX2, keep=1)


def test_ceiling_by_seeds_grows_the_halves_one_seed_a_side_at_a_time() -> None:
    # seeds 0..3 alternate the two tables: 1 a side is the hand count above; 2 a side
    # compares two equal means (Spearman 1), where keep 1 takes c (the later front end):
    # 90 x 10 of 4000 vs (0, 0), nothing above the nadir.
    per_seed = {s: _seeds()[s % 2] for s in range(4)}
    (h1, rho1, zero1, nadir1), (h2, rho2, zero2, nadir2) = ceiling_by_seeds(per_seed, MAX2, 1)
    assert (h1, h2) == (1, 2)
    assert rho1 == pytest.approx([0.5, 1.0])
    assert (zero1, nadir1) == pytest.approx(((900 / 4900 + 900 / 3800) / 2, 0.0))
    assert rho2 == pytest.approx([1.0, 1.0])
    assert (zero2, nadir2) == pytest.approx((900 / 4000, 0.0))
    assert len(ceiling_by_seeds({**per_seed, 4: per_seed[0]}, MAX2, 1)) == 2  # 5 seeds: 2 a side


def test_halves_average_the_first_and_the_second_half_of_the_seeds() -> None:
    per_seed = {s: _seeds()[s % 2] + s for s in range(4)}  # seeds 0..3
    first, second = halves(per_seed)
    assert first.loc["a", "bbox/APr"] == pytest.approx((10 + 0 + 50 + 1) / 2)
    assert second.loc["a", "bbox/APr"] == pytest.approx((10 + 2 + 50 + 3) / 2)
    with pytest.raises(ValueError, match="two seeds"):
        halves({0: _seeds()[0]})


def test_budget_survivors_at_a_third_of_the_epochs() -> None:
    # 16 x 1 epoch spent, then (16 x 9 / 3 - 16) / 8 = 4 can train their 8 more epochs
    assert budget_survivors(16, 9, 1, 1 / 3) == 4
    assert budget_survivors(64, 9, 1, 1 / 3) == 16
    assert budget_survivors(16, 9, 2, 1 / 3) == 2  # (48 - 32) / 7
    assert budget_survivors(16, 9, 3, 1 / 3) == 0


def test_seed_table_reads_ok_rows_of_configurations_with_every_seed(tmp_path: Path) -> None:
    from ltsearch.store import ResultStore

    store = ResultStore(tmp_path)
    rows = [("aaaa", 0, "ok", 0.1), ("aaaa", 1, "ok", 0.3), ("bbbb", 0, "ok", 0.2),
            ("bbbb", 1, "failed", float("nan"))]  # fmt: skip
    for chash, seed, status, apr in rows:
        store.write_trial({"study": "s", "trial_id": f"t-{chash}-{seed}", "config_hash": chash,
                           "loss": "ce", "seed": seed, "status": status, "bbox/APr": apr,
                           "bbox/APf": 0.5})  # fmt: skip
    from ltsearch.spec.sections import Objective

    per_seed = seed_table(tmp_path, [Objective("bbox/APr", "max"), Objective("bbox/APf", "max")])
    assert sorted(per_seed) == [0, 1] and list(per_seed[1].index) == ["aaaa"]
    assert per_seed[1].loc["aaaa"].tolist() == pytest.approx([30.0, 50.0])  # in %
