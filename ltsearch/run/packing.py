"""Packed trials: (configuration, seed) runs of several Tune trials on one pass over the cache.

In a decoupled study whose stage 2 trains the box predictor on the RoI-feature cache, runs
that share a seed draw the same batches (:func:`ltmodels.trial.pack.pack_key`), so one
process can train K of them together (:func:`ltmodels.trial.pack.run_pack`: each batch read
once, every member stepping on it, one evaluation pass). Tune and Optuna still see one trial
per configuration, and every (configuration, seed) is still its own parquet row:

- the driver starts one :class:`PackBroker` actor per study (``resources.pack`` > 1, or
  ``auto`` choosing more than 1: :func:`pack_size`), and each trial reserves
  ``cpus_per_worker / K`` CPUs, so K trials share one CPU slot;
- a trial's seed joins the broker's group of its pack key; the group is dispatched when it
  has K members, when every trial of the study that runs is waiting somewhere (no other can
  join it), when no member joined for :data:`QUIET_S` seconds, or after :data:`WAIT_S`;
  a group that no other trial can join is spread over the CPU slots no pack runs on (the
  last trials of a study: one pack of 6 would leave a core idle where two of 3 use both);
- one member leads (one whose process led a pack before, else the first to join; a process
  that only waits never imports torch): it trains the whole pack in its process and posts every
  other member's result (or exception) to the broker; the others wait for theirs and write
  their own rows (``pack_id``, ``pack_size``), so a failing member is a failed row and the
  other members go on;
- a leader that stops beating for :data:`STALE_S` seconds (its process died), or whose trial
  is retried by Tune, dissolves its pack: the members that still wait run alone.

``LTSEARCH_PACK_WAIT_S`` (read by the driver) replaces both waits: a test sets it high so
that its packs form the same way on a slow machine. ``search.trial_timeout`` bounds a run;
a packed run waits for its pack, so its limit is K times the timeout. GPU and multi-worker
trials are not packed.
"""

from __future__ import annotations

import asyncio
import math
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

PACK_MAX = 16  # members of an automatic pack
WAIT_S = 30.0  # longest wait of a group for more members
QUIET_S = 5.0  # ... and the longest wait after its last member joined
STALE_S = 180.0  # a leader silent this long is taken for dead
BEAT_S = 15.0  # a leader's heartbeat period
POLL_S = 0.2  # the broker's and the waiting members' poll period
NAMESPACE = "ltsearch"  # of the broker actors (a Tune trial's job has its own namespace)


def packs(spec: Any) -> bool:
    """Whether the study's runs can be packed: decoupled, stage 2 on the feature cache,
    one CPU worker per trial."""
    r, stage2 = spec.resources, spec.training.stage2
    return (
        spec.training.schedule == "decoupled"
        and stage2 is not None
        and bool(stage2.feature_cache)
        and r.workers == 1
        and r.gpus_per_worker == 0
    )


def pack_size(spec: Any, cpus: float) -> int:
    """K: ``resources.pack``, or for ``auto`` the concurrent trials per CPU slot of the
    ``cpus`` that run them (at most :data:`PACK_MAX`); 1 for a study that cannot pack."""
    if not packs(spec):
        return 1
    r = spec.resources
    if r.pack != "auto":
        return int(r.pack)
    per_slot = r.max_concurrent_trials * r.cpus_per_worker / max(cpus, r.cpus_per_worker)
    return max(1, min(PACK_MAX, math.ceil(per_slot - 1e-9)))


@dataclass
class _Request:
    tid: str
    rid: str
    payload: Any
    pid: int = 0  # the trial's process


@dataclass
class _Pack:
    key: str
    members: list[_Request]
    beat: float
    posted: bool = False


@dataclass
class PackBook:
    """The broker's bookkeeping, without Ray or asyncio (a trial is ``tid``, a
    (configuration, seed) run ``rid``). Answers to a join (:meth:`answer`): ``("lead",
    pack_id, [(rid, payload), ...])``, ``("wait", pack_id, size)`` or ``("done", result)``
    (a retried trial whose run its pack finished); results (:meth:`result`): ``("done",
    result)`` or ``("alone",)`` (its pack was dissolved: run it alone)."""

    size: int
    concurrency: int
    total: int
    wait_s: float = WAIT_S
    quiet_s: float = QUIET_S
    stale_s: float = STALE_S
    clock: Callable[[], float] = time.monotonic
    slots: int = 0  # CPU slots that run packs (0: concurrency / size)
    live: set[str] = field(default_factory=set)
    left: set[str] = field(default_factory=set)
    busy: dict[str, str] = field(default_factory=dict)  # tid -> "group" | "pack"
    groups: dict[str, list[_Request]] = field(default_factory=dict)
    born: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    packs: dict[str, _Pack] = field(default_factory=dict)
    pack_of: dict[str, str] = field(default_factory=dict)  # rid -> pack id, while it runs
    answers: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    results: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    warm: set[int] = field(default_factory=set)  # processes that led a pack

    def __post_init__(self) -> None:
        if self.slots <= 0:
            self.slots = max(1, math.ceil(self.concurrency / self.size))

    def enter(self, tid: str) -> None:
        self.live.add(tid)
        self.left.discard(tid)

    def leave(self, tid: str) -> None:
        self.live.discard(tid)
        self.left.add(tid)
        self.busy.pop(tid, None)

    def join(self, tid: str, rid: str, key: str, payload: Any, pid: int = 0) -> None:
        self.enter(tid)
        if rid in self.results and self.results[rid][0] == "done":
            self.answers[rid] = self.results.pop(rid)  # its pack finished while it was away
            return
        running = self.pack_of.get(rid)
        if running is not None:
            pack = self.packs[running]
            if pack.members[0].rid != rid:  # a retried member: its leader goes on
                self.busy[tid] = "pack"
                self.answers[rid] = ("wait", running, len(pack.members))
                return
            self._dissolve(running)  # a retried leader: its pack died with it
        self.results.pop(rid, None)
        self.groups.setdefault(key, []).append(_Request(tid, rid, payload, pid))
        self.born.setdefault(key, self.clock())
        self.last[key] = self.clock()
        self.busy[tid] = "group"

    def answer(self, rid: str) -> tuple[Any, ...] | None:
        self.tick()
        return self.answers.pop(rid, None)

    def tick(self) -> None:
        """Dispatch every group that is due."""
        now = self.clock()
        expected = min(self.concurrency, self.total - len(self.left))
        # settled: every trial that runs waits somewhere, so no other can join a group
        settled = len(self.live) >= expected and all(t in self.busy for t in self.live)
        for key in list(self.groups):
            group = self.groups[key]
            waited = now - self.born[key] >= self.wait_s or now - self.last[key] >= self.quiet_s
            if not (len(group) >= self.size or waited or settled):
                continue
            take = group if settled else group[: self.size]
            # settled: none will join, so the packs spread over the slots that run none
            n_packs = max(math.ceil(len(take) / self.size), min(self.slots - len(self.packs),
                          len(take)) if settled else 1)  # fmt: skip
            per = math.ceil(len(take) / n_packs)
            for lo in range(0, len(take), per):
                self._dispatch(key, take[lo : lo + per])
            rest = group[len(take) :]
            if rest:
                self.groups[key], self.born[key] = rest, now
            else:
                del self.groups[key], self.born[key], self.last[key]

    def _dispatch(self, key: str, members: list[_Request]) -> None:
        """A pack of ``members``, led by one whose process has led before if any (it has
        imported torch and parsed the data; a process that only waits never does)."""
        lead = next((i for i, m in enumerate(members) if m.pid and m.pid in self.warm), 0)
        members = [members[lead], *members[:lead], *members[lead + 1 :]]
        self.warm.add(members[0].pid)
        pack_id = f"{key[:8]}-{uuid.uuid4().hex[:8]}"
        self.packs[pack_id] = _Pack(key, members, self.clock())
        for m in members:
            self.pack_of[m.rid] = pack_id
            self.busy[m.tid] = "pack"
            self.answers[m.rid] = ("wait", pack_id, len(members))
        self.answers[members[0].rid] = ("lead", pack_id, [(m.rid, m.payload) for m in members])

    def beat(self, pack_id: str) -> None:
        if pack_id in self.packs:
            self.packs[pack_id].beat = self.clock()

    def post(self, pack_id: str, results: dict[str, Any]) -> None:
        """The leader's results of its pack (every member but itself)."""
        pack = self.packs.pop(pack_id, None)
        if pack is None:  # dissolved meanwhile: its members run alone
            return
        for m in pack.members:
            self.pack_of.pop(m.rid, None)
            self.busy.pop(m.tid, None)  # about to come back with its next seed
            if m.rid in results:
                self.results[m.rid] = ("done", results[m.rid])

    def result(self, rid: str) -> tuple[Any, ...] | None:
        """A waiting member's result; ``None`` while its pack runs."""
        got = self.results.pop(rid, None)
        if got is not None:
            return got
        pack_id = self.pack_of.get(rid)
        if pack_id is None:
            return ("alone",)  # unknown here (a broker started after it joined)
        if self.clock() - self.packs[pack_id].beat > self.stale_s:
            self._dissolve(pack_id)
            return self.results.pop(rid)
        return None

    def _dissolve(self, pack_id: str) -> None:
        pack = self.packs.pop(pack_id)
        for m in pack.members:
            self.pack_of.pop(m.rid, None)
            self.results[m.rid] = ("alone",)


class PackBroker:
    """The study's broker, a Ray actor (async: every waiting call is a coroutine)."""

    def __init__(self, size: int, concurrency: int, total: int, wait_s: float | None = None):
        self.book = PackBook(size, concurrency, total)
        if wait_s is not None:
            self.book.wait_s = self.book.quiet_s = wait_s

    async def ping(self) -> None:
        return None

    async def enter(self, tid: str) -> None:
        self.book.enter(tid)

    async def leave(self, tid: str) -> None:
        self.book.leave(tid)

    async def join(
        self, tid: str, rid: str, key: str, payload: Any, pid: int = 0
    ) -> tuple[Any, ...]:
        self.book.join(tid, rid, key, payload, pid)
        while (got := self.book.answer(rid)) is None:
            await asyncio.sleep(POLL_S)
        return got

    async def beat(self, pack_id: str) -> None:
        self.book.beat(pack_id)

    async def post(self, pack_id: str, results: dict[str, Any]) -> None:
        self.book.post(pack_id, results)

    async def result(self, rid: str, timeout: float) -> tuple[Any, ...] | None:
        end = time.monotonic() + timeout
        while (got := self.book.result(rid)) is None and time.monotonic() < end:
            await asyncio.sleep(POLL_S)
        return got


def start_broker(name: str, size: int, concurrency: int, total: int) -> Any:
    """The study's broker actor, named ``name`` (no CPU reserved: it only keeps books)."""
    import os

    import ray

    wait = os.environ.get("LTSEARCH_PACK_WAIT_S")
    actor = ray.remote(num_cpus=0, max_restarts=0)(PackBroker)
    handle = actor.options(name=name, namespace=NAMESPACE).remote(
        size, concurrency, total, float(wait) if wait else None
    )
    ray.get(handle.ping.remote())  # type: ignore[attr-defined]  # registered before any trial asks
    return handle


def find_broker(name: str) -> Any:
    """A trial's handle on its study's broker."""
    import ray

    return ray.get_actor(name, namespace=NAMESPACE)


def _portable(result: Any) -> Any:
    """A result or exception that pickles (an exception that does not becomes a
    RuntimeError with its type and message)."""
    if not isinstance(result, BaseException):
        return result
    try:
        pickle.dumps(result)
        return result
    except Exception:
        return RuntimeError(f"{type(result).__name__}: {result}")


class PackedExecute:
    """A trial's ``execute`` for its packed seeds: joins the broker's group, then leads the
    pack or waits for its result. ``bind`` names the run and the row it fills in first
    (``pack_id``, ``pack_size``)."""

    def __init__(
        self,
        broker: Any,
        tid: str,
        execute_pack: Callable[[Sequence[Any]], list[Any]],
        alone: Callable[..., Any],
    ) -> None:
        self.broker, self.tid = broker, tid
        self.execute_pack, self.alone = execute_pack, alone
        self.rid: str = ""
        self.row: dict[str, Any] = {}

    def bind(self, rid: str, row: dict[str, Any]) -> None:
        self.rid, self.row = rid, row

    def __call__(self, cfg: Any, *, workdir: Any, resources: Any) -> Any:
        import os

        import ray

        from ltmodels.trial.config import pack_key  # torch-free: a member that waits

        key = pack_key(cfg)
        answer = ray.get(self.broker.join.remote(self.tid, self.rid, key, cfg, os.getpid()))
        if answer[0] == "done":
            return self._raise_or_return(answer[1])
        pack_id = answer[1]
        size = len(answer[2]) if answer[0] == "lead" else answer[2]
        self.row.update(pack_id=pack_id, pack_size=size)
        if answer[0] == "lead":
            return self._lead(pack_id, answer[2])
        while (got := ray.get(self.broker.result.remote(self.rid, 30.0))) is None:
            pass
        if got[0] == "alone":
            self.row.update(pack_id=None, pack_size=1)
            return self.alone(cfg, workdir=workdir, resources=resources)
        return self._raise_or_return(got[1])

    def _lead(self, pack_id: str, members: list[tuple[str, Any]]) -> Any:
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(BEAT_S):
                self.broker.beat.remote(pack_id)

        beater = threading.Thread(target=beat, daemon=True)
        beater.start()
        try:
            results: list[Any] = list(self.execute_pack([cfg for _, cfg in members]))
        except Exception as exc:  # the pack as a whole failed (stage 1, the data): all fail
            results = [exc] * len(members)
        finally:
            stop.set()
        mine = next(i for i, (rid, _) in enumerate(members) if rid == self.rid)
        others = {
            rid: _portable(r)
            for i, ((rid, _), r) in enumerate(zip(members, results, strict=True))
            if i != mine
        }
        self.broker.post.remote(pack_id, others)
        return self._raise_or_return(results[mine])

    @staticmethod
    def _raise_or_return(result: Any) -> Any:
        if isinstance(result, BaseException):
            raise result
        return result


__all__ = [
    "PACK_MAX", "PackBook", "PackBroker", "PackedExecute", "find_broker", "pack_size", "packs",
    "start_broker",
]  # fmt: skip
