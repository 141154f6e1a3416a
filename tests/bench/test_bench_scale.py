"""``bench/bench_scale.py --quick``: run from another directory, it writes a JSON with every
measured figure positive, fits, the LVIS v1 projection and a GPU estimate labelled as one,
and deletes its caches."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ltmodels.losses import LOSSES

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_scale.py"


def test_quick_run_writes_positive_figures(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    ran = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", "scale.json", "--work", str(work)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "| loss | images | classes |" in ran.stdout and "GPU ESTIMATE" in ran.stdout
    res = json.loads((tmp_path / "scale.json").read_text())
    assert not list(work.iterdir())  # every cache deleted
    assert {"runs", "caches", "fits", "projection", "machine", "args"} <= res.keys()
    every = set(LOSSES) | {"ebl+mfs"}
    assert {r["loss"] for r in res["runs"]} == every
    for r in res["runs"]:
        for key in ("s_per_iter", "epoch_s_extrapolated", "peak_rss_mib", "anon_rss_mib"):
            assert r[key] > 0, (r["loss"], key)
        assert r["images"] in (64, 128) and r["classes"] in (40, 80)
    assert len(res["caches"]) == 4
    for k in res["caches"]:
        for key in ("write_s", "disk_bytes", "train_bytes", "read_s_per_iter"):
            assert k[key] > 0, key
        assert k["feature_shards"] > 1  # --quick shards at 1 MiB
    assert sum("eval_s_per_image" in k for k in res["caches"]) == 2  # once per class count
    [check] = [k["epoch_check"] for k in res["caches"] if "epoch_check" in k]
    assert check["measured_s"] > 0 and check["extrapolated_s"] > 0 and check["iterations"] == 16
    assert res["fits"]["train_bytes_vs_images"]["b"] > 0
    for fit in res["fits"]["ce"]["epoch_s_vs_images"].values():
        assert fit["a"] >= 0 and fit["b"] >= 0 and fit["a"] + fit["b"] > 0
    proj = res["projection"]
    assert proj["setting"]["classes"] == 1203 and proj["setting"]["epochs"] == 12
    assert proj["cache_gb"] > proj["train_cache_gb"] > 0 and proj["cpu_eval_hours"] > 0
    assert proj["per_loss"].keys() == every
    for q in proj["per_loss"].values():
        assert q["cpu_train_hours"] > 0 and q["gpu_estimate_train_hours"] > 0
        assert q["gpu_estimate"]["host_read_s"] > 0 and q["gpu_estimate"]["matmul_s"] > 0
    assert "ESTIMATE" in proj["gpu_assumptions"]["label"]
    assert res["machine"]["nproc"] > 0 and res["cpu_copy_gb_s"] > 0
