"""Metadata: a partner's own key-value pairs on payments, refunds and accounts.

An ordered list of entries, as the partner sent them (DESIGN.md 2c), stored as a JSON array
of ``{"key", "value"}`` objects. At most 20 entries; keys are 1 to 40 characters of
``[A-Za-z0-9_.-]`` and unique within the list; values at most 500 characters without control
characters. A refusal is BAD_USER_INPUT naming the entry (``metadata[3].key``).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import BadUserInput

__all__ = [
    "MAX_ENTRIES",
    "MAX_KEY_LENGTH",
    "MAX_VALUE_LENGTH",
    "Metadata",
    "metadata_from_json",
    "metadata_json",
    "validate_metadata",
    "validate_metadata_key",
]

MAX_ENTRIES = 20
MAX_KEY_LENGTH = 40
MAX_VALUE_LENGTH = 500

Metadata = tuple[tuple[str, str], ...]
"""(key, value) pairs in the order the partner sent them."""

_KEY = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_KEY_LENGTH}}}", re.ASCII)


def validate_metadata_key(key: str, *, field: str) -> str:
    if not isinstance(key, str) or _KEY.fullmatch(key) is None:
        raise BadUserInput(
            f"{field} must be 1 to {MAX_KEY_LENGTH} characters of A-Z, a-z, 0-9, '_', '.', '-'",
            field=field)
    return key


def _validate_value(value: str, *, field: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_VALUE_LENGTH:
        raise BadUserInput(f"{field} must be at most {MAX_VALUE_LENGTH} characters", field=field)
    # Cc and Cs as for references: NUL breaks PostgreSQL, lone surrogates are not UTF-8.
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise BadUserInput(f"{field} must not contain control characters", field=field)
    return value


def validate_metadata(entries: Sequence[tuple[str, str]] | None, *,
                      field: str = "metadata") -> Metadata:
    """The entries unchanged if valid (``None`` is no metadata), else BAD_USER_INPUT on the
    first entry at fault."""
    if entries is None:
        return ()
    if len(entries) > MAX_ENTRIES:
        raise BadUserInput(f"{field} has {len(entries)} entries, at most {MAX_ENTRIES} allowed",
                           field=field)
    seen: set[str] = set()
    for index, (key, value) in enumerate(entries):
        validate_metadata_key(key, field=f"{field}[{index}].key")
        if key in seen:
            raise BadUserInput(f"{field}[{index}].key: {key!r} appears twice",
                               field=f"{field}[{index}].key")
        seen.add(key)
        _validate_value(value, field=f"{field}[{index}].value")
    return tuple((key, value) for key, value in entries)


def metadata_json(metadata: Metadata) -> list[dict[str, str]]:
    """The stored (and event) form: ``[{"key": ..., "value": ...}, ...]``."""
    return [{"key": key, "value": value} for key, value in metadata]


def metadata_from_json(data: Iterable[Mapping[str, Any] | Sequence[str]] | str | None
                       ) -> Metadata:
    """Back from the stored form (``None`` or absent: none, as in rows cached before 0007).
    Also takes the JSON text (a ``text()`` query's jsonb column) and (key, value) pairs."""
    if isinstance(data, str):
        data = json.loads(data)
    if not data:
        return ()
    pairs: list[tuple[str, str]] = []
    for entry in data:
        if isinstance(entry, Mapping):
            pairs.append((str(entry["key"]), str(entry["value"])))
        else:
            key, value = entry
            pairs.append((str(key), str(value)))
    return tuple(pairs)
