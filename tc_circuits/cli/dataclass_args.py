"""Build argparse options from a config dataclass, so the CLI and the API share defaults.

Each field becomes ``--field-name``; its help text is the docstring written under the field
(read from the source with ``ast``). ``dataclass_from_args`` builds the config back, passing
only the options the user gave so that the dataclass defaults stay the single source.

:func:`add_config_args` names the config as ``"module:Class"`` and, while that module is not
imported yet, reads the fields from its source (names, annotations, literal defaults and
docstrings, with ``ast``) instead of importing it, so ``--help`` does not load torch just to
list a config's options; it falls back to importing when the source is not plain enough.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin, get_type_hints


def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` for attribute docstrings written under dataclass fields."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _parse_optional(inner):
    def parse(text: str):
        if text.lower() == "none":
            return None
        return inner(text)

    return parse


def add_dataclass_args(
    parser: argparse.ArgumentParser, cls: type, *, exclude: tuple[str, ...] = ()
) -> None:
    """Add one ``--option`` per field of dataclass ``cls`` (defaults left to the dataclass)."""
    hints = get_type_hints(cls)
    docs = getattr(cls, "__field_docs__", None) or field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING  # type: ignore[misc]
        default_value = (
            f.default if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        )
        help_text = docs.get(f.name, "")
        if has_default:
            help_text += f" (default: {default_value!r})"
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "help": help_text,
            "default": argparse.SUPPRESS,
            "required": not has_default,
        }
        origin = get_origin(tp)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            kwargs["choices"] = list(get_args(tp))
            kwargs["type"] = type(get_args(tp)[0])
        elif origin in (tuple, list):
            args = [a for a in get_args(tp) if a is not Ellipsis]
            kwargs["nargs"] = "+"
            kwargs["type"] = args[0] if args else str
        elif tp in (int, float, str):
            kwargs["type"] = _parse_optional(tp) if optional else tp
        else:
            continue  # dicts and nested objects are API-only
        parser.add_argument(flag, **kwargs)


def dataclass_from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """Build ``cls`` from the options present on ``args`` (plus ``overrides``)."""
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name):
            value = getattr(args, f.name)
            if get_origin(_unwrap_optional(hints[f.name])[0]) is tuple and value is not None:
                value = tuple(value)
            values[f.name] = value
    values.update(overrides)
    return cls(**values)


_ANNOTATION_NAMES = {
    "Literal": Literal, "Optional": Optional, "Union": Union, "Any": Any, "tuple": tuple, "list": list,
    "dict": dict, "int": int, "float": float, "str": str, "bool": bool, "None": None,
}


def _literal(node: ast.expr, constants: dict[str, Any]) -> Any:
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    return ast.literal_eval(node)


def _module_tree(module: str) -> ast.Module | None:
    import tc_circuits

    rel = module.split(".")
    if rel[0] != "tc_circuits":
        return None
    base = Path(tc_circuits.__file__).parent.joinpath(*rel[1:])
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    try:
        return ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return None


def _module_constants(tree: ast.Module, depth: int) -> dict[str, Any]:
    """Module-level literal constants (``KINDS = (...)``), and those it imports from our modules."""
    constants: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except (ValueError, SyntaxError, TypeError):
                pass
        elif isinstance(node, ast.ImportFrom) and depth > 0 and (node.module or "").startswith("tc_circuits"):
            other = _module_tree(node.module)
            if other is not None:
                theirs = _module_constants(other, depth - 1)
                for alias in node.names:
                    if alias.name in theirs:
                        constants[alias.asname or alias.name] = theirs[alias.name]
    return constants


def static_dataclass(module: str, name: str) -> type | None:
    """A stand-in dataclass with the fields of ``module.name``, read from its source without
    importing it (None when the class is not plain enough: bases, non-literal defaults, ...)."""
    tree = _module_tree(module)
    if tree is None:
        return None
    constants = _module_constants(tree, depth=1)
    cls_node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
    if cls_node is None or cls_node.bases:
        return None
    fields: list[tuple[str, Any, Any]] = []
    docs: dict[str, str] = {}
    body = cls_node.body
    for node, nxt in zip(body, [*body[1:], None]):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        ann = ast.unparse(node.annotation)
        if ann.startswith("ClassVar"):
            continue
        try:
            tp = eval(ann, {"__builtins__": {}}, dict(_ANNOTATION_NAMES))  # noqa: S307 (names above only)
        except Exception:  # noqa: BLE001 -- anything unusual: import the real class instead
            return None
        if node.value is None:
            fields.append((node.target.id, tp, dataclasses.field()))
        else:
            try:
                fields.append((node.target.id, tp, dataclasses.field(default=_literal(node.value, constants))))
            except (ValueError, SyntaxError, TypeError):
                return None
        if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    try:
        cls = dataclasses.make_dataclass(name, fields)
    except (TypeError, ValueError):
        return None
    cls.__field_docs__ = docs
    return cls


def config_class(ref: str) -> type:
    """The real class of ``"module:Class"`` (imports the module)."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def add_config_args(parser: argparse.ArgumentParser, ref: str, *, exclude: tuple[str, ...] = ()) -> None:
    """:func:`add_dataclass_args` for the config ``"module:Class"``, without importing the module
    when its source can be read statically (it is imported when it already is, or must be)."""
    module, _, name = ref.partition(":")
    cls = getattr(sys.modules[module], name) if module in sys.modules else static_dataclass(module, name)
    add_dataclass_args(parser, cls or config_class(ref), exclude=exclude)
