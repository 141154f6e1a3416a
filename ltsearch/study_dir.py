"""What a study directory (``<storage>/<name>``) is called and holds, without Ray.

The names of its files and :func:`load_study_dir`, the spec a directory was started with:
used by the driver to resume, and by ``ltsearch status`` and ``report``, which must not
import Ray (see ARCHITECTURE.md).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ltsearch.errors import SpecError
from ltsearch.spec.study import StudySpec, load_spec

SPEC_FILE = "spec.yaml"
JOURNAL_FILE = "optuna.journal"


def load_study_dir(study_dir: str | Path) -> StudySpec:
    """The spec a study directory was started with (for ``resume`` and ``status``)."""
    root = Path(study_dir)
    if not root.is_dir():
        raise SpecError(
            "no such directory; give the study directory `ltsearch run` printed "
            "(<storage>/<name>)",
            file=str(study_dir),
        )
    path = root / SPEC_FILE
    if not path.exists():
        raise SpecError(
            f"no {SPEC_FILE} here: not a study directory (give the directory `ltsearch run` "
            "printed, e.g. runs/<name>)",
            file=str(study_dir),
        )
    return load_spec(path)


def check_storage(storage: str | Path) -> None:
    """Raise a :class:`SpecError` on ``storage`` unless results can be written there:
    creates the folder if needed (what the run would do next) and writes and removes one
    probe file in it, so a file in the way, a read-only or virtual filesystem and a
    missing permission are all found before anything else is written or Ray starts."""
    path = Path(storage)
    blocker = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise SpecError(
            f"{str(blocker)!r} is a file, not a directory; choose a folder for the results "
            "(or --storage DIR)",
            path=["storage"],
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".ltsearch-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SpecError(
            f"cannot write results in {str(path)!r} ({exc.strerror or exc}); choose a "
            "writable folder (or --storage DIR)",
            path=["storage"],
        ) from None


__all__ = ["JOURNAL_FILE", "SPEC_FILE", "check_storage", "load_study_dir"]
