"""What a study directory (``<storage>/<name>``) is called and holds, without Ray.

The names of its files and :func:`load_study_dir`, the spec a directory was started with:
used by the driver to resume, and by ``ltsearch status`` and ``report``, which must not
import Ray (see ARCHITECTURE.md).
"""

from __future__ import annotations

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


__all__ = ["JOURNAL_FILE", "SPEC_FILE", "load_study_dir"]
