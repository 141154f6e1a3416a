"""A clone-like copy of the working tree, and the ``ltsearch`` command run as a user runs it.

``git clone`` would test the last commit only; the acceptance tests must see uncommitted
edits too, so :func:`copy_working_tree` copies exactly the files git would track
(``git ls-files --cached --others --exclude-standard``, deleted ones skipped) and commits
them in a fresh repository: no ``.venv``, no ``runs/``, no caches, as on a fresh clone.

:func:`run_cli` runs the ``ltsearch`` entry point of the running interpreter's environment
(its ``bin`` directory first on ``PATH``) in a given working directory, with Ray's usage
statistics off and no ``RAY_ADDRESS`` (every run starts its own local Ray).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TAIL = 4000  # characters of a command's output quoted in an assertion message


def tracked_files(repo: Path) -> list[str]:
    """Paths (relative to ``repo``) git would track: committed, staged or new and not
    ignored; files deleted from the working tree are left out."""
    out = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    names = sorted({n for n in out.split("\0") if n})
    return [n for n in names if (repo / n).is_file() or (repo / n).is_symlink()]


def copy_working_tree(repo: Path, dest: Path) -> Path:
    """Copy ``repo``'s trackable files to ``dest`` and commit them there (a clone-like
    checkout of the working tree as it is now). Returns ``dest``."""
    for name in tracked_files(repo):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / name, target, follow_symlinks=False)
    git = ["git", "-C", str(dest), "-c", "user.name=acceptance", "-c", "user.email=ci@invalid"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run(
        [*git, "-c", "commit.gpgsign=false", "commit", "-q", "-m", "working tree under test"],
        check=True,
    )
    return dest


def cli_env() -> dict[str, str]:
    """The environment of a user's shell with this venv activated."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.pop("RAY_ADDRESS", None)
    return env


@dataclass(frozen=True)
class Ran:
    """A finished command: what it was, where it ran, its exit code and output."""

    args: tuple[str, ...]
    cwd: Path
    rc: int
    out: str
    err: str

    def describe(self) -> str:
        """The command, its directory, exit code and output tails, for an assertion."""
        return (
            f"$ cd {self.cwd} && {' '.join(self.args)}\nexit code {self.rc}\n"
            f"--- stdout (tail) ---\n{self.out[-TAIL:]}\n--- stderr (tail) ---\n{self.err[-TAIL:]}"
        )


@dataclass(frozen=True)
class SmokeRun:
    """A ``--smoke`` run of a study: the checkout it ran in, its study directory, the
    command's result and what the smoked spec asks for."""

    root: Path
    study_dir: Path
    ran: Ran
    name: str
    trials: int
    seeds: list[int]
    objectives: list[str]


def run(args: Sequence[str], cwd: Path, *, timeout: float = 1200) -> Ran:
    """Run ``args`` in ``cwd`` with :func:`cli_env`; a timeout counts as a failure."""
    try:
        p = subprocess.run(
            list(args), cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return Ran(tuple(args), cwd, -1, out, err + f"\n(timed out after {timeout:.0f} s)")
    return Ran(tuple(args), cwd, p.returncode, p.stdout, p.stderr)


def run_cli(*args: str, cwd: Path, timeout: float = 1200) -> Ran:
    """``ltsearch ARGS...`` in ``cwd``, the entry point as the README writes it."""
    exe = shutil.which("ltsearch", path=cli_env()["PATH"])
    assert exe is not None and Path(exe).parent == BIN, f"no ltsearch entry point in {BIN}"
    return run(["ltsearch", *args], cwd, timeout=timeout)


__all__ = [
    "REPO", "Ran", "SmokeRun", "cli_env", "copy_working_tree", "run", "run_cli", "tracked_files",
]  # fmt: skip
