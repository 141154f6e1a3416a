"""``bench/gpu_check.sh --dry-run``: every section on the CPU, run from another directory.

The dry run is what can be checked without a GPU: the four sections (throughput, losses at
LVIS scale, a cached stage-2 trial, a DDP stage-1 epoch over 2 gloo ranks) must all run and
record positive figures in the JSON. A failing section (forced through a small Python entry
that monkeypatches the script, a spawned DDP rank included) must be recorded with its error
while the other sections still run, and give a non-zero exit status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from ltmodels.losses import LOSSES

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.sh"
SECTIONS = ("throughput", "losses", "cached", "ddp")
NO_CUDA = "no CUDA device; use --dry-run to check the script on CPU"

# Fails the throughput section in this process and the DDP section on spawned rank 1: the
# ranks run this file again (as __mp_main__) before their work, so they see the patch too.
ENTRY = """
import sys

sys.path.insert(0, {bench!r})
import gpu_check
import gpu_sections

real_epoch = gpu_sections.ddp_epoch


def failing_section(ctx):
    raise RuntimeError("forced failure of the throughput section")


def failing_epoch(rank, job):
    if rank == 1:
        raise RuntimeError("forced failure on rank 1")
    return real_epoch(rank, job)


gpu_check.SECTIONS["throughput"] = failing_section
gpu_sections.ddp_epoch = failing_epoch

if __name__ == "__main__":
    sys.exit(gpu_check.main(sys.argv[1:]))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One dry run from an empty temporary working directory, ``--out`` relative to it."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    proc = _run(["bash", str(SCRIPT), "--dry-run", "--out", "x.json"], cwd)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return cwd, json.loads((cwd / "x.json").read_text())


@pytest.mark.slow
def test_dry_run_records_every_section(dry_run: tuple[Path, dict[str, Any]]) -> None:
    cwd, report = dry_run
    assert sorted(p.name for p in cwd.iterdir()) == ["x.json"]  # no work files left behind
    assert report["dry_run"] is True and report["complete"] is True and report["ok"] is True
    assert report["machine"]["torch"] == torch.__version__
    assert list(report["sections"]) == list(SECTIONS)
    for name, section in report["sections"].items():
        assert section["status"] == "ok", (name, section["error"], section["traceback"])
        assert section["error"] is None
        for key in ("seconds", "images_per_s", "peak_memory_mib"):
            assert section[key] > 0, (name, key, section[key])
        assert section["device"] == report["machine"]["device"]
        assert section["torch"] == torch.__version__ and "cuda" in section


@pytest.mark.slow
def test_dry_run_figures_per_section(dry_run: tuple[Path, dict[str, Any]]) -> None:
    _, report = dry_run
    sections, sizes = report["sections"], report["sizes"]
    throughput = sections["throughput"]
    assert throughput["torchvision_images_per_s"] > 0
    assert throughput["ltmodels_over_torchvision"] > 0
    same, total = throughput["identical_backbone_tensors"].split("/")
    assert same == total
    assert len(throughput["rounds"]["ltmodels"]) == sizes["throughput_rounds"]

    losses = sections["losses"]
    assert losses["classes"] == 1203
    assert set(losses["losses"]) == set(LOSSES)
    for name, row in losses["losses"].items():
        assert row["forward_ms"] > 0 and row["forward_backward_ms"] > 0, name
    assert losses["losses"]["ce"]["over_ce"] == 1.0

    cached = sections["cached"]
    for key in ("cache_build_s", "train_s", "eval_s", "cache_mib", "eval_images_per_s"):
        assert cached[key] > 0, key
    assert cached["train_images"] == sizes["synth"]["train_images"]
    assert cached["val_images"] == sizes["synth"]["val_images"]
    assert 0 <= cached["bbox/AP"] <= 1

    ddp = sections["ddp"]
    assert ddp["world_size"] == 2 and ddp["backend"] == "gloo"
    assert ddp["amp"] is False and "CUDA only" in ddp["amp_note"]
    assert [r["rank"] for r in ddp["ranks"]] == [0, 1]
    for rank in ddp["ranks"]:
        assert rank["images"] > 0 and rank["seconds"] > 0 and rank["peak_memory_mib"] > 0
    assert ddp["images"] == sizes["synth"]["train_images"]  # one epoch, sharded over 2 ranks


@pytest.mark.slow
def test_failing_sections_are_recorded_and_the_others_still_run(tmp_path: Path) -> None:
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY.format(bench=str(REPO / "bench")))
    sections = ["--sections", "throughput", "cached", "ddp"]
    proc = _run([sys.executable, str(entry), "--dry-run", *sections, "--out", "y.json"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-4000:]
    report = json.loads((tmp_path / "y.json").read_text())
    assert report["complete"] is True and report["ok"] is False
    got = report["sections"]
    assert got["throughput"]["status"] == "error"
    assert got["throughput"]["error"] == "RuntimeError: forced failure of the throughput section"
    assert got["cached"]["status"] == "ok" and got["cached"]["images_per_s"] > 0
    assert got["ddp"]["status"] == "error"
    assert "forced failure on rank 1" in got["ddp"]["error"]
    assert got["ddp"]["traceback"]
    assert got["losses"] == {"status": "skipped"}
    assert "failed sections: throughput, ddp" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="the answer of a machine without CUDA")
def test_without_cuda_it_asks_for_dry_run(tmp_path: Path) -> None:
    proc = _run(["bash", str(SCRIPT), "--out", "z.json"], tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == NO_CUDA and proc.stdout == ""
    assert not (tmp_path / "z.json").exists()
