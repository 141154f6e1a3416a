"""Packed trials' bookkeeping (:class:`PackBook`, no Ray) and the pack size rule.

The end-to-end study with packs is in test_runner.py (it compares with the same study
unpacked).
"""

from __future__ import annotations

from typing import Any

import pytest

from ltsearch.errors import SpecError
from ltsearch.run.packing import PACK_MAX, PackBook, pack_size
from ltsearch.spec.study import spec_from_dict


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def book(size: int = 3, concurrency: int = 3, total: int = 10) -> tuple[PackBook, Clock]:
    clock = Clock()
    return PackBook(size, concurrency, total, wait_s=30.0, quiet_s=5.0, stale_s=180.0,
                    clock=clock), clock  # fmt: skip


def test_a_full_group_is_one_pack_led_by_its_first_member() -> None:
    b, _ = book()
    for t in "abc":
        b.enter(t)
    b.join("a", "ra", "k0", "cfg-a")
    b.join("b", "rb", "k0", "cfg-b")
    assert b.answer("ra") is None and b.answer("rb") is None  # c is free: it may come
    b.join("c", "rc", "k0", "cfg-c")
    lead = b.answer("ra")
    assert lead is not None and lead[0] == "lead"
    assert lead[2] == [("ra", "cfg-a"), ("rb", "cfg-b"), ("rc", "cfg-c")]
    assert b.answer("rb") == ("wait", lead[1], 3) and b.answer("rc") == ("wait", lead[1], 3)
    assert b.result("rb") is None  # its pack runs
    b.post(lead[1], {"rb": "result-b", "rc": ValueError("c failed")})
    assert b.result("rb") == ("done", "result-b")
    got = b.result("rc")
    assert got is not None and isinstance(got[1], ValueError)
    assert not b.busy and not b.packs  # every trial is free again


def test_a_process_that_led_before_leads_again() -> None:
    b, _ = book(size=2, concurrency=2, total=4)
    b.join("a", "ra", "k0", 1, pid=11)
    b.join("b", "rb", "k0", 2, pid=22)
    first = b.answer("rb")
    assert first is not None and first[0] == "wait" and b.answer("ra") is not None
    b.post(first[1], {"rb": "x"})
    b.join("c", "rc", "k1", 3, pid=33)  # a new trial's process joins first ...
    b.join("d", "rd", "k1", 4, pid=11)  # ... and a's process, which led, comes second
    lead = b.answer("rd")
    assert lead is not None and lead[0] == "lead" and [r for r, _ in lead[2]] == ["rd", "rc"]


def test_a_group_waits_for_free_trials_then_goes_when_none_can_join() -> None:
    b, clock = book(size=4, concurrency=3)
    for t in "abc":
        b.enter(t)
    b.join("a", "ra", "k1", 1)
    b.join("b", "rb", "k0", 2)  # another seed: another group
    clock.now = 2.0
    assert b.answer("ra") is None  # c runs on its own (it may join)
    b.join("c", "rc", "k1", 3)
    # every live trial waits in a group: each group goes as it is
    assert b.answer("ra") == ("lead", b.pack_of["ra"], [("ra", 1), ("rc", 3)])
    assert b.answer("rb") == ("lead", b.pack_of["rb"], [("rb", 2)])


def test_fewer_live_trials_than_expected_wait_for_the_quiet_and_whole_waits() -> None:
    b, clock = book(size=8, concurrency=8)
    b.join("a", "ra", "k", 1)
    clock.now = 4.0
    b.join("b", "rb", "k", 2)  # trials still starting: the group keeps waiting
    clock.now = 8.9
    assert b.answer("ra") is None
    clock.now = 9.0  # 5 s without a new member
    assert b.answer("ra") is not None
    b2, clock2 = book(size=12, concurrency=12, total=20)
    for i in range(8):  # members keep coming, 4 s apart: the whole wait (30 s) bounds it
        clock2.now = 4.0 * i
        b2.join(f"t{i}", f"r{i}", "k", i)
        assert b2.answer("r0") is None
    clock2.now = 30.0
    assert b2.answer("r0") is not None


def test_members_beyond_the_size_form_the_next_pack() -> None:
    b, _ = book(size=2, concurrency=3)
    for t in "abc":
        b.join(t, f"r{t}", "k", t)
    first = b.answer("ra")
    assert first is not None and first[0] == "lead" and len(first[2]) == 2
    # c is the only one left in its group and every live trial waits: it goes alone
    assert b.answer("rc") == ("lead", b.pack_of["rc"], [("rc", "c")])


def test_the_last_trials_spread_over_the_slots_no_pack_runs_on() -> None:
    """12 concurrent trials in packs of 6 on 2 slots: the study's last 6 trials make two
    packs of 3 when both slots are free, one pack of 6 when one slot runs a pack."""
    b, _ = book(size=6, concurrency=12, total=12)
    assert b.slots == 2
    for i in range(6):
        b.leave(f"done{i}")  # half the study's trials are finished
    for i in range(6):
        b.join(f"t{i}", f"r{i}", "k", i)
    leads = [a for i in range(6) if (a := b.answer(f"r{i}")) is not None and a[0] == "lead"]
    assert sorted(len(a[2]) for a in leads) == [3, 3]
    b2, _ = book(size=6, concurrency=12, total=13)
    for i in range(6):
        b2.leave(f"done{i}")
    b2.join("x", "rx", "other-seed", 0)  # another seed: its own pack, on one slot
    assert b2.answer("rx") is None  # 6 more trials are expected: it waits for them first
    for i in range(6):
        b2.join(f"t{i}", f"r{i}", "k", i)
    lead = b2.answer("r0")
    assert lead is not None and lead[0] == "lead" and len(lead[2]) == 6
    assert b2.answer("rx") is not None


def test_a_silent_leader_dissolves_its_pack_and_members_run_alone() -> None:
    b, clock = book(size=2)
    b.join("a", "ra", "k", 1)
    b.join("b", "rb", "k", 2)
    lead = b.answer("ra")
    assert lead is not None
    clock.now = 100.0
    b.beat(lead[1])
    clock.now = 279.0
    assert b.result("rb") is None  # beat 179 s ago
    clock.now = 281.0
    assert b.result("rb") == ("alone",)
    b.post(lead[1], {"rb": "late"})  # a late post of a dissolved pack changes nothing
    assert b.result("rb") == ("alone",)


def test_a_retried_leader_dissolves_its_pack_and_joins_again() -> None:
    b, _ = book(size=2, concurrency=2, total=2)
    b.join("a", "ra", "k", 1)
    b.join("b", "rb", "k", 2)
    lead = b.answer("ra")
    assert lead is not None
    b.join("a", "ra", "k", 1)  # Tune restarted a's process: its pack died with it
    assert b.result("rb") == ("alone",)
    assert lead[1] not in b.packs and b.groups["k"][0].rid == "ra"


def test_a_retried_member_waits_again_or_gets_its_posted_result() -> None:
    b, _ = book(size=2, concurrency=2, total=2)
    b.join("a", "ra", "k", 1)
    b.join("b", "rb", "k", 2)
    lead = b.answer("ra")
    assert lead is not None and b.answer("rb") is not None
    b.join("b", "rb", "k", 2)  # b's process was restarted while the leader runs
    assert b.answer("rb") == ("wait", lead[1], 2)
    b.post(lead[1], {"rb": "result-b"})
    b.join("b", "rb", "k", 2)  # ... or restarted after the leader posted
    assert b.answer("rb") == ("done", "result-b")


def test_trials_that_left_lower_the_expected_count() -> None:
    b, _ = book(size=3, concurrency=3, total=3)
    for t in "abc":
        b.enter(t)
    b.leave("c")  # its configuration failed: 2 of 3 trials remain
    b.join("a", "ra", "k", 1)
    assert b.answer("ra") is None
    b.join("b", "rb", "k", 2)
    assert b.answer("ra") is not None


def study(resources: dict[str, Any], **training: Any) -> Any:
    train = training or {
        "schedule": "decoupled",
        "stage1": {"loss": "ce", "epochs": 1},
        "stage2": {"epochs": 1, "finetune": ["box_predictor"]},
    }
    return spec_from_dict({
        "name": "p", "dataset": {"kind": "synthetic"}, "training": train,
        "loss": {"name": "ce"}, "search": {"trials": 4}, "resources": resources,
    })  # fmt: skip


def test_auto_pack_size_is_concurrent_trials_per_cpu_slot() -> None:
    assert pack_size(study({"max_concurrent_trials": 2}), 2) == 1  # the quickstart
    assert pack_size(study({"max_concurrent_trials": 12}), 2) == 6
    assert pack_size(study({"max_concurrent_trials": 13}), 2) == 7
    assert pack_size(study({"max_concurrent_trials": 12, "cpus_per_worker": 2}), 4) == 6
    assert pack_size(study({"max_concurrent_trials": 500}), 2) == PACK_MAX
    assert pack_size(study({"max_concurrent_trials": 12, "pack": 3}), 2) == 3
    assert pack_size(study({"max_concurrent_trials": 12, "pack": 1}), 2) == 1
    end_to_end = study({"max_concurrent_trials": 12}, schedule="end_to_end", epochs=1)
    assert pack_size(end_to_end, 2) == 1
    ddp = study({"max_concurrent_trials": 12, "workers": 2})
    assert pack_size(ddp, 2) == 1


@pytest.mark.parametrize(
    ("resources", "training", "message"),
    [
        ({"pack": 4}, {"schedule": "end_to_end", "epochs": 1}, "needs a decoupled study"),
        ({"pack": 4, "workers": 2}, None, "one-CPU-worker trials"),
        ({"pack": 0}, None, "got 0; write auto or a number of runs from 1 to 64"),
        ({"pack": 65}, None, "got 65; write auto"),
        ({"pack": "many"}, None, "got 'many'; write auto"),
        ({"pack": True}, None, "got True; write auto"),
    ],
)
def test_a_pack_the_study_cannot_use_is_one_clear_error(
    resources: dict[str, Any], training: dict[str, Any] | None, message: str
) -> None:
    with pytest.raises(SpecError, match=message) as err:
        study(resources, **(training or {}))
    assert "resources.pack" in str(err.value)
