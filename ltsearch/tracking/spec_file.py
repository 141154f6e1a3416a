"""Tracking is not part of what a study is: ``spec.yaml`` records it, but a study run again
with another ``tracking`` section (or ``--mlflow``) is the same study.

:func:`same_study` compares a directory's ``spec.yaml`` with a spec leaving ``tracking``
out; :func:`record_tracking` writes the tracking in use into ``spec.yaml``, so that
``ltsearch resume`` and ``ltsearch report`` of the directory log to where the last run did.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from ltsearch.spec.study import StudySpec
from ltsearch.study_dir import SPEC_FILE


def _without_tracking(text: str) -> Any:
    data = yaml.safe_load(text)
    if isinstance(data, dict):
        data.pop("tracking", None)
    return data


def same_study(stored: str, current: str) -> bool:
    """Whether two ``spec.yaml`` texts describe the same study, ``tracking`` aside."""
    if stored == current:
        return True
    try:
        return _without_tracking(stored) == _without_tracking(current)
    except yaml.YAMLError:
        return False


def record_tracking(spec: StudySpec, study_dir: Path) -> None:
    """Set ``spec``'s ``tracking`` section in ``study_dir/spec.yaml`` (the rest of the file
    is left as it is), when it differs; atomic."""
    path = Path(study_dir) / SPEC_FILE
    data = yaml.safe_load(path.read_text())
    wanted = spec.to_dict().get("tracking")
    if not isinstance(data, dict) or data.get("tracking") == wanted:
        return
    if wanted is None:
        data.pop("tracking")
    else:
        data["tracking"] = wanted
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)


__all__ = ["record_tracking", "same_study"]
