"""Parquet result store: atomic parts, union of columns, the load cache, completion lookup."""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import ltsearch.store as store_mod
from ltsearch.errors import StoreError
from ltsearch.provenance import run_metadata
from ltsearch.store import ResultStore


def row(trial: str, seed: int, status: str = "ok", **extra: Any) -> dict[str, Any]:
    return {
        "study": "s",
        "trial_id": trial,
        "config_hash": f"h-{trial}",
        "loss": "acsl",
        "seed": seed,
        "status": status,
        "error": None if status == "ok" else "RuntimeError: boom",
        **extra,
    }


def test_write_and_load_union_of_columns(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_trial(row("t1", 0, **{"param.acsl.xi": 0.5, "bbox/APr": 10.0}))
    store.write_trial(row("t2", 0, **{"param.eqlv2.gamma": 12, "bbox/APr": 11}))
    store.write_trial(row("t3", 1, "failed", **{"param.acsl.xi": 1}))
    df = store.load_trials().sort_values("trial_id").reset_index(drop=True)
    assert list(df["trial_id"]) == ["t1", "t2", "t3"]
    assert {"param.acsl.xi", "param.eqlv2.gamma", "bbox/APr", "error"} <= set(df.columns)
    assert df["bbox/APr"].tolist()[:2] == [10.0, 11.0] and math.isnan(df["bbox/APr"][2])
    assert df["param.acsl.xi"][2] == 1.0 and pd.isna(df["param.eqlv2.gamma"][0])
    assert df["error"].isna().tolist() == [True, True, False]
    assert df["error"][2] == "RuntimeError: boom"


def test_parts_are_atomic_and_tmp_files_ignored(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    path = store.write_trial(row("t1", 0))
    assert path.parent == tmp_path / "trials" and path.suffix == ".parquet"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    # an interrupted write: a half-written temp file, which readers must skip
    (path.parent / f".{path.name}.123.deadbeef.tmp").write_bytes(b"PAR1\x00\x01truncated")
    (path.parent / "notes.txt").write_text("not a part")
    assert len(store.load_trials()) == 1


def test_rewriting_a_run_replaces_its_part(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_trial(row("t1", 0, "failed"))
    assert not store.completed("h-t1", 0)
    store.write_trial(row("t1", 0, "ok"))
    df = store.load_trials()
    assert len(df) == 1 and df["status"][0] == "ok"
    assert store.completed("h-t1", 0)
    assert not store.completed("h-t1", 1) and not store.completed("h-other", 0)


def test_completed_on_empty_store(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "nothing-yet")
    assert not store.completed("h", 0)
    assert store.load_trials().empty and store.load_epochs().empty


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"status": "done"}, "status 'done'"),
        ({"config_hash": None}, r"\['config_hash'\]"),
    ],
)
def test_write_trial_rejects_bad_rows(tmp_path: Path, bad: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ResultStore(tmp_path).write_trial({**row("t1", 0), **bad})


def test_nested_values_are_json_text(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_trial(row("t1", 0, worker={"host": "n1", "gpus": [0, 1]}))
    assert json.loads(store.load_trials()["worker"][0]) == {"gpus": [0, 1], "host": "n1"}


def test_epochs_and_categories_round_trip(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_epochs("t1", 0, [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}])
    store.write_epochs("t1", 1, [{"epoch": 1, "loss": 2.1}])
    cats = [{"category_id": 3, "name": "cat", "frequency": "r", "iou_type": "bbox", "AP": 0.1}]
    store.write_categories("t1", 0, cats)
    epochs = store.load_epochs().sort_values(["seed", "epoch"]).reset_index(drop=True)
    assert epochs[["trial_id", "seed", "epoch"]].values.tolist() == [
        ["t1", 0, 1], ["t1", 0, 2], ["t1", 1, 1]
    ]  # fmt: skip
    got = store.load_categories().iloc[0].to_dict()
    assert got == {"trial_id": "t1", "seed": 0, **cats[0]}


def test_cache_reads_only_new_or_replaced_parts(tmp_path: Path, monkeypatch: Any) -> None:
    store = ResultStore(tmp_path)
    for i in range(30):
        store.write_trial(row(f"t{i:02d}", 0, **{"bbox/APr": float(i)}))
    reads: list[str] = []
    real = store_mod._read_part

    def counting(path: Path) -> Any:
        reads.append(path.name)
        return real(path)

    monkeypatch.setattr(store_mod, "_read_part", counting)
    assert len(store.load_trials()) == 30 and len(reads) == 30
    reads.clear()
    assert len(store.load_trials()) == 30 and reads == []  # all from the cache
    store.write_trial(row("t05", 0, **{"bbox/APr": 99.0}))  # replaced part
    store.write_trial(row("t30", 0))  # new part
    os.remove(tmp_path / "trials" / "part-t00-s0.parquet")  # removed part
    df = store.load_trials().set_index("trial_id")
    assert sorted(reads) == ["part-t05-s0.parquet", "part-t30-s0.parquet"]
    assert len(df) == 30 and "t00" not in df.index and df.loc["t05", "bbox/APr"] == 99.0


def test_damaged_cache_is_rebuilt(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_trial(row("t1", 0))
    store.load_trials()
    cache = tmp_path / ".cache" / "trials.parquet"
    assert cache.is_file()
    cache.write_bytes(b"garbage")
    assert store.load_trials()["trial_id"].tolist() == ["t1"]


def test_unreadable_part_is_a_user_error(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_trial(row("t1", 0))
    (tmp_path / "trials" / "part-bad-s0.parquet").write_bytes(b"not parquet")
    with pytest.raises(StoreError, match=r"part-bad-s0\.parquet: not a readable parquet part"):
        store.load_trials()


def flip(path: Path, needle: bytes, mask: int = 0x01) -> None:
    """Flip bits ``mask`` of the first byte of ``needle`` where the file holds it."""
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at >= 0, f"{needle!r} not in {path.name}"
    data[at] ^= mask
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_a_value_or_a_column_name_is_refused(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    good = store.write_trial(row("t1", 0, **{"bbox/APr": 0.123456}))
    assert store_mod.parquet_problem(good.read_bytes()) is None
    for needle in (struct.pack("<d", 0.123456), b"bbox/APr"):  # a data page; the footer
        path = store.write_trial(row("t2", 0, **{"bbox/APr": 0.123456}))
        flip(path, needle)
        with pytest.raises(StoreError, match=r"part-t2-s0\.parquet: not a readable parquet part"):
            store.load_trials()
        with pytest.raises(StoreError, match=r"bits changed on disk.*delete part-t2-s0"):
            store.trial_rows()  # what `ltsearch status` reads
    path.unlink()
    assert store.load_trials()["bbox/APr"].tolist() == [0.123456]


def test_every_single_bit_flip_of_a_part_is_refused_or_harmless(tmp_path: Path) -> None:
    """Bit 2 of every byte of a one-row part: either the part is refused, or it reads back
    the very values written (a flip in bytes no reader uses)."""
    part = ResultStore(tmp_path).write_trial(row("t1", 0, **{"bbox/APr": 0.25, "n": 3}))
    data, want = part.read_bytes(), pq.read_table(part).to_pylist()
    refused = 0
    for at in range(len(data)):
        flipped = bytearray(data)
        flipped[at] ^= 0x04
        part.write_bytes(bytes(flipped))
        try:
            got = store_mod.read_verified(part).to_pylist()
        except (ValueError, OSError, pa.ArrowException):
            refused += 1
            continue
        assert got == want, f"byte {at}: a flipped bit was read as other values"
    assert refused > len(data) // 2


def test_a_part_written_without_a_checksum_still_loads(tmp_path: Path) -> None:
    (tmp_path / "trials").mkdir()
    pq.write_table(
        pa.Table.from_pylist([row("old", 0)]), tmp_path / "trials" / "part-old-s0.parquet"
    )
    assert ResultStore(tmp_path).load_trials()["trial_id"].tolist() == ["old"]


def test_a_bit_flipped_cache_is_rebuilt_from_the_parts(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_trial(row("t1", 0, **{"bbox/APr": 0.5}))
    store.load_trials()
    cache = tmp_path / ".cache" / "trials.parquet"
    assert store_mod.parquet_problem(cache.read_bytes()) is None
    flip(cache, struct.pack("<d", 0.5), 0x10)
    assert store.load_trials()["bbox/APr"].tolist() == [0.5]
    assert store_mod.parquet_problem(cache.read_bytes()) is None  # rewritten whole


def test_incompatible_column_types_still_load(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    store.write_trial(row("t1", 0, note=1))
    store.write_trial(row("t2", 0, note="text"))
    assert sorted(map(str, store.load_trials()["note"])) == ["1", "text"]


def test_run_metadata() -> None:
    meta = run_metadata()
    assert set(meta) == {"git_commit", "versions", "host", "pid"}
    versions = json.loads(meta["versions"])
    assert set(versions) >= {"torch", "torchvision", "ray", "optuna", "ltsearch"}
    assert versions["optuna"] is not None
    assert meta["git_commit"] is None or len(meta["git_commit"].split("-")[0]) == 40
