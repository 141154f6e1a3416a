"""Tracking is not part of what a study is: ``spec.yaml`` records it, but a study run again
with another ``tracking`` section (or ``--mlflow``) is the same study. Nor is what only
describes it or compares it with a paper: its ``description``, its ``reference`` (the
paper's rows, and the rows it cannot express) and a profile's rules (``profile.rules``,
:mod:`ltsearch.spec.profiles`, what the profile changed). A study file that now names the
paper's iteration budget, or lists the table rows it cannot run, changes no study.

:func:`same_study` compares a directory's ``spec.yaml`` with a spec leaving these out;
:func:`record_descriptive` writes the tracking in use and the current words into ``spec.yaml``,
so that ``ltsearch resume`` and ``ltsearch report`` of the directory log to where the last
run did and print the study as this version words it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from ltsearch.spec.study import StudySpec
from ltsearch.study_dir import SPEC_FILE

DESCRIPTIVE = ("tracking", "description", "reference")
"""Top-level sections that are not part of what a study is."""


def _defining(text: str) -> Any:
    """A ``spec.yaml`` text without its :data:`DESCRIPTIVE` sections and ``profile.rules``."""
    data = yaml.safe_load(text)
    if isinstance(data, dict):
        for key in DESCRIPTIVE:
            data.pop(key, None)
        if isinstance(data.get("profile"), dict):
            data["profile"] = {k: v for k, v in data["profile"].items() if k != "rules"}
    return data


def same_study(stored: str, current: str) -> bool:
    """Whether two ``spec.yaml`` texts describe the same study, what only describes it
    (:data:`DESCRIPTIVE`, ``profile.rules``) aside."""
    if stored == current:
        return True
    try:
        return _defining(stored) == _defining(current)
    except yaml.YAMLError:
        return False


def record_descriptive(spec: StudySpec, study_dir: Path) -> None:
    """Set ``spec``'s :data:`DESCRIPTIVE` sections and ``profile.rules`` in
    ``study_dir/spec.yaml`` (the rest of the file is left as it is), when they differ;
    atomic."""
    path = Path(study_dir) / SPEC_FILE
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        return
    current = spec.to_dict()
    before = yaml.safe_dump(data, sort_keys=False)
    for key in DESCRIPTIVE:
        if current.get(key) is None:
            data.pop(key, None)
        else:
            data[key] = current[key]
    rules = (current.get("profile") or {}).get("rules")
    if isinstance(data.get("profile"), dict) and rules is not None:
        data["profile"]["rules"] = rules
    if yaml.safe_dump(data, sort_keys=False) == before:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)


__all__ = ["DESCRIPTIVE", "record_descriptive", "same_study"]
