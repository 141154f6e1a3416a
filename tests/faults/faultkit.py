"""What the fault cases share: small real studies, the CLI started as a user starts it, a
fault injected into it, and the comparison of what survived with an uninterrupted run.

Every case runs in its own copy of a project folder (data + study files, no results), so
nothing is shared between cases but the generated images: a case's stage 1 and feature
cache are its own. Runs are deterministic for their seed, so an uninterrupted run of the
same study (:func:`reference`, once per session) is what a faulted run must end up equal
to: every (configuration, seed) once, the same metrics, no finished part rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from workspace import cli_env, run_cli

from ltsearch.store import ResultStore

HERE = Path(__file__).resolve().parent
INJECT_DIR = HERE / "inject"
SYNTH = ("--classes", "6", "--train-images", "48", "--val-images", "8", "--image-size", "96")
DATASET = (
    "{kind: lvis, train: data/lvis_synth_train.json, val: data/lvis_synth_val.json, images: data}"
)
# decoupled: a shared stage 1 (3 epochs of ~4 s), a feature cache, cached stage-2 trials
DECOUPLED = f"""\
name: decoupled
dataset: {DATASET}
model: {{backbone: tiny, masks: true}}
training:
  schedule: decoupled
  stage1: {{loss: ce, epochs: 3, lr: 0.02, batch_size: 4, warmup_iters: 4}}
  stage2: {{epochs: 2, lr: 0.01, batch_size: 8, warmup_iters: 2, finetune: [box_predictor]}}
loss: {{name: acsl, params: {{xi: {{grid: [0.1, 0.3, 0.5, 0.7]}}}}}}
search: {{sampler: grid, objectives: [bbox/APc:max, bbox/AP:max], seeds: [0, 1]}}
resources: {{workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1}}
storage: results
"""
# end to end: every run trains the whole detector and checkpoints each epoch
END_TO_END = f"""\
name: e2e
dataset: {DATASET}
model: {{backbone: tiny, masks: true}}
training: {{schedule: end_to_end, epochs: 3, lr: 0.02, batch_size: 4, warmup_iters: 4}}
loss: {{name: acsl, params: {{xi: {{grid: [0.3, 0.7]}}}}}}
search: {{sampler: grid, objectives: [bbox/AP:max], seeds: [0, 1]}}
resources: {{workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1}}
storage: results
"""
STUDIES = {"decoupled": DECOUPLED, "e2e": END_TO_END}
KINDS = ("trials", "epochs", "categories")


def make_data(root: Path) -> Path:
    """Generate the small LVIS-format dataset every case copies (a few seconds)."""
    root.mkdir(parents=True, exist_ok=True)
    ran = run_cli("data", "synth", "--out", "data", *SYNTH, cwd=root, timeout=300)
    assert ran.rc == 0, ran.describe()
    return root / "data"


def new_project(
    data: Path, dest: Path, *, cache_from: Path | None = None, **extra_studies: str
) -> Path:
    """A project folder: ``data`` (a link to the shared dataset) and the study files (plus
    ``extra_studies``, ``name -> YAML``), no results.

    ``cache_from``: another project whose trained stage 1 and feature cache
    (``results/_cache``) this one starts with, for cases whose fault comes after stage 1
    (the cache keys cover the dataset's resolved paths, the same through the link).
    """
    dest.mkdir(parents=True)
    (dest / "data").symlink_to(data, target_is_directory=True)
    (dest / "elsewhere").mkdir()  # a working directory of the user's other than the project
    for name, text in {**STUDIES, **extra_studies}.items():
        (dest / f"{name}.yaml").write_text(text)
    if cache_from is not None:
        shutil.copytree(cache_from / "results" / "_cache", dest / "results" / "_cache")
    return dest


def fault_env(inject: dict[str, Any] | None = None, **extra: str) -> dict[str, str]:
    """The user's environment, plus the injector (``tests/faults/inject``) when asked."""
    env = cli_env()
    if inject is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(INJECT_DIR), env.get("PYTHONPATH", "")) if p
        )
        env["LTSEARCH_INJECT"] = json.dumps(inject)
    env.update(extra)
    return env


@dataclass
class Proc:
    """A CLI command running in the background; its output goes to files."""

    popen: subprocess.Popen[bytes]
    out: Path
    err: Path
    started: float

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        os.kill(self.popen.pid, sig)

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            raise

    def text(self) -> tuple[str, str]:
        return self.out.read_text(errors="replace"), self.err.read_text(errors="replace")

    def describe(self) -> str:
        out, err = self.text()
        tail = f"--- stdout ---\n{out[-4000:]}\n--- stderr ---\n{err[-4000:]}"
        return f"exit {self.popen.poll()}\n{tail}"


def start(
    *args: str,
    cwd: Path,
    inject: dict[str, Any] | None = None,
    logs: Path | None = None,
    session: bool = False,
) -> Proc:
    """``ltsearch ARGS`` in the background, in ``cwd``, as the README runs it; ``session``:
    in a process group of its own, as a terminal's foreground job (Ctrl-C reaches all of
    it)."""
    logs = logs or cwd
    n = len(list(logs.glob("cmd-*.out")))
    out, err = logs / f"cmd-{n}.out", logs / f"cmd-{n}.err"
    popen = subprocess.Popen(
        ["ltsearch", *args], cwd=cwd, env=fault_env(inject),
        stdout=open(out, "wb"), stderr=open(err, "wb"),  # noqa: SIM115 (the child owns them)
        start_new_session=session,
    )  # fmt: skip
    return Proc(popen, out, err, time.monotonic())


def run(*args: str, cwd: Path, inject: dict[str, Any] | None = None, timeout: float = 600):
    """``ltsearch ARGS`` to its end; returns ``(exit code, stdout, stderr)``."""
    p = start(*args, cwd=cwd, inject=inject)
    rc = p.wait(timeout)
    out, err = p.text()
    return rc, out, err


def wait_for(
    condition: Callable[[], Any], proc: Proc | None, *, timeout: float = 900, poll: float = 0.02
) -> Any:
    """Poll ``condition`` until it is truthy; fail if ``proc`` ends or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and not proc.alive():
            raise AssertionError(f"the command ended before the fault point\n{proc.describe()}")
        time.sleep(poll)
    raise AssertionError(
        f"no fault point within {timeout:.0f} s" + (proc and proc.describe() or "")
    )


def parts(study_dir: Path) -> dict[str, str]:
    """``{kind/part name: sha256}`` of every finished parquet part of a study."""
    out = {}
    for kind in KINDS:
        for p in sorted((study_dir / kind).glob("*.parquet")):
            out[f"{kind}/{p.name}"] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def hidden_temporaries(study_dir: Path) -> list[str]:
    return [str(p) for kind in KINDS for p in (study_dir / kind).glob(".*")]


@dataclass
class Comparison:
    """A faulted study against its uninterrupted reference."""

    rows_compared: int
    rows_lost: int
    rows_duplicated: int
    rows_failed: int
    metrics_differing: int
    max_metric_diff: float

    def problems(self) -> list[str]:
        out = []
        for name in ("rows_lost", "rows_duplicated", "rows_failed", "metrics_differing"):
            if getattr(self, name):
                out.append(f"{name}: {getattr(self, name)}")
        return out

    def figures(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _keyed(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a ``config`` column: the loss and its parameters (the config hash also
    covers the dataset's absolute paths, which differ between two project folders)."""
    params = sorted(c for c in df.columns if c.startswith("param."))
    df = df.copy()
    df["config"] = [
        json.dumps([r["loss"], *[None if pd.isna(r[c]) else r[c] for c in params]])
        for _, r in df.iterrows()
    ]
    return df


def compare(study_dir: Path, reference_dir: Path, *, tol: float = 1e-6) -> Comparison:
    """Every (configuration, seed) of the reference exactly once, ok, with equal metrics
    and equal per-epoch losses."""
    got = _keyed(ResultStore(study_dir).load_trials())
    ref = _keyed(ResultStore(reference_dir).load_trials())
    key = ["config", "seed"]
    dup = int(got.duplicated(key).sum())
    failed = int((got["status"] != "ok").sum())
    ok = got[got["status"] == "ok"].drop_duplicates(key)
    merged = ref.merge(ok, on=key, how="left", suffixes=("_ref", ""), indicator=True)
    lost = int((merged["_merge"] == "left_only").sum())
    both = merged[merged["_merge"] == "both"]
    metrics = [c for c in ref.columns if c.startswith(("bbox/", "segm/"))]
    differing, worst = 0, 0.0
    for c in metrics:
        diff = (both[c] - both[f"{c}_ref"]).abs()
        worst = max(worst, float(diff.max()) if len(diff) else 0.0)
        differing += int((diff > tol).sum())
    differing += _epoch_differences(study_dir, reference_dir, got, ref, tol)
    return Comparison(len(ref), lost, dup, failed, differing, worst)


def _epoch_differences(
    study_dir: Path, reference_dir: Path, got: pd.DataFrame, ref: pd.DataFrame, tol: float
) -> int:
    """Per-epoch training losses of the runs both studies hold that differ."""
    out = 0
    frames = []
    for d, rows in ((study_dir, got), (reference_dir, ref)):
        ep = ResultStore(d).load_epochs()
        names = dict(zip(rows["trial_id"], rows["config"], strict=False))
        ep["config"] = ep["trial_id"].map(names)
        frames.append(ep)
    cols = ["config", "seed", "epoch"]
    losses = [c for c in frames[1].columns if c.startswith("loss")]
    both = frames[1].merge(frames[0], on=cols, how="inner", suffixes=("_ref", ""))
    for c in losses:
        if c in frames[0]:
            out += int(((both[c] - both[f"{c}_ref"]).abs() > tol).sum())
    return out


def journal_states(study_dir: Path, name: str) -> list[str]:
    """Trial states, read by Optuna itself (it raises on a damaged journal)."""
    from study_checks import journal_trials

    return [t.state.name for t in journal_trials(study_dir, name)]


def ray_processes() -> dict[int, int]:
    """``{pid: ppid}`` of Ray's processes on this machine."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if b"ray::" in cmd or b"/ray/" in cmd:
            out[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


AGENTS = (b"ray::DashboardAgent", b"ray::RuntimeEnvAgent")


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now (children, their children, ...)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_driver(proc: Proc, *, tree: bool = False, timeout: float = 60) -> tuple[float, float]:
    """SIGKILL the driver ``proc`` (``tree``: and every process it started, at the same
    instant, as when its machine dies), then wait until the processes it had started (Ray's
    node and its trial workers, which die with it, but up to a few seconds later) are gone,
    so that what the case then reads is what a resume will find. Returns (time of the kill,
    seconds the last of them outlived the driver). Ray's dashboard agents, which outlive a
    SIGKILLed local driver, are left to :func:`reap_orphans`."""
    below = {p for p in descendants(proc.pid) if not _is_agent(p)}
    for pid in sorted(below) if tree else []:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.signal(signal.SIGKILL)
    killed = time.monotonic()
    proc.wait(60)
    assert proc.popen.returncode == -signal.SIGKILL
    while any(_running(p) for p in below):
        if time.monotonic() - killed > timeout:
            alive = sorted(p for p in below if _running(p))
            raise AssertionError(f"processes of the killed driver still alive: {alive}")
        time.sleep(0.05)
    return killed, time.monotonic() - killed


def _is_agent(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(AGENTS)
    except OSError:
        return False


def reap_orphans(before: dict[int, int]) -> int:
    """Kill Ray's dashboard and runtime-env agents started since ``before`` whose parent is
    gone (a SIGKILLed local driver leaves them behind); returns how many. Nothing else: a
    node started by ``ray start`` has no parent either, and is not ours to stop."""
    orphans = []
    for pid, ppid in ray_processes().items():
        if pid in before or ppid != 1:
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(AGENTS):
            orphans.append(pid)
    for pid in orphans:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(orphans)


def read_rows(study_dir: Path) -> pd.DataFrame:
    return ResultStore(study_dir).load_trials()


__all__ = [
    "DECOUPLED", "END_TO_END", "Comparison", "Proc", "compare", "descendants", "fault_env",
    "hidden_temporaries", "kill_driver",
    "journal_states", "make_data", "new_project", "parts", "ray_processes", "read_rows",
    "reap_orphans", "run", "start", "wait_for",
]  # fmt: skip
