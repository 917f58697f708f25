"""Strict typed configs: YAML + `a.b=value` overrides -> dataclasses, every problem reported at once; and a flat
config dataclass as command-line options.

Unknown keys, wrong types and missing required fields fail here, before any weight is loaded, with the dotted
path and the closest valid key. Each config class may define `check() -> list[str]` for cross-field rules; all
problems of the whole tree are collected into one ConfigError.

A command declares its options once, as its config's fields (`add_options`): each field becomes `--field-name`,
typed from its annotation, with the docstring under the field as help. Only the options given on the command line
come back (`given_options`), as KEY=VALUE overrides for `load_config`, so the strict loader checks them like a YAML
file's keys and the config's own defaults apply to the rest. A field named `stage` is no option: it names what a
saved config.yaml configures, for `align validate`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import json
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from align.errors import ConfigError
from align.rundir import CONFIG_FILE

MISSING = dataclasses.MISSING


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn `["train.max_steps=2", "beta=0.2"]` into a nested dict; values are parsed as YAML scalars/lists."""
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.max_steps=10")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e.__class__.__name__})") from e
        try:
            set_dotted(nested, key, value)
        except ConfigError as e:
            raise ConfigError(f"override {item!r}: {e}") from None
    return nested


def set_dotted(nested: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """Set the dotted key `a.b.c` in a nested dict, creating its sections; returns the dict.

    Raises ConfigError where a section on the way already holds a value."""
    *sections, last = dotted.split(".")
    node = nested
    for part in sections:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{part!r} is set both as a value and as a section")
        node = child
    node[last] = value
    return nested


def get_dotted(nested: dict[str, Any], dotted: str) -> Any:
    """The value at the dotted key `a.b.c` of a nested dict; None where it is not set."""
    node: Any = nested
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def load_config(schema: type, path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Any:
    """Build `schema` from an optional YAML file, an optional dict and `a.b=value` overrides (applied last)."""
    raw: dict[str, Any] = dict(base or {})
    if path is not None:
        raw = deep_merge(raw, read_yaml(path))
    if overrides:
        raw = deep_merge(raw, parse_overrides(overrides))
    problems: list[str] = []
    cfg = _build(schema, raw, "", problems)
    if not problems:
        problems.extend(_check_tree(cfg, ""))
    if problems:
        where = f" in {path}" if path is not None else ""
        raise ConfigError(f"invalid config{where}: " + "; ".join(problems))
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass, in field order (what `config.yaml` holds)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def save_config(cfg: Any, output_dir: str | Path) -> Path:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / CONFIG_FILE
    path.write_text(dump_yaml(cfg), encoding="utf-8")
    return path


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f" Did you mean '{close[0]}'?"
    return f" Valid keys: {', '.join(valid)}."


def _build(schema: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    where = prefix or "config"
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping, got {type(raw).__name__} {raw!r}")
        return None
    before = len(problems)
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
    for key in raw:
        if key not in fields:
            problems.append(f"{_join(prefix, str(key))}: unknown key.{_suggest(str(key), list(fields))}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        path = _join(prefix, name)
        if name in raw:
            kwargs[name] = _coerce(hints[name], raw[name], path, problems)
        elif f.default is MISSING and f.default_factory is MISSING:
            problems.append(f"{path}: required field is missing")
    if len(problems) > before:
        return None
    try:
        return schema(**kwargs)
    except (TypeError, ValueError) as e:
        problems.append(f"{where}: {e}")
        return None


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """Check `value` against the annotation `tp`; convert only where YAML is ambiguous (int -> float, '1e-4')."""
    by_origin = _BY_ORIGIN.get(typing.get_origin(tp))
    if by_origin is not None:
        return by_origin(tp, value, path, problems)
    if dataclasses.is_dataclass(tp):
        return _coerce_dataclass(tp, value, path, problems)
    if tp is Any:
        return value
    scalar = _SCALARS[tp](value) if tp in _SCALARS else _REFUSED
    if scalar is _REFUSED:
        problems.append(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        return None
    return scalar


def _coerce_union(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """The first member of the union that takes `value` without a problem (None for an optional field's null)."""
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    for arg in (a for a in args if a is not type(None)):
        trial: list[str] = []
        out = _coerce(arg, value, path, trial)
        if not trial:
            return out
    problems.append(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return None


def _coerce_literal(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    allowed = typing.get_args(tp)
    if value in allowed:
        return value
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    problems.append(f"{path}: must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}.{hint}")
    return None


def _coerce_list(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    (item_tp,) = typing.get_args(tp) or (Any,)
    if not isinstance(value, list):
        problems.append(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        return None
    return [_coerce(item_tp, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]


def _coerce_dict(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    _key_tp, val_tp = typing.get_args(tp) or (str, Any)
    if not isinstance(value, dict):
        problems.append(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        return None
    return {str(k): _coerce(val_tp, v, f"{path}.{k}", problems) for k, v in value.items()}


def _coerce_dataclass(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    if isinstance(value, tp):
        return value
    if not isinstance(value, dict) and hasattr(tp, "from_shorthand"):
        value = tp.from_shorthand(value)
    return _build(tp, value, path, problems)


_BY_ORIGIN = {Union: _coerce_union, types.UnionType: _coerce_union, Literal: _coerce_literal, list: _coerce_list,
              dict: _coerce_dict}
"""Annotation origin (`typing.get_origin`) -> its coercer."""

_REFUSED = object()
"""What a scalar coercer returns for a value its type does not take."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_float(value: Any) -> Any:
    if _is_number(value):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-4" as a string
        except ValueError:
            pass
    return _REFUSED


def _as_str(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if _is_number(value):
        return str(value)  # e.g. a numeric revision or run name
    return _REFUSED


_SCALARS = {
    bool: lambda value: value if isinstance(value, bool) else _REFUSED,
    int: lambda value: value if isinstance(value, int) and not isinstance(value, bool) else _REFUSED,
    float: _as_float,
    str: _as_str,
}
"""Scalar annotation -> the value it takes (YAML's ambiguities resolved), or _REFUSED."""


def _check_tree(cfg: Any, prefix: str) -> list[str]:
    """Collect `check()` problems from every dataclass in the tree, prefixing their dotted paths."""
    problems: list[str] = []
    if cfg is None or not dataclasses.is_dataclass(cfg):
        return problems
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            sub = _join(prefix, f.name) + (f"[{i}]" if isinstance(value, list) else "")
            problems.extend(_check_tree(item, sub))
    check = getattr(cfg, "check", None)
    if check is not None:
        problems.extend(_join(prefix, p) if prefix else p for p in check())
    return problems


# Command-line options from a flat config dataclass.

OPTION_TYPES = (str, int, float)
"""The annotations an option can have, besides a Literal of strings (and either with `| None`)."""


def field_docs(schema: type) -> dict[str, str]:
    """{field name: the docstring written under the field} of a dataclass (attribute docstrings, as in PEP 257)."""
    (cls_node,) = ast.parse(textwrap.dedent(inspect.getsource(schema))).body
    docs = {}
    for node, after in zip(cls_node.body, cls_node.body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def option_fields(schema: type) -> list[dataclasses.Field]:
    """The fields of `schema` that are command-line options: all but `stage`."""
    return [f for f in dataclasses.fields(schema) if f.name != "stage"]


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _scalar_type(schema: type, field: str, annotation: Any) -> Any:
    """The annotation without its `| None`: str, int, float or a Literal of strings; anything else is a TypeError
    (a field with no option form)."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else annotation
    if annotation in OPTION_TYPES or (typing.get_origin(annotation) is Literal
                                 and all(isinstance(a, str) for a in typing.get_args(annotation))):
        return annotation
    raise TypeError(f"{schema.__name__}.{field}: {annotation} has no command-line option form")


def add_options(parser: argparse.ArgumentParser, schema: type) -> None:
    """One option per field of `schema`. Options left out stay unset (argparse.SUPPRESS), so the config's defaults
    and a --config file can fill them."""
    hints = typing.get_type_hints(schema)
    docs = field_docs(schema)
    for f in option_fields(schema):
        kind = _scalar_type(schema, f.name, hints[f.name])
        if f.default is MISSING and f.default_factory is MISSING:
            note = " (required)"
        elif f.default is None or f.default is MISSING:
            note = ""
        else:
            note = f" (default: {f.default})"
        help_text = (docs.get(f.name, "") + note).replace("%", "%%")  # argparse %-formats help strings
        options: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
        if typing.get_origin(kind) is Literal:
            options["choices"] = typing.get_args(kind)
        else:
            options["type"] = kind
            options["metavar"] = f.name.upper()
        parser.add_argument(option_name(f.name), **options)


def given_options(args: argparse.Namespace, schema: type) -> list[str]:
    """The fields given as options, as `field=value` overrides; JSON writes each value as YAML reads it back (a
    string stays a string, whatever it spells)."""
    return [f"{f.name}={json.dumps(getattr(args, f.name))}" for f in option_fields(schema) if hasattr(args, f.name)]
