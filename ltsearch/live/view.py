"""How the live progress of :mod:`ltsearch.live.state` is shown: a block of lines redrawn in a
terminal (:func:`render`), one timestamped line per change elsewhere (:func:`plain_line`),
and ``ltsearch status --watch`` (:func:`watch`), which shows either from any terminal."""

from __future__ import annotations

import shutil
import time
from datetime import datetime
from pathlib import Path

from ltsearch.control import is_running
from ltsearch.live.state import Snapshot, snapshot

FRONT_LINES = 5


def _duration(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def summary(snap: Snapshot) -> str:
    """``12/24 trials, 1 running, 0 failed; 3 min 05 s in, ETA ~4 min 10 s``."""
    p = snap.progress
    text = f"{p.trials_finished}/{p.trials_total} trials, {p.trials_running} running, "
    text += f"{p.trials_failed} failed"
    if snap.elapsed_s is not None:
        text += f"; {_duration(snap.elapsed_s)} in"
    if p.complete:
        text += "; complete"
    elif snap.eta_s is not None:
        text += f", ETA ~{_duration(snap.eta_s)}"
    else:
        text += ", ETA after the first trial"
    return text


def render(snap: Snapshot, width: int | None = None) -> list[str]:
    """The display's lines (each cut to ``width``: a wrapped line would break a redraw)."""
    p = snap.progress
    bar_w = 20
    filled = bar_w * p.trials_finished // max(1, p.trials_total)
    lines = [f"study {snap.name} [{'#' * filled}{'.' * (bar_w - filled)}] {summary(snap)}"]
    lines += [f"  now: {r.describe()}" for r in snap.running]
    if not snap.driver:
        lines.append("  driver: none running")
    metrics = ", ".join(o.metric for o in snap.objectives)
    if snap.front:
        lines.append(f"  front so far ({metrics}, AP %):")
        for label, values in snap.front[:FRONT_LINES]:
            lines.append(f"    {' / '.join(f'{v:.1f}' for v in values)}  {label}")
        if len(snap.front) > FRONT_LINES:
            lines.append(f"    ... and {len(snap.front) - FRONT_LINES} more")
    width = width or shutil.get_terminal_size((120, 24)).columns
    return [line if len(line) < width else line[: max(1, width - 2)] + "…" for line in lines]


def plain_line(snap: Snapshot) -> str:
    """One timestamped line for logs (output that is not a terminal)."""
    now = ", ".join(f"now: {r.describe()}" for r in snap.running)
    best = ""
    if snap.front:
        label, values = snap.front[0]
        best = f"; best {snap.objectives[0].metric} {values[0]:.1f} {label}"
    stamp = datetime.now().strftime("%H:%M:%S")
    return f"[{stamp}] {snap.name}: {summary(snap)}{best}" + (f"; {now}" if now else "")


def watch(study_dir: str | Path, *, interval: float = 2.0) -> int:
    """``ltsearch status --watch``: the driver's live view, from any terminal, until no
    driver runs the study (at once when none does); plain timestamped lines, one per change,
    when stdout is not a terminal. Ctrl-C ends it (exit 0: watching stops nothing).

    Raises:
        SpecError: not a study directory.
    """
    from ltsearch.live.terminal import LiveBlock, is_terminal

    snap = snapshot(study_dir)
    try:
        if is_terminal():
            with LiveBlock(lambda: render(snapshot(study_dir)), interval=interval):
                while is_running(study_dir):
                    time.sleep(interval)
        else:
            key = None
            while True:
                snap = snapshot(study_dir)
                if (snap.progress, tuple(snap.running)) != key:
                    print(plain_line(snap), flush=True)
                    key = (snap.progress, tuple(snap.running))
                if not snap.driver:
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        return 0
    snap = snapshot(study_dir)
    print(f"study {snap.name}: no driver running it; {snap.progress.line()}")
    return 0


__all__ = ["FRONT_LINES", "plain_line", "render", "summary", "watch"]
