"""Packed trials through ``ltsearch run``: the quickstart study, packed and unpacked, on one cache.

Runs ``studies/quickstart.yaml`` with the random sampler (the same configurations in every
variant, whatever the results) through the CLI, in the storage of a finished ``make
quickstart`` (its stage 1 and feature cache are reused, so every variant runs stage 2 only):

- ``alone-2``: ``max_concurrent_trials: 2`` (the quickstart's own setting: ``pack: auto`` is 1);
- ``alone-C``: ``max_concurrent_trials: C``, ``pack: 1``;
- ``packed-C``: ``max_concurrent_trials: C``, ``pack: auto`` (C / CPUs per pack).

Prints, per variant, the study's wall time, the runs per CPU-hour (runs / (wall x CPUs)),
the packs' sizes, and whether every (configuration, seed) has the same bbox metrics as in
``alone-2`` (to 1e-6).

    .venv/bin/python bench/bench_pack_study.py --storage runs --concurrency 12
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "studies" / "quickstart.yaml"


def run_variant(name: str, storage: Path, sets: list[str]) -> dict[str, Any]:
    """One study run through the CLI; its wall time and rows."""
    from ltsearch.store import ResultStore

    study_dir = storage / name
    if study_dir.exists():
        raise SystemExit(f"{study_dir} exists: remove it, or pass another --prefix")
    cmd = [str(Path(sys.executable).parent / "ltsearch"), "run", str(STUDY), "--storage",
           str(storage), "--no-report", "--quiet", "--set", f"name={name}",
           "--set", "search.sampler=random", "--set", "search.reuse=false"]  # fmt: skip
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(
            f"{name}: exit {done.returncode}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    ran = re.search(r"study ran for (\d+) s", done.stdout)
    df = ResultStore(study_dir).load_trials()
    return {
        "name": name,
        "wall_s": wall,
        "study_s": float(ran.group(1)) if ran else wall,
        "rows": df,
    }


def same_metrics(a: Any, b: Any) -> tuple[int, int]:
    """(runs compared, runs whose every bbox metric agrees to 1e-6)."""
    key = ["config_hash", "seed"]
    both = a[a["status"] == "ok"].merge(b[b["status"] == "ok"], on=key, suffixes=("_a", "_b"))
    cols = [c[:-2] for c in both.columns if c.startswith("bbox/") and c.endswith("_a")]
    equal = sum(
        all(math.isclose(r[f"{c}_a"], r[f"{c}_b"], abs_tol=1e-6) for c in cols
            if not (math.isnan(r[f"{c}_a"]) and math.isnan(r[f"{c}_b"])))
        for _, r in both.iterrows()
    )  # fmt: skip
    return len(both), equal


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", default="runs", help="a finished make quickstart's storage")
    ap.add_argument("--concurrency", type=int, default=12)
    ap.add_argument("--prefix", default="bench-pack")
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    storage = Path(args.storage).resolve()
    if not any((storage / "_cache" / "stage1").glob("*/model.pt")):
        raise SystemExit(f"no stage 1 in {storage}/_cache: run `make quickstart` first")
    from ltmodels.engine.threads import node_cpus

    cpus = node_cpus()
    c = args.concurrency
    concurrent = "resources.max_concurrent_trials="
    variants = [
        (f"{args.prefix}-alone-2", [f"{concurrent}2", "resources.pack=1"]),
        (f"{args.prefix}-alone-{c}", [f"{concurrent}{c}", "resources.pack=1"]),
        (f"{args.prefix}-packed-{c}", [f"{concurrent}{c}", "resources.pack=auto"]),
    ]
    results = [run_variant(n, storage, s) for n, s in variants]
    base = results[0]["rows"]
    print(f"quickstart study, random sampler, {cpus} CPUs, storage {storage}")
    print(
        "| variant | study wall s | runs ok | runs per CPU-hour | pack sizes | equal to alone-2 |"
    )
    print("|---|---|---|---|---|---|")
    out = []
    for r in results:
        df = r["rows"]
        ok = int((df["status"] == "ok").sum())
        sizes = sorted(df["pack_size"].dropna().astype(int).tolist()) if "pack_size" in df else []
        packs = df["pack_id"].nunique() if "pack_id" in df else 0
        compared, equal = same_metrics(df, base)
        rate = ok / (r["study_s"] * cpus) * 3600
        size_txt = f"{packs} packs, sizes {min(sizes)}-{max(sizes)}" if sizes else "-"
        print(f"| {r['name']} | {r['study_s']:.0f} | {ok} | {rate:.0f} | {size_txt} | "
              f"{equal}/{compared} |")  # fmt: skip
        out.append({"variant": r["name"], "study_s": r["study_s"], "ok": ok, "per_cpu_hour": rate,
                    "packs": packs, "equal": equal, "compared": compared})  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps({"cpus": cpus, "variants": out}, indent=2))


if __name__ == "__main__":
    main()
