"""A flat config dataclass as command-line options, so a command declares its options once, as the config's fields.

Each field becomes `--field-name`, typed from its annotation, with the docstring under the field as help. Only the
options given on the command line come back (`given_options`), as KEY=VALUE overrides for `config.load_config`: the
strict loader then checks them like a YAML file's keys, and the config's own defaults apply to the rest.
A field named `stage` is no option: it names what a saved config.yaml configures, for `align validate`.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from typing import Any, Literal, Union

SCALARS = (str, int, float)


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
    if annotation in SCALARS or (typing.get_origin(annotation) is Literal
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
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            note = " (required)"
        elif f.default is None or f.default is dataclasses.MISSING:
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
