"""Resource fields defined by science dataclasses: defaults read from the dataclass, the
configured resource turned back into the dataclass, and lists of choices Dagster checks when
the configuration loads.

A resource field is declared as ``motion: ConfoundModel = science_default(CleaningStrategy,
"motion")``, so the default lives only on the science side. A single choice is typed with the
science side's ``Literal`` (Dagster turns it into an enum and rejects anything else, naming
the field and the allowed values); a *list* of choices, which Dagster cannot type with a
``Literal``, uses :func:`choice_enum`. :func:`from_config` builds the dataclass from the
configured fields, so no resource lists its fields a second time.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, PlainSerializer

T = TypeVar("T")


def config_value(value: Any) -> Any:
    """A science value in config form: a tuple becomes a list (config has no tuples)."""
    return list(value) if isinstance(value, tuple) else value


def science_value(value: Any) -> Any:
    """A config value in science form: a list becomes a tuple (the dataclasses are frozen)."""
    return tuple(value) if isinstance(value, list) else value


def config_dict(instance: Any) -> dict[str, Any]:
    """A science dataclass as a config dict: every field, tuples as lists."""
    return {f.name: config_value(getattr(instance, f.name)) for f in dataclasses.fields(instance)}


def from_config(cls: type[T], config: BaseModel, renamed: Mapping[str, str] | None = None) -> T:
    """Dataclass ``cls`` from the fields of the same names of ``config`` (a resource or
    ``dg.Config``; ``renamed`` maps a dataclass field to the config field that holds it), lists
    as tuples; a dataclass field the config does not have keeps its default."""
    renamed = renamed or {}
    present = type(config).model_fields
    values = {
        f.name: science_value(getattr(config, renamed.get(f.name, f.name)))
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]  (a dataclass)
        if renamed.get(f.name, f.name) in present
    }
    return cls(**values)


def science_default(cls: type, name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls``, in config form (tuples → lists).

    Raises KeyError if ``cls`` has no such field, ValueError if it has no default."""
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        raise ValueError(f"{cls.__name__}.{name} has no default")
    return config_value(value)


def choice_enum(values: Iterable[str]) -> Any:
    """The element type of a list-of-choices config field: one of ``values``, held as a plain
    string.

    Dagster sees a string enum and reports a value outside it as "not in enum type
    Literal['a', 'b'] got c" (the wording of a ``Literal`` field, naming the allowed values);
    pydantic does the same check when the resource is built in Python, and the field then
    holds plain strings."""
    values = tuple(values)
    name = f"Literal[{', '.join(repr(v) for v in values)}]"
    return Annotated[
        enum.StrEnum(name, {v: v for v in values}),
        AfterValidator(str),
        PlainSerializer(str, return_type=str),
    ]
