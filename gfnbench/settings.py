"""Typed method settings: a method's config dataclass, filled from its defaults and the user's overrides.

Overrides come from the command line (`--gflownet.lr 3e-4`, values as text) or a YAML file, so every value is
coerced to its field's type here, and every mistake is one `ValueError` naming the method, the key and the valid
fields, raised before any model is loaded.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Union

import yaml


def _parse_text(value: Any) -> Any:
    """Command-line values arrive as text: '3e-4' -> 3e-4, 'null' -> None, '[1, 2]' -> [1, 2]."""
    if not isinstance(value, str):
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(parsed, str):
        try:
            return float(parsed)
        except ValueError:
            return parsed
    return parsed


def _is_optional(hint) -> tuple[bool, tuple]:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        return type(None) in args, tuple(a for a in args if a is not type(None))
    return False, (hint,)


def _coerce_one(value: Any, hint) -> Any:
    """`value` as an instance of the non-None type `hint`, or TypeError."""
    origin = typing.get_origin(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError("expected true or false")
    if hint is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise TypeError("expected an integer")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError("expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise TypeError("expected a string")
        return value
    if origin is tuple:
        return _coerce_tuple(value, typing.get_args(hint))
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"expected a mapping of {hint.__name__} settings")
        return build(hint, {}, value, hint.__name__)
    raise TypeError(f"unsupported setting type {hint}")


def _coerce_tuple(value: Any, args: tuple) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise TypeError("expected a list")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce_one(_parse_text(v), args[0]) for v in value)
    if len(value) != len(args):
        raise TypeError(f"expected a list of {len(args)} values")
    return tuple(_coerce_one(_parse_text(v), a) for v, a in zip(value, args))


def coerce(value: Any, hint) -> Any:
    """`value` (text from a command line, or YAML/JSON data) as the type a dataclass field declares."""
    value = _parse_text(value)
    optional, options = _is_optional(hint)
    if value is None:
        if optional:
            return None
        raise TypeError("may not be null")
    errors = []
    for option in options:
        try:
            return _coerce_one(value, option)
        except TypeError as err:
            errors.append(str(err))
    raise TypeError(" or ".join(dict.fromkeys(errors)))


def field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def describe(cls) -> str:
    """'lr: float = 0.0001, loss: str = subtb, ...': one line for --help and error messages."""
    parts = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint = field_types(cls)[f.name]
        name = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
        default = f.default if f.default is not dataclasses.MISSING else "..."
        parts.append(f"{f.name}: {name} = {default}")
    return ", ".join(parts)


def build(cls, defaults: dict, overrides: dict | None, owner: str):
    """`cls(**defaults, **overrides)` with every override checked: unknown key, wrong type and the dataclass's
    own `__post_init__` checks all become one ValueError that names `owner` (the method) and the valid fields."""
    overrides = dict(overrides or {})
    types_ = field_types(cls)
    unknown = sorted(set(overrides) - set(types_))
    if unknown:
        raise ValueError(f"{owner} has no setting {', '.join(map(repr, unknown))}; its settings: "
                         f"{', '.join(types_)}")
    values = dict(defaults)
    for key, raw in overrides.items():
        if dataclasses.is_dataclass(types_[key]) and isinstance(raw, dict):
            values[key] = build(types_[key], dataclasses.asdict(defaults[key]) if key in defaults else {}, raw,
                                f"{owner}.{key}")
            continue
        try:
            values[key] = coerce(raw, types_[key])
        except TypeError as err:
            raise ValueError(f"{owner} setting {key}={raw!r}: {err}") from None
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{owner} settings: {err}") from None


def parse_dotted(argv: list[str], reserved: set[str]) -> tuple[list[str], dict[str, dict]]:
    """Split `--method.key value` (or `--method.key=value`) pairs out of an argument list.

    Returns the remaining arguments and {method: {key: text}}; `reserved` names options that are not method
    settings. Nested keys (`--gflownet_mstep.mstep.lr 1e-4`) become nested mappings."""
    rest, settings, i = [], {}, 0
    while i < len(argv):
        arg = argv[i]
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
        if "." not in name or name.split(".")[0] in reserved:
            rest.append(arg)
            i += 1
            continue
        if "=" in arg:
            value = arg.split("=", 1)[1]
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value, i = argv[i + 1], i + 1
        else:
            raise ValueError(f"{arg} needs a value")
        method, *path = name.split(".")
        node = settings.setdefault(method, {})
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
        i += 1
    return rest, settings


def read_settings_file(path: str) -> dict[str, dict]:
    """A YAML (or JSON) file mapping each method to its settings: {gflownet: {lr: 3e-4}, ppo: {iterations: 10}}."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as err:
        raise ValueError(f"settings file {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"settings file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"settings file {path} must map method names to their settings, e.g. "
                         f"'gflownet: {{lr: 0.0003}}'")
    return data


def merge(*layers: dict[str, dict]) -> dict[str, dict]:
    """Later layers win, key by key within each method (and within nested settings)."""
    out: dict = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
    return out


def typed_overrides(built, overrides: dict) -> dict:
    """The overridden fields of a built settings object, as plain data (for run records)."""
    out = {}
    for key, raw in overrides.items():
        value = getattr(built, key)
        if dataclasses.is_dataclass(value) and isinstance(raw, dict):
            out[key] = typed_overrides(value, raw)
        else:
            out[key] = list(value) if isinstance(value, tuple) else value
    return out
