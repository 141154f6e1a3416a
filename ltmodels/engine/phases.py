"""Where a run is: a phase name and, in a training phase, the epoch reached.

A run reports its phases here (``data``, ``stage1_wait`` (for the lock of a stage 1 another
run may be training), ``stage1`` (training it), ``cache``, ``train``, ``eval``,
``full_eval``: the spans of :class:`~ltmodels.trial.stages.Timer`, plus each finished epoch
of a training phase); whoever drives the run (``ltsearch``'s trial worker) registers a
listener to show them. Without a listener a report costs one attribute lookup. Listeners
must not raise into training: an exception from one is logged once and the listener
dropped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Phase:
    """``name`` (``stage1``, ``cache``, ``train``, ...), and for training phases the epochs
    done (``step``) of ``of``."""

    name: str
    step: int | None = None
    of: int | None = None


Listener = Callable[[Phase], None]
_state = threading.local()
_lock = threading.Lock()
_listeners: list[Listener] = []


def add_listener(fn: Listener) -> Callable[[], None]:
    """Call ``fn`` with every phase reported from now on; returns the function that removes
    it again."""
    with _lock:
        _listeners.append(fn)

    def remove() -> None:
        with _lock:
            if fn in _listeners:
                _listeners.remove(fn)

    return remove


def current() -> Phase | None:
    """The phase last reported in this thread."""
    return getattr(_state, "phase", None)


def report(name: str, step: int | None = None, of: int | None = None) -> None:
    """Enter phase ``name`` (``step`` epochs of ``of`` done, for a training phase)."""
    _emit(Phase(name, step, of))


def epoch_done(step: int, of: int) -> None:
    """``step`` epochs of ``of`` of the current phase are done."""
    phase = current()
    _emit(replace(phase, step=step, of=of) if phase else Phase("train", step, of))


def _emit(phase: Phase) -> None:
    _state.phase = phase
    with _lock:
        listeners = list(_listeners)
    for fn in listeners:
        try:
            fn(phase)
        except Exception as exc:  # a display never stops training
            log.warning("progress listener failed (%s: %s); dropped", type(exc).__name__, exc)
            with _lock:
                if fn in _listeners:
                    _listeners.remove(fn)


__all__ = ["Phase", "add_listener", "current", "epoch_done", "report"]
