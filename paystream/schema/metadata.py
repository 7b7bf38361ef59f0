"""Metadata as GraphQL sees it: entries out, entry inputs in (validated by the services)."""

from __future__ import annotations

import strawberry

from ..domain.metadata import Metadata


@strawberry.type(description="One of a partner's own key-value pairs.")
class MetadataEntry:
    key: str
    value: str


@strawberry.input(description="Keys: 1 to 40 characters of A-Z a-z 0-9 _ . - (unique); "
                  "values: at most 500 characters; at most 20 entries.")
class MetadataEntryInput:
    key: str
    value: str


def metadata_entries(metadata: Metadata) -> list[MetadataEntry]:
    return [MetadataEntry(key=key, value=value) for key, value in metadata]


def metadata_pairs(entries: list[MetadataEntryInput] | None) -> list[tuple[str, str]] | None:
    """The input as (key, value) pairs for the services; None when omitted."""
    return None if entries is None else [(e.key, e.value) for e in entries]
