"""Pydantic field types and the record base shared by the validated files (:mod:`rtseg.meta`,
:mod:`rtseg.decision`, :mod:`rtseg.byom`): strict numbers — an int is never ``True``, ``"3"`` or ``3.0``;
an int given for a float stays an int. A leaf module (imports nothing of rtseg), so that ``meta`` and
``decision`` can both use it without importing each other.
"""

from __future__ import annotations

from typing import Annotated, Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

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


__all__ = ["Finite", "Level", "Record"]
