"""The JSON Schema of a study file (``ltsearch schema``), for editors.

An editor with yaml-language-server reads the schema a study file names in its first line
(``# yaml-language-server: $schema=study.schema.json``), completes keys and flags errors as
you type. The schema is generated from the spec models (pydantic's schema of
:class:`~ltsearch.spec.study.StudySpec`, translated to draft 7 and tightened) and from the
loss domains (:data:`ltmodels.losses.domains.DOMAINS`): every loss has a definition of its
parameters, each with its domain and its ``Param`` doc as the description, chosen by
``if``/``then`` on the loss name, and the ``loss``, ``training`` and ``search`` sections carry
the cross-key rules an editor can show (``name`` or ``choice``; ``stage1``/``stage2`` only
under ``schedule: decoupled``; ``trials`` unless the sampler is ``grid``).

The loader (:func:`~ltsearch.spec.study.load_spec`) stays the authority: some rules need
arithmetic or two sections at once (``low < high``, the size of a grid, ``initial_points``
and ``reference`` rows naming real parameters, ``segm`` objectives needing masks) and are
checked there only. Everything the loader accepts, the schema accepts.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ltmodels.losses.domains import DOMAINS, Param
from ltsearch.spec.sections import METRIC_NAMES
from ltsearch.spec.study import SLUG, StudySpec
from ltsearch.spec.training import OPTIM_KEYS

DRAFT = "http://json-schema.org/draft-07/schema#"
_BOUNDS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}
_NAMED = ("properties", "$defs")  # mappings of names to schemas: their keys are not keywords
_NULL, _TEXT = {"type": "null"}, {"type": "string"}  # null: as if the key were not there
SECTIONS = {
    "name": "Slug naming the results directory <storage>/<name>.",
    "description": "What the study asks, in one line.",
    "dataset": "{kind: synthetic} (the embedded data) or {kind: lvis, train, val, images}.",
    "model": "Overrides of the detector's defaults (backbone, masks, sizes, heads).",
    "training": "schedule end_to_end (keys here) or decoupled (stage1 and stage2).",
    "loss": "One loss (name + params) or several (choice: [{name, params}, ...]).",
    "search": "Sampler, objectives, trials (configurations) and seeds (runs per configuration).",
    "resources": "Per trial: DDP workers and their CPUs/GPUs; trials run at once.",
    "storage": "Results root, relative to where you run ltsearch; results go to <storage>/<name>.",
    "reference": "Published numbers to compare against in the report.",
    "smoke": "Extra overrides for --smoke (merged key by key after the built-in policy).",
    "embedded": "Extra overrides for --embedded (merged key by key after its scaling rules).",
    "profile": "Written by --embedded, not by hand: the source study and the scaling rules.",
}


def study_schema() -> dict[str, Any]:
    """The JSON Schema (draft 7) of a study file."""
    schema = _translate(StudySpec.model_json_schema())
    defs = schema["$defs"]
    del defs["ParamSpace"]
    defs["LossSpec"] = _loss_section(defs["LossSpec"]["description"])
    defs["LossOption"] = _loss_option(defs["LossOption"]["description"])
    for loss, params in DOMAINS.items():
        defs[f"params.{loss}"] = _params(params, _space)
        defs[f"values.{loss}"] = _params(params, _value)
    _stage1(defs["Stage1"])
    defs["Stage2"]["allOf"] = [_only_with("sampler", "rfs", "rfs_threshold")]
    _training(defs["TrainingSpec"])
    _search(defs["SearchSpec"])
    _model(defs["ModelSection"])
    props = schema["properties"]
    props["name"]["pattern"] = f"^{SLUG.pattern}$"
    for key, text in SECTIONS.items():
        if key in props:  # a section added later keeps its model's docstring
            props[key]["description"] = text
    schema["required"] = [*schema["required"], "search"]  # tpe, the default, needs trials
    return {"$schema": DRAFT, "title": "ltsearch study", **schema}


def schema_text() -> str:
    """:func:`study_schema` as the text of ``studies/study.schema.json``."""
    return _dumps(study_schema(), "") + "\n"


def _dumps(node: Any, indent: str, lead: int = 0, width: int = 99) -> str:
    """JSON with two-space indents, each list or mapping on one line where it fits
    (``lead``: characters before it on its first line, besides ``indent``)."""
    flat = json.dumps(node, ensure_ascii=False)
    if len(indent) + lead + len(flat) <= width or not isinstance(node, (dict, list)) or not node:
        return flat
    inner = indent + "  "
    if isinstance(node, list):
        items = [inner + _dumps(v, inner) for v in node]
        return "[\n" + ",\n".join(items) + f"\n{indent}]"
    keys = {k: json.dumps(k) + ": " for k in node}
    items = [inner + keys[k] + _dumps(v, inner, len(keys[k])) for k, v in node.items()]
    return "{\n" + ",\n".join(items) + f"\n{indent}}}"


def _translate(node: Any, named: bool = False) -> Any:
    """Pydantic's schema in draft 7: constraint names, tuples as ``items`` lists; titles,
    discriminators and reST markup dropped."""
    if isinstance(node, list):
        return [_translate(v) for v in node]
    if not isinstance(node, dict):
        return node
    if named:
        return {k: _translate(v) for k, v in node.items()}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "discriminator"):
            continue
        if key == "prefixItems":
            out["items"] = _translate(value)
        elif key == "description":
            out[key] = _plain(value)
        elif key == "default" and isinstance(value, dict):
            continue  # a section's defaults: noise in an editor, given by its keys' own
        else:
            out[_BOUNDS.get(key) or key] = _translate(value, named=key in _NAMED)
    if "$ref" in out and len(out) > 1:  # draft 7 ignores the siblings of a $ref
        out["allOf"] = [{"$ref": out.pop("$ref")}]
    return out


def _plain(text: str) -> str:
    """reST to plain text: ``:meth:`x``` -> ```x```, paragraphs on one line."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return re.sub(r"(?<!\n)\n(?!\n)", " ", text)


def _value(param: Param) -> dict[str, Any]:
    """The schema of one value of ``param``."""
    if param.kind == "choice":
        out: dict[str, Any] = {"enum": list(param.choices or ())}
    elif param.kind == "bool":
        out = {"type": "boolean"}
    else:
        out = {"type": "integer" if param.kind == "int" else "number"}
        if param.low is not None:
            out["minimum"] = param.low
        if param.high is not None:
            out["maximum"] = param.high
    return out


def _space(param: Param) -> dict[str, Any]:
    """The schema of a parameter's space: a value, or a mapping with exactly one of the
    kinds of :mod:`ltsearch.spec.loss` that the parameter's kind allows."""
    value = _value(param)
    values = {"type": "array", "items": value, "minItems": 1, "uniqueItems": True}
    props: dict[str, Any] = {"fixed": value, "grid": values, "categorical": values}
    mapping: dict[str, Any] = {"type": "object", "properties": props}
    if param.kind in ("int", "float"):
        kind = "int" if param.kind == "int" else "uniform"
        positive = {**value, "exclusiveMinimum": 0}  # a log scale needs low > 0
        props[kind] = {"type": "array", "items": [value, value], "minItems": 2, "maxItems": 2}
        props["loguniform"] = {**props[kind], "items": [positive, value]}
        props["step"] = {"type": "integer" if kind == "int" else "number", "exclusiveMinimum": 0}
        mapping["dependencies"] = {"step": {"required": [kind]}}
    kinds = [k for k in props if k != "step"]
    mapping.update(additionalProperties=False, oneOf=[{"required": [k]} for k in kinds])
    return {"anyOf": [value, mapping]}


def _params(params: Any, form: Any) -> dict[str, Any]:
    props = {
        name: {**form(p), "description": f"{p.doc}; {p.describe()}", "default": p.default}
        for name, p in params.items()
    }
    return {"type": "object", "properties": props, "additionalProperties": False}


def _when(key: str, value: Any, then: dict[str, Any], otherwise: Any = None) -> dict[str, Any]:
    """``if`` ``key`` is ``value`` ``then`` ... (``else`` ...)."""
    out = {"if": {"properties": {key: {"const": value}}, "required": [key]}, "then": then}
    if otherwise is not None:
        out["else"] = otherwise
    return out


def _per_loss(name_key: str, params_key: str, prefix: str) -> list[dict[str, Any]]:
    return [
        _when(name_key, loss, {"properties": {params_key: {"$ref": f"#/$defs/{prefix}.{loss}"}}})
        for loss in DOMAINS
    ]


def _loss_name() -> dict[str, Any]:
    return {"enum": sorted(DOMAINS), "description": "a registered loss"}


def _loss_option(description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": {"name": _loss_name(), "params": {"type": "object"}},
        "required": ["name"],
        "additionalProperties": False,
        "allOf": _per_loss("name", "params", "params"),
    }


def _loss_section(description: str) -> dict[str, Any]:
    choice = {"type": "array", "items": {"$ref": "#/$defs/LossOption"}, "minItems": 1}
    return {
        "type": "object",
        "description": description,
        "properties": {"name": _loss_name(), "params": {"type": "object"}, "choice": choice},
        "additionalProperties": False,
        "oneOf": [
            {"required": ["name"], "not": {"required": ["choice"]}},
            {
                "required": ["choice"],
                "not": {"anyOf": [{"required": [k]} for k in ("name", "params")]},
            },
        ],
        "allOf": _per_loss("name", "params", "params"),
    }


def _only_with(key: str, value: Any, dependent: str, other: Any = False) -> dict[str, Any]:
    """``dependent`` is allowed only when ``key`` is ``value`` (else only as ``other``)."""
    return _when(key, value, {}, {"properties": {dependent: other}})


def _stage1(stage1: dict[str, Any]) -> None:
    stage1["properties"]["loss"] = {**_loss_name(), "default": "ce"}
    stage1["allOf"] = [
        *_per_loss("loss", "loss_params", "values"),
        _only_with("sampler", "rfs", "rfs_threshold"),
    ]


def _training(training: dict[str, Any]) -> None:
    training["allOf"] = [
        _when(
            "schedule",
            "decoupled",
            {"required": ["stage1", "stage2"], "properties": dict.fromkeys(OPTIM_KEYS, False)},
            {"properties": {"stage1": _NULL, "stage2": _NULL}},
        ),
        _only_with("sampler", "rfs", "rfs_threshold"),
    ]


def _search(search: dict[str, Any]) -> None:
    metrics = "|".join(METRIC_NAMES)
    props = search["properties"]
    props["objectives"].update(
        minItems=1, items={"type": "string", "pattern": f"^(bbox|segm)/({metrics})(:(max|min))?$"}
    )
    props["seeds"]["uniqueItems"] = True
    search["allOf"] = [
        _when("sampler", "grid", {}, {"required": ["trials"]}),
        _only_with("sampler", "nsga2", "population_size", _NULL),
    ]


def _model(model: dict[str, Any]) -> None:
    size = model["properties"]["min_size"]["anyOf"][0]["items"]
    model["properties"]["min_size"]["anyOf"].insert(0, size)  # one size or a list
    weights = "backbone_weights"
    model["allOf"] = [
        _when("norm", "frozen_bn", {"required": [weights], "properties": {weights: _TEXT}}),
    ]


__all__ = ["DRAFT", "schema_text", "study_schema"]
