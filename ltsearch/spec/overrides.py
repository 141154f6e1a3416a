"""``--set KEY=VALUE``: change one value of a study file from the command line.

``KEY`` is a dotted path into the study's YAML (``training.stage2.epochs``; a list entry by
its index, ``loss.choice.1.params.xi``), ``VALUE`` is YAML (``4``, ``[0, 1, 2]``,
``'{grid: [0.3, 0.7]}'``). Overrides are applied to the parsed file before it is validated
(:func:`~ltsearch.spec.study.load_spec`), so a value set this way is checked exactly like one
written in the file, and it becomes part of the study: the resolved ``spec.yaml`` of the
study directory holds it, and a run whose overrides differ from the ones a study directory
was started with is a different study there (refused, as a changed file is).

A missing mapping on the way is created (``model.max_size=1333`` in a file without
``model``); a key path that runs through a value, or a list index out of range, is an
error. Errors are one-line :class:`~ltsearch.errors.SpecError` naming the study file and
the ``--set`` key.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from ltsearch.errors import SpecError
from ltsearch.spec.io import parse_yaml

EXAMPLE = "e.g. --set training.epochs=4 or --set search.seeds=[0,1,2]"


@dataclass(frozen=True)
class Override:
    """One ``--set``: the key path, the value parsed as YAML, and the argument as typed."""

    path: tuple[str, ...]
    value: Any
    arg: str

    @property
    def key(self) -> str:
        return ".".join(self.path)

    def label(self, limit: int = 60) -> str:
        """``--set KEY=VALUE`` as typed, shortened to about ``limit`` characters."""
        text = " ".join(self.arg.split())
        return "--set " + (text if len(text) <= limit else text[: limit - 3] + "...")


def parse_override(arg: str, file: str | None = None) -> Override:
    """Parse one ``KEY=VALUE`` argument.

    Raises:
        SpecError: no ``=``, an empty key or key part, or a value that is not YAML.
    """
    key, eq, text = arg.partition("=")
    key = key.strip()
    if not eq or not key:
        raise SpecError(f"--set {arg!r} is not KEY=VALUE; write {EXAMPLE}", file=file)
    path = tuple(key.split("."))
    if any(not part.strip() for part in path):
        raise SpecError(
            f"--set {key}: the key has an empty part; write a dotted path such as "
            "training.stage2.epochs",
            file=file,
        )
    try:
        value = parse_yaml(text)
    except SpecError as exc:
        quote = "; quote KEY=VALUE for the shell, e.g. --set 'loss.params.xi={grid: [0.3, 0.7]}'"
        hint = quote if "syntax" in exc.reason else ""
        raise SpecError(
            f"--set {key}: the value {text!r}: {exc.reason}{hint}", file=file
        ) from None
    return Override(path, value, arg.strip())


def parse_overrides(args: Sequence[str], file: str | None = None) -> list[Override]:
    """:func:`parse_override` of each argument."""
    return [parse_override(a, file) for a in args]


def apply_overrides(raw: Any, overrides: Sequence[Override], file: str | None = None) -> Any:
    """A copy of parsed study YAML with each override applied, in order. A top level that is
    not a mapping is returned unchanged (the validator reports it).

    Raises:
        SpecError: a key path through a value that is not a mapping or list, or a list
            index that is not an index of that list.
    """
    if not overrides or not isinstance(raw, Mapping):
        return raw
    out = copy.deepcopy(dict(raw))
    for override in overrides:
        _set(out, override, file)
    return out


def _set(root: dict[str, Any], override: Override, file: str | None) -> None:
    node: Any = root
    *parents, leaf = override.path
    for depth in range(len(parents)):
        node = _child(node, depth, override, file)
    value = copy.deepcopy(override.value)
    if isinstance(node, dict):
        node[leaf] = value
    else:
        node[_index(override, len(parents), len(node), file)] = value


def _child(
    node: dict[str, Any] | list[Any], depth: int, override: Override, file: str | None
) -> Any:
    """The mapping or list at ``override.path[depth]`` below ``node`` (a missing or null
    mapping entry becomes ``{}``)."""
    part = override.path[depth]
    if isinstance(node, dict):
        if node.get(part) is None:
            node[part] = {}
        child = node[part]
    else:
        child = node[_index(override, depth, len(node), file)]
    if not isinstance(child, (dict, list)):
        _not_a_container(override, override.path[: depth + 1], child, file)
    return child


def _index(override: Override, depth: int, size: int, file: str | None) -> int:
    """``override.path[depth]`` as an index of the list at ``path[:depth]`` of ``size``."""
    part, where = override.path[depth], ".".join(override.path[:depth])
    if size == 0:
        raise SpecError(
            f"{override.label()}: {where} is an empty list; set it whole (--set {where}=[...])",
            file=file,
        )
    if not part.isdigit() or int(part) >= size:
        raise SpecError(
            f"{override.label()}: {where} is a list of {size}; {part!r} is not an index of "
            f"it (use 0..{size - 1})",
            file=file,
        )
    return int(part)


def _not_a_container(
    override: Override, path: Sequence[str], value: Any, file: str | None
) -> NoReturn:
    key = ".".join(path)
    raise SpecError(
        f"{override.label()}: {key} is {_short(value)}, not a mapping or list, so it has no "
        f"key {override.path[len(path)]!r}; set {key} itself (--set {key}=VALUE)",
        file=file,
    )


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def blame(exc: SpecError, overrides: Sequence[Override]) -> SpecError:
    """``exc`` naming the ``--set`` it comes from: the one whose key path is the error's
    path or lies on it (the longest such), else every override the study was loaded with."""
    if not overrides:
        return exc
    where = [str(p) for p in exc.path]
    hits = [o for o in overrides if list(o.path[: len(where)]) == where[: len(o.path)] and where]
    if hits:
        origin = max(hits, key=lambda o: len(o.path)).label()
    else:
        origin = "with " + ", ".join(o.label(30) for o in overrides)
    return SpecError(f"{origin}: {exc.reason}", file=exc.file, path=exc.path)


def describe(data: Mapping[str, Any], overrides: Sequence[Override]) -> str:
    """``key=value, ...`` of the overrides as the validated spec holds them (``data``:
    :meth:`~ltsearch.spec.study.StudySpec.to_dict`), e.g. ``training.lr=0.01``."""
    parts = []
    for override in overrides:
        node: Any = data
        for part in override.path:
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                node = override.value
                break
        parts.append(f"{override.key}={json.dumps(_unset(node), default=str)}")
    return ", ".join(parts)


def _unset(value: Any) -> Any:
    """``value`` without the null keys of its mappings (``step: null`` of a range)."""
    if isinstance(value, Mapping):
        return {k: _unset(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_unset(v) for v in value]
    return value


__all__ = [
    "Override", "apply_overrides", "blame", "describe", "parse_override", "parse_overrides",
]  # fmt: skip
