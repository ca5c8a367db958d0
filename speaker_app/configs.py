"""Configuration dataclasses from plain dicts (JSON, YAML, checkpoints): one parser for all of them."""

from __future__ import annotations

import typing
from dataclasses import fields, is_dataclass


def from_dict(cls, data: dict):
    """Build dataclass `cls` from `data`, nested dataclasses included; lists become tuples.
    Unknown keys are an error (a typo must not be silently ignored); missing keys take their defaults."""
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__} needs a mapping of its fields, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        kind = hints[name]
        if is_dataclass(kind) and isinstance(value, dict):
            value = from_dict(kind, value)
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)
