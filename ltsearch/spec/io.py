"""Reading study YAML safely and turning pydantic's errors into one-line :class:`SpecError`.

The YAML loader is PyYAML's safe loader with the fixes a study file needs: a key given
twice in one mapping is an error (PyYAML silently keeps the last); exponent floats
without a dot (``1e-3``) are floats, as in YAML 1.2 (PyYAML reads them as strings); an
explicit tag other than plain data (``!!python/object``, but also ``!!binary``, ``!!set``,
``!!timestamp`` or a local ``!tag``) is refused before anything is constructed; and an
alias that contains itself, or aliases that expand to more than :data:`MAX_VALUES`
values (a "billion laughs"), are refused before the expansion is built.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydantic import ValidationError

from ltsearch.errors import SpecError

_MERGE_TAG = "tag:yaml.org,2002:merge"
_DATASET_KINDS = ("synthetic", "lvis")
_YAML_TAG = "tag:yaml.org,2002:"
# explicit tags that still give plain data (``!!str 12`` is the string "12")
_PLAIN_TAGS = frozenset(
    _YAML_TAG + t for t in ("str", "int", "float", "bool", "null", "map", "seq")
)
MAX_VALUES = 100_000
"""Most values (scalars, lists, mappings) a study file may hold once aliases are expanded:
a real study holds a few hundred; the limit keeps an alias bomb from filling the memory."""


class _Refused(yaml.constructor.ConstructorError):
    """The file is YAML, but not the plain data a study is; ``problem`` is the reason."""


class _StudyLoader(yaml.SafeLoader):
    """Safe loader that refuses duplicate keys and tags other than plain data."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        tag = getattr(event, "tag", None)
        if tag not in (None, "!") and tag not in _PLAIN_TAGS:
            raise _Refused(
                None,
                None,
                f"tag {_short_tag(tag)} is not allowed; a study file holds plain data only "
                "(mappings, lists, strings, numbers, booleans)",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                except TypeError:  # unhashable key: the base class reports it
                    continue
                if duplicate:
                    raise _Refused(
                        None,
                        None,
                        f"duplicate key {key!r}; give each key once per mapping",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]


_StudyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, file: str | None = None) -> Any:
    """Parse YAML text as plain data.

    Raises:
        SpecError: syntax error, disallowed tag, duplicate key, an unhashable key, an alias
            that contains itself or aliases expanding past :data:`MAX_VALUES` (all with the
            line), or nesting too deep to read.
    """
    try:
        return _load(text)
    except _Refused as exc:
        raise SpecError(f"{_line(exc)}{exc.problem}", file=file) from None
    except yaml.constructor.ConstructorError as exc:  # e.g. a list or mapping as a key
        problem = " ".join(str(exc.problem or "not plain data").split())
        raise SpecError(
            f"{_line(exc)}{problem}; a key is a plain string (no lists or mappings as keys)",
            file=file,
        ) from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(
            f"{_line(exc)}YAML syntax error: {problem}; fix the YAML there", file=file
        ) from None
    except RecursionError:
        raise SpecError(
            "lists or mappings are nested too deeply to read; a study nests a few levels",
            file=file,
        ) from None


def _load(text: str) -> Any:
    loader = _StudyLoader(text)  # reads the text: a control character fails here
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """How many values ``node`` holds once aliases are expanded (an alias is the same node
    object again, so each node is counted once, in ``sizes``); ``open_`` holds the nodes
    being counted, so a node met again inside itself is a recursive alias."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise _Refused(
            None,
            None,
            "an alias refers to a value that contains it (a recursive structure); "
            "write the data out instead",
            node.start_mark,
        )
    open_.add(key)
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_size(child, sizes, open_) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            total += _expanded_size(k, sizes, open_) + _expanded_size(v, sizes, open_)
    open_.discard(key)
    if total > MAX_VALUES:
        raise _Refused(
            None,
            None,
            f"this value holds more than {MAX_VALUES} values once its aliases are expanded; "
            "a study file is small plain data (write it without nested aliases)",
            node.start_mark,
        )
    sizes[key] = total
    return total


def _line(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return "" if mark is None else f"line {mark.line + 1}, column {mark.column + 1}: "


def _short_tag(tag: str) -> str:
    """``tag:yaml.org,2002:python/object`` -> ``!!python/object``; a local tag as written."""
    return "!!" + tag.removeprefix(_YAML_TAG) if tag.startswith(_YAML_TAG) else tag


def _clean_loc(loc: tuple[Any, ...]) -> list[str | int]:
    """Drop the discriminator tags pydantic puts in a location (``dataset.lvis.train``)."""
    out: list[str | int] = []
    for i, part in enumerate(loc):
        if i > 0 and loc[i - 1] == "dataset" and part in _DATASET_KINDS:
            continue
        out.append(part)
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def from_validation_error(exc: ValidationError, file: str | None = None) -> SpecError:
    """The first error of ``exc`` as a one-line :class:`SpecError` with its key path."""
    err = exc.errors()[0]
    loc = _clean_loc(tuple(err["loc"]))
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, SpecError):
        return cause.located(file, prefix=loc)
    kind, msg = err["type"], str(err["msg"])
    if kind == "missing":
        reason = "required key is missing; add it"
    elif kind == "union_tag_invalid":
        loc.append("kind")
        tags = (err.get("ctx") or {}).get("expected_tags", "")
        reason = f"unknown kind {_short(err['ctx']['tag'])}; allowed: {tags}"
    elif kind == "union_tag_not_found":
        loc.append("kind")
        reason = f"required key is missing; say which kind, one of {', '.join(_DATASET_KINDS)}"
    elif kind == "extra_forbidden":
        reason = "unknown key; remove it"
    elif kind == "value_error":
        reason = msg.removeprefix("Value error, ")
    else:
        reason = f"got {_short(err.get('input'))}; {msg[:1].lower()}{msg[1:]}"
    return SpecError(reason, file=file, path=loc)


__all__ = ["MAX_VALUES", "from_validation_error", "parse_yaml"]
