"""The CLI's quick commands import none of torch, torchvision, Ray, Optuna or matplotlib.

Each check runs a fresh interpreter with ``-X importtime``, whose report names every
module imported, lazily imported ones included; the commands run through the installed
``ltsearch`` entry point (``python -m ltsearch`` where there is none).
``bench/bench_cli_start.py`` measures how long they take.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ltsearch.spec.study import spec_from_dict
from ltsearch.store import ResultStore

REPO = Path(__file__).resolve().parents[2]
HEAVY = {"torch", "torchvision", "ray", "optuna", "matplotlib"}
ENTRY = Path(sys.executable).with_name("ltsearch")
CLI = [str(ENTRY)] if ENTRY.is_file() else ["-m", "ltsearch"]


def imported(args: list[str], cwd: Path) -> set[str]:
    """Top-level packages a fresh ``python -X importtime ARGS`` imported (it must exit 0)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *args], capture_output=True, text=True, env=env,
        cwd=cwd, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("import time:")]
    names = {ln.rsplit("|", 1)[1].strip().split(".")[0] for ln in lines[1:]}  # [0]: header
    assert "ltsearch" in names or "ltmodels" in names
    return names


@pytest.mark.parametrize(
    "module",
    ["ltsearch.status", "ltsearch.spec", "ltsearch.cli", "ltmodels.losses.domains",
     "ltmodels.data.synthetic"],
)  # fmt: skip
def test_importing_loads_no_heavy_package(module: str, tmp_path: Path) -> None:
    assert imported(["-c", f"import {module}"], tmp_path) & HEAVY == set()


def test_help_and_validate_load_no_heavy_package(tmp_path: Path) -> None:
    assert imported([*CLI, "--help"], tmp_path) & HEAVY == set()
    study = REPO / "studies" / "quickstart.yaml"
    assert imported([*CLI, "validate", str(study)], tmp_path) & HEAVY == set()


def test_status_loads_no_heavy_package_nor_pandas(tmp_path: Path) -> None:
    raw = {
        "name": "light", "dataset": {"kind": "synthetic"}, "loss": {"name": "ce"},
        "search": {"objectives": ["bbox/APr:max"], "trials": 1, "seeds": [0]},
        "storage": str(tmp_path),
    }  # fmt: skip
    study = tmp_path / "light"
    study.mkdir()
    (study / "spec.yaml").write_text(yaml.safe_dump(spec_from_dict(raw).to_dict()))
    ResultStore(study).write_trial(
        {"study": "light", "trial_id": "t0", "config_hash": "h0", "loss": "ce", "seed": 0,
         "status": "ok", "bbox/APr": 0.1}
    )  # fmt: skip
    ops = [
        {"op_code": 0, "worker_id": "w", "study_name": "light", "directions": [2]},
        {"op_code": 4, "worker_id": "w", "study_id": 0, "datetime_start": ""},
        {"op_code": 6, "worker_id": "w", "trial_id": 0, "state": 1, "values": [0.1]},
    ]
    (study / "optuna.journal").write_text("".join(json.dumps(o) + "\n" for o in ops))
    ResultStore(study).load_trials()  # writes the parquet cache, which status then reads
    assert imported([*CLI, "status", str(study)], tmp_path) & (HEAVY | {"pandas"}) == set()
