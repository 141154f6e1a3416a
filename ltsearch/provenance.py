"""Provenance of a result row: the ltsearch checkout's git commit, the versions of the
packages that decide a result, the host and the process (:func:`run_metadata`)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

VERSION_PACKAGES = ("ltsearch", "torch", "torchvision", "ray", "optuna", "numpy", "vernier")


def _git_commit(repo: Path) -> str | None:
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head or None


@lru_cache(maxsize=1)
def _metadata() -> tuple[str | None, str]:
    versions: dict[str, str | None] = {}
    for pkg in VERSION_PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    commit = _git_commit(Path(__file__).resolve().parents[1])
    return commit, json.dumps(versions, sort_keys=True)


def run_metadata() -> dict[str, Any]:
    """Provenance for a result row: ``git_commit`` of the ltsearch checkout (``-dirty``
    when tracked files changed; None outside git), ``versions`` (JSON text of the
    versions of :data:`VERSION_PACKAGES`, read from package metadata without importing
    them), ``host`` and ``pid``."""
    commit, versions = _metadata()
    return {
        "git_commit": commit,
        "versions": versions,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


__all__ = ["VERSION_PACKAGES", "run_metadata"]
