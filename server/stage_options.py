"""Router and budgeter options, checked together with the rest of the config file.

A stage (a router or budgeter policy) takes its options as keyword arguments. Its schema is its
constructor's signature — types, defaults, and pydantic ``Field`` constraints in ``Annotated`` hints —
or, where a signature cannot say it (an option named like a Python keyword), a pydantic model the class
declares as ``Options``. Checking never builds the stage: a learned router's artifact is read when the
gateway starts, not when its config is checked.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from thrifty.server.kit.registry import Registry

# pydantic's messages, in the words of someone editing a config file.
_PLAIN: dict[str, Callable[[Any], str]] = {
    "missing": lambda e: "required",
    "greater_than_equal": lambda e: f"must be ≥ {e['ctx']['ge']:g}",
    "greater_than": lambda e: f"must be > {e['ctx']['gt']:g}",
    "less_than_equal": lambda e: f"must be ≤ {e['ctx']['le']:g}",
    "int_type": lambda e: "must be a whole number",
    "int_parsing": lambda e: "must be a whole number",
    "int_from_float": lambda e: "must be a whole number",
    "float_type": lambda e: "must be a number",
    "float_parsing": lambda e: "must be a number",
    "bool_type": lambda e: "must be true or false",
    "bool_parsing": lambda e: "must be true or false",
    "string_type": lambda e: "must be a string",
    "dict_type": lambda e: "must be a mapping ({key: value})",
    "model_type": lambda e: "must be a mapping ({key: value})",
    "model_attributes_type": lambda e: "must be a mapping ({key: value})",
    "list_type": lambda e: "must be a list",
}


def plain_message(error: Any) -> str:
    """A pydantic error (one item of ``ValidationError.errors()``) as a sentence about a config value."""
    plain = _PLAIN.get(error["type"])
    return plain(error) if plain is not None else str(error["msg"]).removeprefix("Value error, ")


_MODELS: dict[type, type[BaseModel]] = {}


def options_model(cls: type) -> type[BaseModel]:
    """The schema of ``cls``'s options: its ``Options`` model, or one derived from ``__init__``."""
    if cls not in _MODELS:
        _MODELS[cls] = _derive(cls)
    return _MODELS[cls]


def _derive(cls: type) -> type[BaseModel]:
    declared = cls.__dict__.get("Options")
    if isinstance(declared, type) and issubclass(declared, BaseModel):
        return declared
    fields: dict[str, Any] = {}
    for name, parameter in inspect.signature(cls, eval_str=True).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        annotation = Any if parameter.annotation is parameter.empty else parameter.annotation
        fields[name] = (annotation, ... if parameter.default is parameter.empty else parameter.default)
    config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)
    return create_model(f"{cls.__name__}Options", __config__=config, **fields)


def option_problems(
    section: str, registry: Registry[Any], name: str, options: Mapping[str, Any]
) -> list[tuple[tuple[str | int, ...], str]]:
    """Every mistake in a stage's options, each as (place in the config, what is wrong in words)."""
    if name not in registry:
        return [((section,), registry.unknown(name))]
    model = options_model(registry.load(name))
    try:
        model.model_validate(dict(options))
    except ValidationError as exc:
        known = ", ".join(sorted(f.alias or n for n, f in model.model_fields.items())) or "no options"
        problems = []
        for error in exc.errors(include_url=False):
            place = (section, name, *error["loc"])
            if error["type"] == "extra_forbidden":
                message = f"unknown option; the {name} {section} takes: {known}"
            else:
                message = plain_message(error)
            problems.append((place, message))
        return problems
    return []
