"""The ``loss`` section of a study spec: which losses a study searches and over what values.

A parameter's *space* is written in YAML as one of::

    xi: 0.7                          # fixed value
    xi: {grid: [0.1, 0.5, 0.9]}      # every value (grid sampler) / a categorical (others)
    xi: {categorical: [0.1, 0.5]}    # unordered choices
    xi: {uniform: [0.0, 1.0]}        # optional step: {uniform: [0, 1], step: 0.1}
    xi: {loguniform: [1e-4, 1e-1]}
    k:  {int: [1, 8]}                # optional step

Every value and bound is checked against the loss's :class:`ltmodels.losses.Param` domain
(:data:`ltmodels.losses.domains.DOMAINS`, which needs no torch) and coerced to its type
(an ``int`` parameter written ``2.0`` becomes ``2``).
Errors raise :class:`ltsearch.errors.SpecError` with the key path inside the section.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from ltmodels.errors import ConfigError
from ltmodels.losses.domains import DOMAINS, Param
from ltsearch.errors import SpecError

SPACE_KINDS = ("fixed", "grid", "categorical", "uniform", "loguniform", "int")
_RANGE_KINDS = ("uniform", "loguniform", "int")


def check_known_keys(cls: type[BaseModel], data: Any) -> Any:
    """Reject unknown keys of ``cls`` with a did-you-mean hint (pydantic's says neither)."""
    if isinstance(data, Mapping):
        allowed = [f.alias or n for n, f in cls.model_fields.items()]
        for key in data:
            if key not in allowed:
                near = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean {near[0]!r}? " if near else ""
                raise SpecError(
                    f"unknown key; {hint}allowed keys: {', '.join(allowed)}", path=[key]
                )
    return data


def _plain_number(value: Any) -> Any:
    """Refuse what pydantic would quietly turn into a number: ``true`` (1), ``"12"``."""
    if isinstance(value, (bool, str)):
        raise SpecError(f"got {value!r}; write a number (no quotes, not true/false)")
    return value


Int = Annotated[int, BeforeValidator(_plain_number)]
"""An int written as a number (``12`` or ``12.0``), never a boolean or a string."""
Float = Annotated[float, BeforeValidator(_plain_number)]
"""A finite float (see :class:`Strict`) written as a number."""


class Strict(BaseModel):
    """Base of every spec section: unknown keys are errors, naming the allowed ones; a float
    is finite (``.inf`` and ``.nan`` are refused)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        return check_known_keys(cls, data)


class ParamSpace(Strict):
    """The space of one loss hyperparameter; exactly one kind is set (see module doc)."""

    fixed: Any = None
    grid: list[Any] | None = Field(default=None, min_length=1)
    categorical: list[Any] | None = Field(default=None, min_length=1)
    uniform: tuple[Float, Float] | None = None
    loguniform: tuple[Float, Float] | None = None
    int_: tuple[Int, Int] | None = Field(default=None, alias="int")
    step: Float | None = Field(default=None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, BaseModel):
            return data
        if isinstance(data, (list, tuple)):
            raise SpecError(
                "a list is not one value; write {grid: [...]} or {categorical: [...]} to search it"
            )
        if not isinstance(data, Mapping):
            data = {"fixed": data}
        return check_known_keys(cls, data)

    @model_validator(mode="after")
    def _one_kind(self) -> ParamSpace:
        kinds = [k for k in SPACE_KINDS if self._raw(k) is not None]
        if len(kinds) != 1:
            got = ", ".join(kinds) or "nothing"
            raise SpecError(
                f"got {got}; give exactly one of a value, {', '.join(SPACE_KINDS[1:])}"
            )
        kind = kinds[0]
        if self.step is not None and kind not in ("uniform", "int"):
            raise SpecError("step applies to uniform and int only; remove it", path=["step"])
        for k in ("grid", "categorical"):
            vals = self._raw(k)
            if vals is not None and len({repr(v) for v in vals}) != len(vals):
                raise SpecError(f"duplicate values in {vals}; list each value once", path=[k])
        if kind in _RANGE_KINDS:
            self._check_range(kind)
        return self

    def _check_range(self, kind: str) -> None:
        lo, hi = self._raw(kind)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise SpecError(
                f"bounds [{lo}, {hi}] are invalid; need finite low < high", path=[kind]
            )
        if kind == "loguniform" and lo <= 0:
            raise SpecError(
                f"low bound {lo} is not > 0; a log scale needs positive bounds", path=[kind]
            )
        if self.step is not None:
            if kind == "int" and self.step != int(self.step):
                raise SpecError(
                    f"step {self.step} is fractional; an int range needs a whole step",
                    path=["step"],
                )
            n = (hi - lo) / self.step
            if abs(n - round(n)) > 1e-9:
                raise SpecError(
                    f"range [{lo}, {hi}] is not a whole number of steps {self.step}; "
                    "adjust the high bound",
                    path=["step"],
                )

    def _raw(self, kind: str) -> Any:
        return self.int_ if kind == "int" else getattr(self, kind)

    @property
    def kind(self) -> str:
        """One of :data:`SPACE_KINDS`."""
        return next(k for k in SPACE_KINDS if self._raw(k) is not None)

    @property
    def bounds(self) -> tuple[float, float]:
        """``(low, high)`` of a uniform, loguniform or int space."""
        if self.kind not in _RANGE_KINDS:
            raise ValueError(f"a {self.kind} space has no bounds")
        lo, hi = self._raw(self.kind)
        return lo, hi

    def choices(self) -> list[Any] | None:
        """Values of a fixed, grid or categorical space (``[value]`` when fixed); else None."""
        kind = self.kind
        if kind == "fixed":
            return [self.fixed]
        if kind in ("grid", "categorical"):
            return list(self._raw(kind))
        return None

    def contains(self, value: Any) -> bool:
        """Whether ``value`` (already coerced to the parameter's type) lies in the space."""
        values = self.choices()
        if values is not None:
            return any(value == v and type(value) is type(v) for v in values)
        lo, hi = self.bounds
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not lo <= value <= hi:
            return False
        if self.step is None:
            return self.kind != "int" or value == int(value)
        n = (value - lo) / self.step
        return abs(n - round(n)) < 1e-9

    def coerced(self, loss: str, name: str, param: Param) -> ParamSpace:
        """A copy with every value checked against ``param`` and coerced to its type."""
        kind = self.kind
        if kind in _RANGE_KINDS and param.kind not in ("int", "float"):
            raise SpecError(
                f"a {param.kind} parameter cannot take a range; use a value, grid or categorical",
                path=[kind],
            )
        if kind == "int" and param.kind != "int":
            raise SpecError("an int range needs an int parameter; use uniform", path=[kind])
        if kind == "uniform" and param.kind == "int":
            raise SpecError(
                "is a range of floats for an int parameter; write {int: [low, high]}", path=[kind]
            )
        try:
            if kind == "fixed":
                return ParamSpace.model_validate({"fixed": param.check(loss, name, self.fixed)})
            if kind in ("grid", "categorical"):
                vals = [param.check(loss, name, v) for v in self._raw(kind)]
                return ParamSpace.model_validate({kind: vals})
            lo, hi = (param.check(loss, name, b) for b in self._raw(kind))
        except ConfigError as exc:
            raise SpecError(str(exc), path=[kind]) from None
        return ParamSpace.model_validate({kind: (lo, hi), "step": self.step})

    def to_yaml(self) -> Any:
        """The YAML form this space was written in (scalar for a fixed value)."""
        if self.kind == "fixed":
            return self.fixed
        return self.model_dump(by_alias=True, exclude_none=True)


def _check_loss(name: str, params: Mapping[str, ParamSpace]) -> dict[str, ParamSpace]:
    """Check a loss name and its parameter spaces; return the coerced spaces."""
    if name not in DOMAINS:
        near = difflib.get_close_matches(name, list(DOMAINS), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise SpecError(
            f"unknown loss {name!r}; {hint}valid losses: {', '.join(sorted(DOMAINS))}",
            path=["name"],
        )
    domains = DOMAINS[name]
    out = {}
    for pname, space in params.items():
        if pname not in domains:
            valid = "; ".join(f"{k}: {p.describe()}" for k, p in domains.items()) or "none"
            raise SpecError(
                f"unknown parameter of loss {name!r}; valid: {valid}", path=["params", pname]
            )
        try:
            out[pname] = space.coerced(name, pname, domains[pname])
        except SpecError as exc:
            raise exc.located(prefix=["params", pname]) from None
    return out


class LossOption(Strict):
    """One loss and the spaces of the parameters it searches (others keep their defaults)."""

    name: str
    params: dict[str, ParamSpace] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> LossOption:
        self.params = _check_loss(self.name, self.params)
        return self

    def searched(self) -> dict[str, ParamSpace]:
        """Parameters whose space is not a fixed value."""
        return {k: s for k, s in self.params.items() if s.kind != "fixed"}

    def fixed(self) -> dict[str, Any]:
        """Parameters given one fixed value."""
        return {k: s.fixed for k, s in self.params.items() if s.kind == "fixed"}


class LossSpec(Strict):
    """Either one loss (``name`` + ``params``) or several (``choice: [{name, params}, ...]``)."""

    name: str | None = None
    params: dict[str, ParamSpace] = Field(default_factory=dict)
    choice: list[LossOption] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _check(self) -> LossSpec:
        if (self.name is None) == (self.choice is None):
            has = "both name and choice" if self.name is not None else "neither name nor choice"
            raise SpecError(
                f"has {has}; give name: <loss> (with params) or choice: [{{name, params}}, ...]"
            )
        if self.choice is not None:
            if self.params:
                raise SpecError(
                    "is not allowed beside choice; put params inside each choice entry",
                    path=["params"],
                )
            seen: set[str] = set()
            for i, opt in enumerate(self.choice):
                if opt.name in seen:
                    raise SpecError("loss listed twice; merge the entries", path=["choice", i])
                seen.add(opt.name)
        else:
            self.params = _check_loss(str(self.name), self.params)
        return self

    @property
    def options(self) -> list[LossOption]:
        """The losses searched, in the order written."""
        if self.choice is not None:
            return list(self.choice)
        return [LossOption.model_construct(name=self.name, params=dict(self.params))]

    def option(self, name: str) -> LossOption:
        """The option of loss ``name``; ``KeyError`` if the study does not search it."""
        for opt in self.options:
            if opt.name == name:
                return opt
        raise KeyError(name)

    def path(self, index: int) -> list[str | int]:
        """Key path of option ``index`` inside the ``loss`` section."""
        return [] if self.choice is None else ["choice", index]


__all__ = [
    "SPACE_KINDS",
    "Float",
    "Int",
    "LossOption",
    "LossSpec",
    "ParamSpace",
    "Strict",
    "check_known_keys",
]
