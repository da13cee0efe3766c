"""Operator arguments as the types their signatures declare, whatever the DAG's template rendering made of them.

A DAG without ``render_template_as_native_obj`` renders ``{{ params.epochs }}`` as the string "10" and None as
"None"; one with it turns "123" into an int even where a name was meant. ``coerce`` takes a rendered value and
the argument's annotation (``int``, ``float``, ``bool``, ``str``, ``list[str]``, ``dict[str, Any]``,
``Literal[...]`` and unions of them with None) and returns the value of that type, or fails naming the
argument, the type and the value. A string argument stays exactly as rendered; "None" and "" mean None only
for an optional argument. Lists and dicts are read as JSON or as Python literals (``ast.literal_eval``),
never evaluated.
"""

from __future__ import annotations

import ast
import json
import math
import re
import types
import typing
from functools import cache
from typing import Any, Literal, Union

from airflow_tl.exceptions import InvalidArgumentError

_INT = re.compile(r"^[+-]?\d{1,30}$")
_INVALID = object()  # what a failed conversion returns: None is a valid result
_NONE_STRINGS = ("None", "")
_WORDS = {int: "an integer", float: "a number", str: "a string"}


def options(hint: Any) -> tuple[Any, ...]:
    """The alternatives of a type hint: ``int | None`` gives ``(int, NoneType)``; Literals are kept whole."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        return tuple(option for arg in typing.get_args(hint) for option in options(arg))
    return (hint,)


def describe(hint: Any) -> str:
    """The type in words, for messages: ``int | Literal["all"]`` is "an integer or 'all'"."""
    words = []
    for option in options(hint):
        if option is type(None):
            words.append("None")
        elif option is bool:
            words += ["True", "False"]
        elif typing.get_origin(option) is Literal:
            words += [repr(value) for value in typing.get_args(option)]
        elif typing.get_origin(option) is list:
            words.append("a list of strings")
        elif typing.get_origin(option) is dict or option is dict:
            words.append("a JSON object")
        else:
            words.append(_WORDS[option])
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def coerce(name: str, hint: Any, value: Any) -> Any:
    """``value`` as the type ``hint`` declares for argument ``name``.

    :param name: the argument, for the message.
    :param hint: its annotation.
    :param value: what the template rendered to (or the Python value the DAG passed).
    """
    alternatives = options(hint)
    converted = _from_string(alternatives, value) if isinstance(value, str) else _from_value(alternatives, value)
    if converted is _INVALID:
        raise InvalidArgumentError(f"Argument {name} accepts only {describe(hint)}. Provided value: {value!r}.")
    return converted


def _from_string(alternatives: tuple[Any, ...], text: str) -> Any:
    if type(None) in alternatives and text.strip() in _NONE_STRINGS:
        return None
    for option in alternatives:
        value = _parse(option, text)
        if value is not _INVALID:
            return value
    return _INVALID


def _parse(option: Any, text: str) -> Any:
    stripped = text.strip()
    if option is str:
        return text
    if typing.get_origin(option) is Literal:
        return text if text in typing.get_args(option) else _INVALID
    if option is bool:
        return {"true": True, "false": False}.get(stripped.lower(), _INVALID)
    if option is int:
        return int(stripped) if _INT.match(stripped) else _INVALID
    if option is float:
        try:
            number = float(stripped)
        except ValueError:
            return _INVALID
        return number if math.isfinite(number) else _INVALID
    if option is not type(None):
        return _from_value((option,), _literal(stripped))
    return _INVALID


def _literal(text: str) -> Any:
    """A JSON or Python literal, or _INVALID."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _INVALID


def _from_value(alternatives: tuple[Any, ...], value: Any) -> Any:
    for option in alternatives:
        if _is_instance(option, value):
            return value
    # A native-rendering DAG reads a numeric string Param such as a version "2024" as a number.
    if str in alternatives and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return _INVALID


def _is_instance(option: Any, value: Any) -> bool:
    origin = typing.get_origin(option)
    if option is type(None):
        return value is None
    if origin is Literal:
        return isinstance(value, str) and value in typing.get_args(option)
    if origin is list:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if origin is dict or option is dict:
        return isinstance(value, dict) and all(isinstance(key, str) for key in value)
    if option is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if option is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, option)


@cache
def declared_types(cls: type, base: type) -> dict[str, Any]:
    """The annotations of the ``__init__`` arguments of ``cls`` and its ancestors down to ``base``.

    :param cls: the operator class.
    :param base: the last class whose ``__init__`` counts.
    """
    hints: dict[str, Any] = {}
    for klass in reversed(cls.__mro__[: cls.__mro__.index(base) + 1]):
        init = klass.__dict__.get("__init__")
        if init is not None:
            hints.update({k: v for k, v in _hints(init).items() if k not in ("return", "kwargs")})
    return hints


def _hints(function: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except (NameError, TypeError):  # a subclass annotating with names only known to type checkers: untyped
        return {}


SUPPORTED = "int, float, bool, str, list[str], dict[str, Any], Literal[...] and their unions with None"


def is_supported(hint: Any) -> bool:
    """Whether ``coerce`` understands every alternative of ``hint``."""
    for option in options(hint):
        origin = typing.get_origin(option)
        if option in (int, float, bool, str, type(None), dict) or origin is Literal:
            continue
        if origin is list and typing.get_args(option) == (str,):
            continue
        if origin is dict and typing.get_args(option)[:1] == (str,):
            continue
        return False
    return True
