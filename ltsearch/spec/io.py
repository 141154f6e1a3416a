"""Reading study YAML safely and turning pydantic's errors into one-line :class:`SpecError`.

The YAML loader is PyYAML's safe loader with two fixes a study file needs: a key given
twice in one mapping is an error (PyYAML silently keeps the last), and exponent floats
without a dot (``1e-3``) are floats, as in YAML 1.2 (PyYAML reads them as strings).
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydantic import ValidationError

from ltsearch.errors import SpecError

_MERGE_TAG = "tag:yaml.org,2002:merge"
_DATASET_KINDS = ("synthetic", "lvis")


class _StudyLoader(yaml.SafeLoader):
    """Safe loader that rejects duplicate keys."""

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
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
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
        SpecError: syntax error or disallowed tag (both with the line), duplicate key.
    """
    try:
        return yaml.load(text, Loader=_StudyLoader)  # noqa: S506 (a safe loader subclass)
    except yaml.constructor.ConstructorError as exc:
        line = _line(exc)
        if exc.problem and exc.problem.startswith("duplicate key"):
            reason = f"{line}{exc.problem}; give each key once per mapping"
        else:
            tag = _tag(exc.problem or "")
            reason = (
                f"{line}tag {tag} is not allowed; a study file holds plain data only "
                "(mappings, lists, strings, numbers, booleans)"
            )
        raise SpecError(reason, file=file) from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(
            f"{_line(exc)}YAML syntax error: {problem}; fix the YAML there", file=file
        ) from None


def _line(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return "" if mark is None else f"line {mark.line + 1}, column {mark.column + 1}: "


def _tag(problem: str) -> str:
    match = re.search(r"tag '([^']*)'", problem)
    if not match:
        return "(unknown)"
    return "!!" + match.group(1).removeprefix("tag:yaml.org,2002:")


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


__all__ = ["from_validation_error", "parse_yaml"]
