"""Frozen dataclasses read from TOML tables, with the dataclass as the only schema.

Which keys a table may hold, their types, which are required and what they mean are all read from
the dataclass: a field ``cmake_args: tuple[str, ...] = ()`` is the optional key ``cmake-args``, a list
of strings; its docstring (the string literal under it) is its documentation. `load` checks a table
against that and names the file, the dotted key and the closest valid spelling on any error;
`json_schema` writes the same facts as a JSON schema that editors use to complete and check the files.

Field metadata adds what a type cannot say:

- ``{"check": f}``: ``f(value)`` returns a problem in words, or None;
- ``{"derived": True}``: not a key of the file (set by the loader: a name, a path, a table's key);
- ``{"one_or_many": True}``: a ``tuple[str, ...]`` that also accepts a single string.

A dataclass may define ``validate(self, table)`` for checks across fields; it raises ``table.fail(...)``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from llamawheel.core.datafile import Table
from llamawheel.core.errors import did_you_mean

T = TypeVar("T")
Check = Callable[[Any], "str | None"]
DERIVED: dict[str, Any] = {"derived": True}


def key_of(f: dataclasses.Field[Any]) -> str:
    """The TOML key of a field: ``cmake_args`` -> ``cmake-args``."""
    return str(f.metadata.get("key") or f.name.replace("_", "-"))


def file_fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    """The fields a file may set, by TOML key."""
    return {key_of(f): f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("derived")}


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def load(cls: type[T], table: Table, **derived: Any) -> T:
    """An instance of the dataclass ``cls`` from ``table`` (``derived`` sets fields that are not keys)."""
    allowed = file_fields(cls)
    for key in table.data:
        if key not in allowed:
            raise table.fail(key, f"unknown key{did_you_mean(key, allowed)}", "known keys here: " + ", ".join(allowed))
    hints = get_type_hints(cls)
    values: dict[str, Any] = dict(derived)
    for key, f in allowed.items():
        if key not in table.data:
            if _required(f):
                raise table.fail(key, "is missing")
            continue
        values[f.name] = _convert(hints[f.name], table, key, f)
        check: Check | None = f.metadata.get("check")
        problem = check(values[f.name]) if check else None
        if problem:
            raise table.fail(key, problem)
    record = cls(**values)
    validate = getattr(record, "validate", None)
    if validate is not None:
        validate(table)
    return record


def _is_record(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _optional_of(tp: Any) -> Any:
    """``X`` for ``X | None``, else None."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in get_args(tp) if a is not type(None)]
        if len(rest) == 1 and len(get_args(tp)) == 2:
            return rest[0]
    return None


_SCALARS: dict[Any, tuple[type, str]] = {
    str: (str, "a string"), int: (int, "an integer"), bool: (bool, "true or false"),
}


def _convert(tp: Any, table: Table, key: str, f: dataclasses.Field[Any]) -> Any:
    value = table.data[key]
    inner = _optional_of(tp)
    if inner is not None:
        tp = inner
    origin, args = get_origin(tp), get_args(tp)
    if tp in _SCALARS:
        return table.value(key, *_SCALARS[tp])
    if origin is Literal:
        table.value(key, *_SCALARS[str])
        if value not in args:
            raise table.fail(key, f"'{value}' is not one of {', '.join(args)}{did_you_mean(value, args)}")
        return value
    if _is_record(tp):
        return load(tp, table.table(key))
    if origin is tuple and args[1:] == (Ellipsis,):
        if args[0] is str:
            if f.metadata.get("one_or_many") and isinstance(value, str):
                return (value,)
            return table.str_list(key)
        if _is_record(args[0]):
            return tuple(load(args[0], t) for t in table.tables(key))
    if origin is dict and args[0] is str and _is_record(args[1]):
        sub = table.table(key)
        return {name: load(args[1], sub.table(name), **{_key_field(args[1]): name}) for name in sub.data}
    raise TypeError(f"{f.name}: records cannot load a field of type {tp}")  # a programming error, not the user's


def _key_field(cls: type) -> str:
    """The field that receives a record's key in its parent table (``{"derived": "key"}``)."""
    for f in dataclasses.fields(cls):
        if f.metadata.get("derived") == "key":
            return f.name
    raise TypeError(f"{cls.__name__} has no field marked {{'derived': 'key'}}")


# ----------------------------------------------------------------------------- JSON schema


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstrings written under each field of a dataclass (read from its source)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    node = ast.parse(source).body[0]
    assert isinstance(node, ast.ClassDef)
    docs: dict[str, str] = {}
    for stmt, following in zip(node.body, [*node.body[1:], None], strict=True):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)):
            docs[stmt.target.id] = " ".join(following.value.value.split()).replace("``", "`")
    return docs


def _type_schema(tp: Any, f: dataclasses.Field[Any] | None = None) -> dict[str, Any]:
    inner = _optional_of(tp)
    if inner is not None:
        tp = inner
    origin, args = get_origin(tp), get_args(tp)
    if tp in _SCALARS:
        return {"type": {str: "string", int: "integer", bool: "boolean"}[tp]}
    if origin is Literal:
        return {"enum": list(args)}
    if _is_record(tp):
        return object_schema(tp)
    if origin is tuple:
        items = _type_schema(args[0])
        if f is not None and f.metadata.get("one_or_many"):
            return {"anyOf": [items, {"type": "array", "items": items}]}
        return {"type": "array", "items": items}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(args[1])}
    raise TypeError(f"no JSON schema for {tp}")


def object_schema(cls: type) -> dict[str, Any]:
    """The JSON schema of one table: its keys, their types and documentation, which are required."""
    hints = get_type_hints(cls)
    docs = {**field_docs(cls)}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for key, f in file_fields(cls).items():
        prop = _type_schema(hints[f.name], f)
        if f.name in docs:
            prop = {"description": docs[f.name], **prop}
        if not _required(f) and f.default not in (dataclasses.MISSING, None) and not _is_record(type(f.default)):
            prop["default"] = list(f.default) if isinstance(f.default, tuple) else f.default
        properties[key] = prop
        if _required(f):
            required.append(key)
    schema: dict[str, Any] = {"type": "object"}
    if cls.__doc__:
        schema["description"] = " ".join(cls.__doc__.split()).replace("``", "`")
    schema |= {"properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


def json_schema(cls: type, title: str) -> dict[str, Any]:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title, **object_schema(cls)}
