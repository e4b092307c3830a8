"""Lenient reading of v3 request fields, with Laravel-style error messages.

Real clients send numbers as strings ("512"), flags as "yes"/"no"/true/"false", and "" or
"null" for absent values (spec section 1). A `Field` (sdapi.fields) describes one field;
`read_fields` coerces a whole body and collects every error at once, as Laravel does:
{"width": ["The width must be a multiple of 8."], "prompt": ["The prompt field is required."]}.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from sdapi.errors import ValidationFailed
from sdapi.fields import Field, Kind

ABSENT_STRINGS = frozenset({"", "null", "none", "undefined"})
TRUE_WORDS = frozenset({"yes", "true", "1", "on"})
FALSE_WORDS = frozenset({"no", "false", "0", "off"})


class FieldError(ValueError):
    """One rule a value broke; the text is the whole client-facing sentence."""


def is_absent(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ABSENT_STRINGS)


def read_fields(body: Mapping[str, Any], fields: Sequence[Field]) -> dict[str, Any]:
    """Every field's coerced value (or default); raises ValidationFailed listing all errors."""
    values: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for field in fields:
        raw = _raw(body, field)
        try:
            values[field.name] = _read(field, raw)
        except FieldError as exc:
            errors.setdefault(field.name, []).append(str(exc))
    if errors:
        raise ValidationFailed(errors)
    return values


def _raw(body: Mapping[str, Any], field: Field) -> Any:
    for name in (field.name, *field.aliases):
        if name in body and not is_absent(body[name]):
            return body[name]
    return None


def _read(field: Field, raw: Any) -> Any:
    if raw is None:
        if field.required:
            raise FieldError(f"The {field.label} field is required.")
        return field.default
    value = COERCE[field.kind](field, raw)
    _check_range(field, value)
    return value


def _as_str(field: Field, raw: Any) -> str:
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise FieldError(f"The {field.label} must be a string.")
    text = str(raw)
    if field.max_length is not None and len(text) > field.max_length:
        raise FieldError(
            f"The {field.label} must not be greater than {field.max_length} characters."
        )
    _check_text(field, text)
    if field.choices is not None and text not in field.choices:
        raise FieldError(f"The selected {field.label} is invalid.")
    return text


def _check_text(field: Field, text: str) -> None:
    """Text every store can keep: PostgreSQL refuses NUL, and a lone surrogate (a JSON escape
    like "\\ud800") cannot be encoded as UTF-8 at all."""
    if "\x00" in text:
        raise FieldError(f"The {field.label} must not contain NUL characters.")
    if not text.isascii():  # the common case, base64 images included, skips the copy below
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise FieldError(f"The {field.label} must be valid UTF-8 text.") from None


def _as_float(field: Field, raw: Any) -> float:
    if isinstance(raw, bool):
        raise FieldError(f"The {field.label} must be a number.")
    try:
        value = float(raw.strip() if isinstance(raw, str) else raw)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond any float
        raise FieldError(f"The {field.label} must be a number.") from None
    if not math.isfinite(value):
        raise FieldError(f"The {field.label} must be a number.")
    return value


def _as_int(field: Field, raw: Any) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lstrip("+-").isdigit():
        try:
            return int(raw.strip())  # exact, also for seeds beyond float precision
        except ValueError:  # "+-1", "²" (a digit int() refuses), or beyond 4300 digits
            raise FieldError(f"The {field.label} must be an integer.") from None
    try:
        value = _as_float(field, raw)
    except FieldError:
        raise FieldError(f"The {field.label} must be an integer.") from None
    if not value.is_integer():
        raise FieldError(f"The {field.label} must be an integer.")
    return int(value)


def _as_flag(field: Field, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    word = str(raw).strip().lower() if isinstance(raw, str | int) else None
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise FieldError(f"The {field.label} field must be yes or no.")


COERCE = {"str": _as_str, "int": _as_int, "float": _as_float, "flag": _as_flag}


def _check_range(field: Field, value: Any) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    low, high = field.minimum, field.maximum
    if (low is not None and value < low) or (high is not None and value > high):
        raise FieldError(f"The {field.label} must be between {_num(low)} and {_num(high)}.")
    if field.multiple_of and value % field.multiple_of:
        raise FieldError(f"The {field.label} must be a multiple of {field.multiple_of}.")


def sentence(text: str) -> str:
    """An engine message as a field message: one final stop (its first word may be a name, so
    it is not capitalised)."""
    return f"{text.rstrip('.')}."


def _num(value: float | None) -> str:
    if value is None:
        return "any"
    return str(int(value)) if float(value).is_integer() else str(value)


#: Numbers as strings ("7.5", "1e1"): what float() reads, less "inf", "nan" and "1_0".
NUMBER_TEXT = r"^\s*[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\s*$"
_KINDS: dict[Kind, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"anyOf": [{"type": "integer"}, {"type": "string", "pattern": r"^-?\d+$"}]},
    "float": {"anyOf": [{"type": "number"}, {"type": "string", "pattern": NUMBER_TEXT}]},
    "flag": {"anyOf": [{"type": "boolean"}, {"type": "string", "enum": ["yes", "no"]}]},
}


def json_schema(fields: Sequence[Field]) -> dict[str, Any]:
    """An OpenAPI schema for a body of these fields (documents the lenient forms too)."""
    props = {field.name: _property(field) for field in fields}
    required = [f.name for f in fields if f.required]
    return {
        "type": "object",
        "properties": props,
        "required": required,
        "additionalProperties": True,
    }


def _property(field: Field) -> dict[str, Any]:
    # Every rule read_fields applies, so schema-driven clients and fuzzers know the valid range.
    prop: dict[str, Any] = {**_KINDS[field.kind], "description": field.description}
    rules = {
        "default": field.default,
        "minimum": _exact(field.minimum),
        "maximum": _exact(field.maximum),
        "multipleOf": field.multiple_of,
        "maxLength": field.max_length,
        "enum": sorted(field.choices) if field.choices is not None else None,
    }
    prop.update({name: rule for name, rule in rules.items() if rule is not None})
    if field.required and field.kind == "str":
        # "" and blanks count as absent (ABSENT_STRINGS), so a required one is missing.
        prop |= {"minLength": 1, "pattern": r"\S"}
    return prop


def _exact(bound: float | None) -> float | None:
    # 2**64 - 1 as a float would be 2**64: integral bounds stay ints.
    return int(bound) if isinstance(bound, float) and bound.is_integer() else bound
