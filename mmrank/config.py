"""Component configs: options as plain YAML values, read back safely, and changed by dotted keys.

A pipeline's config is ``{"name", "description", "retriever": {...}, "rerankers": [{"type", ...}]}``;
every component writes its own part with ``to_config()`` and is rebuilt from it, so a pipeline
written with ``Pipeline.to_yaml`` loads back as the same pipeline.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from mmrank.errors import InputError


def plain(value: Any, option: str = "value") -> Any:
    """``value`` as YAML writes it: tuples and lists as lists, mappings as dicts, paths as strings,
    enums as their value, numpy scalars and subclasses of str, int and float as the built-in type.
    InputError for anything else that is not a string, number, boolean or None."""
    if isinstance(value, Enum):
        return plain(value.value, option)
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return plain(value.item(), option)
    if isinstance(value, (list, tuple)):
        return [plain(v, option) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v, f"{option}.{k}") for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    for kind in (bool, str, int, float):
        if isinstance(value, kind):
            return kind(value) if kind is not str else str.__str__(value)
    if value is None:
        return None
    raise InputError(f"Option {option!r} holds a {type(value).__name__}, which a config cannot hold; "
                     "give it as a name or a plain value instead.")


def dataclass_options(component: Any, **values: Any) -> dict[str, Any]:
    """The constructor options of a dataclass component as plain values; ``values`` replace some
    (e.g. an option holding an object, by the name it was built from)."""
    return {f.name: plain(values[f.name] if f.name in values else getattr(component, f.name), f.name)
            for f in dataclasses.fields(component) if f.init}


def read_yaml(path: Path) -> Any:
    """A YAML file's content, read with the safe loader (no tags that build Python objects)."""
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise InputError(f"{path}: not valid YAML ({error}).") from error
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read it ({error}).") from error


def to_yaml(config: Mapping[str, Any]) -> str:
    """A config as YAML text, keys in their given order."""
    import yaml

    return yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True)


def apply_overrides(config: Mapping[str, Any], overrides: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """A copy of a pipeline ``config`` with ``overrides`` applied. Keys are dotted paths:
    ``name``, ``description``, ``retriever.<option>``, or ``<stage>.<option>`` where ``<stage>`` is a
    reranker's ``name`` (by default its type) or its position in ``rerankers`` (``0``, ``1`` ...).
    Further parts set one key inside a mapping option: ``pointwise.model_options.max_pixels``."""
    config = copy.deepcopy(dict(config))
    stages = list(config.get("rerankers") or [])
    for key, value in overrides.items():
        head, *path = str(key).split(".")
        if not path:
            if head not in ("name", "description"):
                raise InputError(f"{source}: override {key!r}: give '<component>.<option>', e.g. "
                                 "'retriever.depth' or 'pointwise.depth'.")
            config[head] = value
            continue
        if head == "retriever":
            config["retriever"] = target = dict(config.get("retriever") or {})
        else:
            target = _stage(stages, head, key, source)
        for part in path[:-1]:
            inner = target.get(part)
            if inner is not None and not isinstance(inner, Mapping):
                raise InputError(f"{source}: override {key!r}: {part!r} is not a mapping of options.")
            target[part] = target = dict(inner or {})
        target[path[-1]] = value
    if stages:
        config["rerankers"] = stages
    return config


def _stage(stages: list[dict[str, Any]], label: str, key: str, source: str) -> dict[str, Any]:
    if label.isdecimal() and int(label) < len(stages):
        return stages[int(label)]
    named = [stage for stage in stages if isinstance(stage, dict) and stage.get("name", stage.get("type")) == label]
    if len(named) != 1:
        known = [str(stage.get("name", stage.get("type"))) for stage in stages if isinstance(stage, dict)]
        why = "names more than one stage" if named else "names no stage"
        positions = f" (or their positions, 0 to {len(stages) - 1})" if stages else ""
        raise InputError(f"{source}: override {key!r}: {label!r} {why}; stages: {', '.join(known) or 'none'}"
                         f"{positions}.")
    return named[0]
