"""Every path of a study made absolute once, when the study file is loaded.

Rules (README "Writing a study"):

- ``storage`` (and ``--storage``) is relative to the directory the command runs in;
- the paths of an LVIS-format dataset (``dataset.train``, ``val``, ``images``,
  ``train_images``, ``val_images``; for the synthetic one the last two are counts) and
  ``model.backbone_weights`` are relative to the study file's own directory, so a study
  and its data can move together and be run from anywhere;
- ``tracking.mlflow``, when it names a local store (a directory, ``file:DIR`` or
  ``sqlite:///FILE.db``), is relative to the study file's own directory too
  (:func:`tracking_uri`; ``--mlflow`` is relative to the working directory);
- ``~`` is expanded in all of them.

The same rules apply inside the study's ``smoke:`` and ``embedded:`` blocks. Below the
loader nothing sees a relative path: :func:`require_absolute` is asserted by the runner and
the trainable, since Ray Tune runs each trial in a working directory of its own, where a
relative path points nowhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ltsearch.errors import SpecError

DATASET_PATH_KEYS = ("train", "val", "images", "train_images", "val_images")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")  # two letters at least: not "C:"


def absolute(path: str | os.PathLike[str], base: str | os.PathLike[str]) -> str:
    """``path`` with ``~`` expanded, joined to ``base`` when relative, normalised."""
    p = os.path.expanduser(os.fspath(path))
    return os.path.normpath(os.path.join(os.fspath(base), p))


def resolve_raw(raw: Any, *, spec_dir: str | Path, cwd: str | Path | None = None) -> Any:
    """A copy of parsed study YAML with its paths absolute (values of the wrong type are
    left alone for the validator to report)."""
    if not isinstance(raw, Mapping):
        return raw
    run_dir = Path.cwd() if cwd is None else Path(cwd)
    out = _resolve_section(dict(raw), spec_dir, run_dir)
    for key in ("smoke", "embedded"):
        block = out.get(key)
        if isinstance(block, Mapping):
            out[key] = _resolve_section(dict(block), spec_dir, run_dir, default_storage=False)
    return out


def _resolve_section(
    raw: dict[str, Any], spec_dir: str | Path, run_dir: Path, *, default_storage: bool = True
) -> dict[str, Any]:
    storage = raw.get("storage", "runs" if default_storage else None)
    if isinstance(storage, str) and storage:
        raw["storage"] = absolute(storage, run_dir)
    dataset = raw.get("dataset")
    if isinstance(dataset, Mapping) and dataset.get("kind") == "lvis":  # synthetic: counts
        raw["dataset"] = {
            k: absolute(v, spec_dir) if k in DATASET_PATH_KEYS and _is_path(v) else v
            for k, v in dataset.items()
        }
    model = raw.get("model")
    if isinstance(model, Mapping) and _is_path(model.get("backbone_weights")):
        raw["model"] = {**model, "backbone_weights": absolute(model["backbone_weights"], spec_dir)}
    tracking = raw.get("tracking")
    if isinstance(tracking, Mapping) and _is_path(tracking.get("mlflow")):
        raw["tracking"] = {**tracking, "mlflow": tracking_uri(tracking["mlflow"], spec_dir)}
    return raw


def _is_path(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def uri_scheme(uri: str) -> str | None:
    """The scheme of a URI, lowercase (``sqlite`` for ``sqlite:///x.db``); None for a path."""
    m = _SCHEME.match(uri)
    return m[1].lower() if m else None


def tracking_path(uri: str) -> str | None:
    """The local path an MLflow tracking URI stores into: the directory of a file store
    (a path, ``file:DIR``, ``file:///DIR``) or the file of ``sqlite:///FILE``; None for
    anything else (a tracking server, a remote database, ``databricks``)."""
    from urllib.parse import unquote

    scheme = uri_scheme(uri)
    if scheme is None:
        return None if uri == "databricks" else uri  # MLflow's name of a Databricks workspace
    rest = uri.split(":", 1)[1]
    if scheme == "file":
        if rest.startswith("//"):
            host, _, path = rest[2:].partition("/")
            return unquote("/" + path) if host in ("", "localhost") else None
        return unquote(rest)
    if scheme.partition("+")[0] == "sqlite" and rest.startswith("///"):
        return rest[3:]  # sqlite:///rel.db is relative, sqlite:////abs.db absolute
    return None


def tracking_uri(uri: str, base: str | os.PathLike[str]) -> str:
    """``uri`` with the local path it names made absolute against ``base`` (unchanged when
    it names none, or an absolute one): ``mlruns`` -> ``/base/mlruns``, ``file:mlruns``
    -> ``file:///base/mlruns``, ``sqlite:///m.db`` -> ``sqlite:////base/m.db``."""
    path = tracking_path(uri)
    if not path or os.path.isabs(path):
        return uri
    full = absolute(path, base)
    scheme = uri_scheme(uri)
    if scheme is None:
        return full
    if scheme == "file":
        return Path(full).as_uri()
    return f"{uri.split(':', 1)[0]}:///{full}"


def inside(storage: Path, name: str) -> Path:
    """``storage / name``, refused when it is a link (or below one) that resolves outside
    ``storage``: a study writes inside its storage only. ``name`` is a slug (no ``/``, no
    ``..``), so a link is the only way out.

    Raises:
        SpecError: the study directory leads outside ``storage`` (key path ``name``).
    """
    path = storage / name
    if not os.path.lexists(path):
        return path
    real, root = path.resolve(), storage.resolve()
    if real != root and root in real.parents:
        if path.is_dir():
            return path
        raise SpecError(
            f"{str(path)!r} is a file, not a study directory; move it away or choose another "
            "name or storage",
            path=["name"],
        )
    raise SpecError(
        f"{str(path)!r} is a link to {str(real)!r}, outside the storage {str(root)!r}; a study "
        "writes inside its storage only: remove the link, or set storage to where it points",
        path=["name"],
    )


def spec_paths(spec: Any) -> Iterator[tuple[str, str]]:
    """``(key path, value)`` of every path a validated study holds."""
    yield "storage", str(spec.storage)
    for key in DATASET_PATH_KEYS if spec.dataset.kind == "lvis" else ():
        value = getattr(spec.dataset, key, None)
        if value is not None:
            yield f"dataset.{key}", str(value)
    if spec.model.backbone_weights is not None:
        yield "model.backbone_weights", str(spec.model.backbone_weights)
    tracking = getattr(spec, "tracking", None)
    local = None if tracking is None or tracking.mlflow is None else tracking_path(tracking.mlflow)
    if local is not None:
        yield "tracking.mlflow", local


def require_absolute(spec: Any) -> None:
    """Assert that a study's paths were resolved by the loader (a bug otherwise)."""
    relative = [f"{key}={value!r}" for key, value in spec_paths(spec) if not os.path.isabs(value)]
    if relative:
        raise AssertionError(
            "relative path(s) below the spec loader: "
            + ", ".join(relative)
            + "; load studies with ltsearch.spec.study.load_spec (or StudySpec.resolved)"
        )


__all__ = [
    "DATASET_PATH_KEYS",
    "absolute",
    "inside",
    "require_absolute",
    "resolve_raw",
    "spec_paths",
    "tracking_path",
    "tracking_uri",
    "uri_scheme",
]
