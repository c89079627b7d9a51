"""Pydantic field types, the record base and the error-line helpers shared by the validated files
(:mod:`rtseg.meta`, :mod:`rtseg.decision`, :mod:`rtseg.byom`): strict numbers — an int is never ``True``,
``"3"`` or ``3.0``; an int given for a float stays an int. A leaf module (imports nothing of rtseg), so that ``meta`` and
``decision`` can both use it without importing each other.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Callable

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt
from pydantic_core import PydanticCustomError

#: a finite number (NaN, ±Infinity and integers too large for a float are not)
Finite = Annotated[StrictInt, Field(ge=-(2**1023), le=2**1023)] | Annotated[StrictFloat, Field(allow_inf_nan=False)]
#: a colour level: a number in 0..255 (NaN and ±Infinity are not)
Level = Annotated[StrictInt, Field(ge=0, le=255)] | Annotated[StrictFloat, Field(ge=0, le=255)]


class Record(BaseModel):
    """A record inside a JSON file, checked against the fields a subclass declares and kept as written
    (other keys allowed)."""

    model_config = ConfigDict(extra="allow")

    @classmethod
    def accepts(cls, value: Any) -> bool:
        """True when ``value`` validates as this record."""
        try:
            cls.model_validate(value)
        except pydantic.ValidationError:
            return False
        return True


# -- helpers of the validated files: named rules and the first violation of a message table --------------
def broken(rule: str, **values: Any) -> PydanticCustomError:
    """The error of a rule a validator checks: its line is ``_WHAT[...][rule]`` formatted with ``values``."""
    return PydanticCustomError("rtseg_rule", "rule {rule} is broken", {"rule": rule, **values})


def must(test: Callable[[Any], bool], rule: str) -> pydantic.AfterValidator:
    """A field validator: the (typed) value must pass ``test``, else ``rule`` is broken."""

    def check(value: Any) -> Any:
        if not test(value):
            raise broken(rule)
        return value

    return pydantic.AfterValidator(check)


@functools.cache
def adapter(cls: type) -> pydantic.TypeAdapter:
    """The (cached) validator of ``cls``: pydantic builds a schema once per class, not once per file read."""
    return pydantic.TypeAdapter(cls)


def first_violation(errors: list[dict], what: dict[str, str], key: Callable[[dict], str]) -> tuple[str, dict]:
    """The first of pydantic's ``errors`` in the order of the message table ``what`` (``key``: an error's key
    in it; ties: the earlier error), with its key."""
    order = list(what)
    return min(((key(err), err) for err in errors), key=lambda ke: order.index(ke[0]))


def rule_values(err: dict) -> dict[str, Any]:
    """The format values of a broken rule (:func:`broken`); none for a field's type or bounds."""
    return err.get("ctx", {}) if err["type"] == "rtseg_rule" else {}


def value_at(d: Any, dotted: str) -> Any:
    """``d["a"]["b"]`` for ``"a.b"`` (``None`` where a key is missing or a level is not an object)."""
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


__all__ = ["Finite", "Level", "Record", "adapter", "broken", "first_violation", "must", "rule_values", "value_at"]
