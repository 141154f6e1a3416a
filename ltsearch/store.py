"""Study results on disk: parquet part files, one per finished (trial, seed).

Layout of a study directory::

    trials/      part-<trial_id>-s<seed>.parquet     one row: the trial x seed's result
    epochs/      part-<trial_id>-s<seed>.parquet     per-epoch history of that run
    categories/  part-<trial_id>-s<seed>.parquet     per-category AP with frequency group

Every part is written to a hidden temporary name in its final directory, flushed and
fsync'ed, then ``os.replace``'d into place, so readers (and a crash) only ever see whole
files; readers ignore anything that is not ``*.parquet`` (an interrupted write leaves a
``.*.tmp`` file behind, which is skipped). Writing the same (trial, seed) again replaces
its part. ``.cache/<kind>.parquet`` holds the rows already read, consolidated, so loading
10,000 parts again reads one file plus the parts added since (see :func:`load_parts`).

Each file holds the sha256 of its own bytes in its footer (key ``ltsearch.sha256``, hashed
with its value as 64 ``0``), checked before parsing: a truncated part or any flipped bit (page
or footer, where parquet's page CRCs miss 175 of 6,608 single-bit flips of a one-row part) is
a :class:`StoreError` naming the file and the fix; a damaged ``.cache`` file is rebuilt from
the parts. A file without the key (written before the check) is read unverified.

Trial row columns (:data:`TRIAL_REQUIRED` are required; others as the run has them):
``study, trial_id, config_hash, loss, param.<loss>.<name>`` (one per hyperparameter),
``seed, status`` (``ok`` | ``failed`` | ``stopped``: stopped early at epoch ``rung_epoch``,
with that rung's metrics), ``error``, every metric (``bbox/APr``, ...),
``time_total_s, time_train_s, time_eval_s, started_at, finished_at, git_commit,
versions`` (JSON text of package versions) and worker info (``host``, ``workers``,
``device``). Dict and list values are stored as JSON text.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from ltmodels.engine.atomic import write_atomic
from ltsearch.errors import StoreError

if TYPE_CHECKING:  # pandas is imported where a frame is built (`ltsearch status` needs none)
    import pandas as pd

TRIAL_REQUIRED = ("study", "trial_id", "config_hash", "loss", "seed", "status")
STATUSES = ("ok", "failed", "stopped")  # stopped: by early stopping (ltsearch.run.rungs)
KINDS = ("trials", "epochs", "categories")
CACHE_DIR = ".cache"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
DIGEST_KEY = "ltsearch.sha256"
_PLACEHOLDER = b"0" * 64
# the key-value pair in the footer (Thrift compact): key, 2 bytes (field header, length 64), hex
_DIGEST_AT = re.compile(rb"ltsearch\.sha256[\x00-\xff]{2}([0-9a-f]{64})", re.DOTALL)


def _plain(value: Any) -> Any:
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def _part_name(trial_id: str, seed: int) -> str:
    return f"part-{_SAFE.sub('_', str(trial_id))}-s{int(seed)}.parquet"


def _sha256(data: bytes | bytearray | memoryview, hole: tuple[int, int]) -> bytes:
    """hex sha256 of ``data`` with ``data[hole[0]:hole[1]]`` read as the placeholder."""
    h = hashlib.sha256(data[: hole[0]])
    h.update(_PLACEHOLDER)
    h.update(data[hole[1] :])
    return h.hexdigest().encode()


def checksummed_parquet(table: pa.Table) -> bytes:
    """``table`` as parquet bytes whose footer holds the sha256 of those bytes."""
    meta = {**(table.schema.metadata or {}), DIGEST_KEY.encode(): _PLACEHOLDER}
    sink = pa.BufferOutputStream()
    pq.write_table(table.replace_schema_metadata(meta), sink)
    data = bytearray(sink.getvalue().to_pybytes())
    found = _digest_in_footer(data)
    assert found is not None and found.group(1) == _PLACEHOLDER, "digest placeholder not found"
    data[found.start(1) : found.end(1)] = _sha256(data, found.span(1))
    return bytes(data)


def _digest_in_footer(data: bytes | bytearray) -> re.Match[bytes] | None:
    footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    found = list(_DIGEST_AT.finditer(data, max(footer, 0), len(data) - 8))
    return found[-1] if found else None


def parquet_problem(data: bytes) -> str | None:
    """Why these parquet bytes are damaged (None: intact, or written without a checksum)."""
    if len(data) < 12 or data[:4] != b"PAR1" or data[-4:] != b"PAR1":
        return "not a whole parquet file: truncated or overwritten"
    found = _digest_in_footer(data)
    if found is None:
        return None
    if _sha256(memoryview(data), found.span(1)) != found.group(1):
        return "its sha256 differs from the one written in it: bits changed on disk"
    return None


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` so that ``path`` is either absent, old, or whole, with
    its sha256 inside (:func:`checksummed_parquet`)."""
    data = checksummed_parquet(table)
    write_atomic(path, lambda f: f.write(data))
    try:  # make the rename durable too (best effort: not every filesystem allows it)
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_verified(path: Path) -> pa.Table:
    """The table in the parquet file ``path`` after checking its sha256; raises OSError
    (unreadable), ValueError (damaged) or ``pyarrow.ArrowException`` (does not parse)."""
    data = path.read_bytes()
    problem = parquet_problem(data)
    if problem is not None:
        raise ValueError(problem)
    table = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
    meta = {k: v for k, v in (table.schema.metadata or {}).items() if k != DIGEST_KEY.encode()}
    return table.replace_schema_metadata(meta or None)


def _read_part(path: Path) -> pa.Table:
    try:
        return read_verified(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        study = path.parent.parent
        why = " ".join(str(exc).split())
        raise StoreError(
            f"{path}: not a readable parquet part ({why}); delete {path.name} from trials/, "
            f"epochs/ and categories/, then `ltsearch resume {study}` runs that (configuration, "
            "seed) again"
        ) from None


def _scan(directory: Path) -> dict[str, tuple[int, int]]:
    """``{part name: (mtime_ns, size)}`` of the finished parts in ``directory``."""
    if not directory.is_dir():
        return {}
    out = {}
    with os.scandir(directory) as it:
        for entry in it:
            if entry.name.endswith(".parquet") and not entry.name.startswith("."):
                st = entry.stat()
                out[entry.name] = (st.st_mtime_ns, st.st_size)
    return out


def _concat(tables: list[pa.Table]) -> pa.Table | pd.DataFrame:
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):  # a column changed type between parts
        import pandas as pd

        return pd.concat([t.to_pandas() for t in tables], ignore_index=True)


def _load_merged(
    directory: Path, cache: Path | None, *, update: bool = True
) -> pa.Table | pd.DataFrame | None:
    """Every part's rows, without the private columns (:func:`load_parts`); None if none.

    ``update=False`` reads the cache but neither tags the new parts nor rewrites the cache:
    building the tag columns from Python values makes pyarrow import pandas.
    """
    current = _scan(directory)
    cached = _read_cache(cache, current)
    have = set() if cached is None else set(cached.column("_part").to_pylist())
    todo = sorted(n for n in current if n not in have)

    def read(n: str) -> pa.Table:
        part = _read_part(directory / n)
        return _tag(part, n, current[n]) if update else part

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        new = list(pool.map(read, todo))
    tables = ([cached] if cached is not None and cached.num_rows else []) + new
    if not tables:
        return None
    merged = _concat(tables)
    if not isinstance(merged, pa.Table):  # pandas merged columns of different types
        private = [c for c in _PRIVATE if c in merged.columns]
        return merged.drop(columns=private).reset_index(drop=True)
    private = [c for c in _PRIVATE if c in merged.column_names]
    if update and cache is not None and (todo or cached is None):
        try:
            write_parquet_atomic(merged, cache)
        except OSError:
            pass  # a read-only results directory still loads, just without the cache
    return merged.drop_columns(private)


def load_parts(directory: Path, cache: Path | None = None) -> pd.DataFrame:
    """Concatenate every ``*.parquet`` part in ``directory`` (union of columns: a column a
    part lacks is null there; ints and floats mixed across parts become floats).

    With ``cache``, rows are also kept in that one consolidated file, tagged with their
    part's name, mtime and size: a later load reads the cache plus only the parts that
    are new or were replaced since, and rewrites the cache (best effort, atomically).
    """
    import pandas as pd

    merged = _load_merged(directory, cache)
    if merged is None:
        return pd.DataFrame()
    return merged.to_pandas() if isinstance(merged, pa.Table) else merged


_PRIVATE = ("_part", "_mtime_ns", "_size")


def _tag(table: pa.Table, name: str, stat: tuple[int, int]) -> pa.Table:
    n = table.num_rows
    table = table.append_column("_part", pa.array([name] * n, pa.string()))
    table = table.append_column("_mtime_ns", pa.array([stat[0]] * n, pa.int64()))
    return table.append_column("_size", pa.array([stat[1]] * n, pa.int64()))


def _read_cache(cache: Path | None, current: dict[str, tuple[int, int]]) -> pa.Table | None:
    """The cached rows whose part still exists unchanged; None without a usable cache."""
    if cache is None or not cache.is_file():
        return None
    try:
        table = read_verified(cache)  # not read_table: pyarrow.dataset imports pandas
    except (OSError, ValueError, pa.ArrowException):
        return None  # a damaged cache is rebuilt from the parts
    if any(c not in table.column_names for c in _PRIVATE):
        return None
    names = table.column("_part").to_pylist()
    mtimes = table.column("_mtime_ns").to_pylist()
    sizes = table.column("_size").to_pylist()
    keep = [current.get(n) == (m, s) for n, m, s in zip(names, mtimes, sizes, strict=True)]
    return _rows_where(table, keep)


def _rows_where(table: pa.Table, keep: list[bool]) -> pa.Table:
    """The rows of ``table`` where ``keep`` is true, as slices (``Table.filter`` would
    import pandas, through pyarrow.compute, which ``ltsearch status`` does without)."""
    pieces, start = [], None
    for i, k in enumerate([*keep, False]):
        if k and start is None:
            start = i
        elif not k and start is not None:
            pieces.append(table.slice(start, i - start))
            start = None
    return pa.concat_tables(pieces) if pieces else table.slice(0, 0)


class ResultStore:
    """Reads and writes one study directory (see the module doc for the layout)."""

    def __init__(self, study_dir: str | Path) -> None:
        self.root = Path(study_dir)

    def path(self, kind: str) -> Path:
        """Directory of one kind of part (``trials``, ``epochs`` or ``categories``)."""
        if kind not in KINDS:
            raise ValueError(f"unknown part kind {kind!r}; one of {KINDS}")
        return self.root / kind

    def write_trial(self, row: Mapping[str, Any]) -> Path:
        """Write one trial x seed result row; returns the part's path.

        Raises:
            ValueError: a required column is missing or ``status`` is not one of STATUSES (a bug
                in the caller, so not a user error).
        """
        missing = [c for c in TRIAL_REQUIRED if c not in row or row[c] is None]
        if missing:
            raise ValueError(f"trial row lacks required column(s) {missing}")
        if row["status"] not in STATUSES:
            raise ValueError(f"trial status {row['status']!r} is not one of {STATUSES}")
        clean = {k: _plain(v) for k, v in row.items()}
        path = self.path("trials") / _part_name(str(row["trial_id"]), int(row["seed"]))
        write_parquet_atomic(pa.Table.from_pylist([clean]), path)
        return path

    def _write_rows(
        self, kind: str, trial_id: str, seed: int, rows: Iterable[Mapping[str, Any]]
    ) -> Path:
        clean = [
            {"trial_id": str(trial_id), "seed": int(seed), **{k: _plain(v) for k, v in r.items()}}
            for r in rows
        ]
        path = self.path(kind) / _part_name(str(trial_id), seed)
        table = (
            pa.Table.from_pylist(clean)
            if clean
            else pa.table({"trial_id": pa.array([], pa.string())})
        )
        write_parquet_atomic(table, path)
        return path

    def write_epochs(self, trial_id: str, seed: int, rows: Iterable[Mapping[str, Any]]) -> Path:
        """Write a run's per-epoch history (each row: ``epoch`` and its metrics/losses)."""
        return self._write_rows("epochs", trial_id, seed, rows)

    def write_categories(
        self, trial_id: str, seed: int, rows: Iterable[Mapping[str, Any]]
    ) -> Path:
        """Write a run's per-category AP (each row: ``category_id``, ``name``,
        ``frequency`` r|c|f, ``iou_type``, ``AP``)."""
        return self._write_rows("categories", trial_id, seed, rows)

    def _load(self, kind: str) -> pd.DataFrame:
        return load_parts(self.path(kind), self.root / CACHE_DIR / f"{kind}.parquet")

    def load_trials(self) -> pd.DataFrame:
        """Every trial x seed row written so far (empty frame when none)."""
        return self._load("trials")

    def trial_rows(self) -> list[dict[str, Any]]:
        """The rows of :meth:`load_trials` as dicts (nulls are None), read without pandas
        (the cache is read, not rewritten: ``ltsearch status`` reads, the runner keeps it)."""
        cache = self.root / CACHE_DIR / "trials.parquet"
        merged = _load_merged(self.path("trials"), cache, update=False)
        if merged is None:
            return []
        if isinstance(merged, pa.Table):
            return merged.to_pylist()
        return [{str(k): v for k, v in r.items()} for r in merged.to_dict("records")]

    def run_rows(self, kind: str, trial_id: str, seed: int) -> list[dict[str, Any]]:
        """The rows of one (trial, seed)'s part of ``kind`` (``epochs``, ...), as dicts,
        read without pandas; empty when it has none.

        Raises:
            StoreError: the part is damaged.
        """
        path = self.path(kind) / _part_name(str(trial_id), int(seed))
        if not path.is_file():
            return []
        return _read_part(path).to_pylist()

    def load_epochs(self) -> pd.DataFrame:
        """Every run's per-epoch rows, with ``trial_id`` and ``seed``."""
        return self._load("epochs")

    def load_categories(self) -> pd.DataFrame:
        """Every run's per-category rows, with ``trial_id`` and ``seed``."""
        return self._load("categories")

    def completed(self, config_hash: str, seed: int) -> bool:
        """Whether a run of this configuration and seed finished with status ok."""
        df = self.load_trials()
        if df.empty:
            return False
        hit = (df["config_hash"] == config_hash) & (df["seed"] == seed) & (df["status"] == "ok")
        return bool(hit.any())


__all__ = [
    "DIGEST_KEY", "KINDS", "STATUSES", "TRIAL_REQUIRED", "ResultStore", "checksummed_parquet",
    "load_parts", "parquet_problem", "read_verified", "write_parquet_atomic",
]  # fmt: skip
