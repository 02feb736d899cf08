"""Strict JSON for request bodies: NaN, Infinity and overflowing numbers are refused, never turned into floats."""

from __future__ import annotations

import json
import math
from typing import Any

from service.http.errors import InvalidInput, PayloadTooLarge

MAX_INT_DIGITS = 310  # a longer integer is beyond any float, and past 4,300 digits Python refuses to convert it


def _reject_constant(token: str) -> float:
    raise InvalidInput(f"invalid JSON: {token} is not allowed; send null for a missing value")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise InvalidInput(f"invalid JSON: the number {text} is out of range")
    return value


def _bounded_int(text: str) -> int | float:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidInput(f"invalid JSON: an integer of {len(text.lstrip('-'))} digits is out of range")
    return int(text)


def parse_json(body: bytes) -> Any:
    """Strict JSON: NaN, Infinity and overflowing numbers are refused, not turned into floats."""
    try:
        return json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"invalid JSON: {exc}") from exc
    except RecursionError as exc:
        raise InvalidInput("invalid JSON: nested too deeply") from exc
    except ValueError as exc:  # anything else the parser refuses; never a 500
        raise InvalidInput(f"invalid JSON: {exc}") from exc


def json_list(body: bytes, key: str, max_items: int, what: str) -> list[Any]:
    document = parse_json(body)
    if not isinstance(document, dict) or key not in document:
        raise InvalidInput(f'{key}: missing; send {{"{key}": [...]}}')
    items = document[key]
    if not isinstance(items, list):
        raise InvalidInput(f"{key}: expected a list, got {type(items).__name__}")
    if not items:
        raise InvalidInput(f"{key}: empty; send at least one {what}")
    if len(items) > max_items:
        raise PayloadTooLarge(f"{key}: {len(items)} {what}s in one request, the limit is {max_items}")
    return items
