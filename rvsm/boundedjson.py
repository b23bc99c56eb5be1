"""JSON read under caps on its size, nesting depth and element count, checked on the text before
``json.loads`` builds anything, so no recursion error, no huge list and no deep nesting reaches the parser.

The shape is found by one linear scan that skips string literals (:func:`json_shape`); the element count
is an upper bound (every ``,`` outside strings, plus every container), exact enough to cap a list bomb.
"""

from __future__ import annotations

import json
import re

import numpy as np

from .errors import InputError

# a JSON string literal, or an unterminated one to the end: it never fails, so it never backtracks (linear)
_STRING = re.compile(rb'"[^"\\]*(?:\\[\s\S]?[^"\\]*)*(?:"|\Z)')
_STEP = np.zeros(256, np.int8)
_STEP[list(b"[{")] = 1
_STEP[list(b"]}")] = -1


def json_shape(text: bytes) -> tuple[int, int]:
    """How deeply arrays and objects nest in JSON ``text`` and how many there are, from the text alone
    (string literals skipped), so both caps are checked before ``json.loads`` builds anything: exact for
    valid JSON; text that is not JSON is refused by the parser after."""
    return _shape(_STRING.sub(b"", text))


def _shape(bare: bytes) -> tuple[int, int]:
    containers = bare.count(b"[") + bare.count(b"{")
    if not containers:
        return 0, 0
    depth = np.cumsum(_STEP[np.frombuffer(bare, np.uint8)], dtype=np.int64).max()
    return int(depth), containers


def load_json(text: bytes, *, field: str, what: str, max_bytes: int, max_depth: int, max_elements: int) -> object:
    """``json.loads(text)`` once ``text`` is at most ``max_bytes``, nests at most ``max_depth`` deep and holds
    at most ``max_elements`` values (an upper bound from the text); else ``InputError(field, ...)`` naming
    ``what`` and the cap. A text that is not JSON is an ``InputError`` too."""
    if len(text) > max_bytes:
        raise InputError(field, f"refused: {what} is {len(text)} bytes, over the cap of {max_bytes}")
    bare = _STRING.sub(b"", text)
    depth, containers = _shape(bare)
    if depth > max_depth:
        raise InputError(field, f"refused: {what} nests {depth} deep, over the cap of {max_depth}")
    elements = containers + bare.count(b",") + 1
    if elements > max_elements:
        raise InputError(field, f"refused: {what} holds about {elements} values, over the cap of {max_elements}")
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise InputError(field, f"refused: {what} is not JSON ({str(e)[:100]})") from None
