"""The GraphQL schema as a published contract.

``schema.graphql`` at the repository root is the printed SDL of the code's schema
(``paystream schema > schema.graphql``). Breaking changes against the published file
(graphql-core's ``find_breaking_changes``: a removed or renamed type, field, argument or enum
value, a changed type, a new required argument) are refused unless ``schema.breaking`` lists
them; docs/decisions.md explains the workflow.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from graphql import build_schema as parse_sdl
from graphql.utilities import find_breaking_changes

from ..config import Settings

__all__ = ["BreakingChange", "accepted_changes", "breaking_changes", "schema_sdl", "sdl_digest",
           "unaccepted_changes"]


def schema_sdl() -> str:
    """The SDL of the schema the app serves, ending with one newline.

    Built with ``build_schema`` exactly as the app does. Its shape does not depend on the
    settings (they only set limits and introspection), so default settings are used without
    validation: printing the schema needs no servers and no environment.
    """
    from .schema import build_schema

    return build_schema(Settings.model_construct()).as_str().rstrip("\n") + "\n"


def sdl_digest(sdl: str) -> str:
    """A short, stable name for one published SDL text (the first 12 hex of its sha256)."""
    return hashlib.sha256(sdl.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True, order=True)
class BreakingChange:
    """One change that can break a client written against the published schema."""

    kind: str  # graphql-core's BreakingChangeType name, e.g. FIELD_REMOVED
    description: str  # e.g. "Field Payment.reference was removed."

    def entry(self, published_digest: str) -> str:
        """The ``schema.breaking`` line that accepts this change from that published SDL."""
        return f"{published_digest} {self.kind} {self.description}"


def breaking_changes(published: str, current: str) -> list[BreakingChange]:
    """What ``current`` breaks for clients of ``published`` (both SDL texts), sorted."""
    found = find_breaking_changes(parse_sdl(published), parse_sdl(current))
    return sorted(BreakingChange(change.type.name, change.description) for change in found)


def accepted_changes(text: str) -> set[str]:
    """The entries of a ``schema.breaking`` file: one per line, blank lines and ``#``
    comments ignored, inner whitespace normalised so alignment does not matter."""
    entries = set()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            entries.add(" ".join(line.split()))
    return entries


def unaccepted_changes(published: str, current: str, accepted: str) -> list[str]:
    """The ``schema.breaking`` lines still missing for ``current`` to replace ``published``.

    An entry names the digest of the published SDL it was accepted against, so it accepts
    that change once: after the commit the published schema (and its digest) is the new one,
    and the entry stays in the file as the record of what was broken on purpose without
    accepting the same break again later.
    """
    digest = sdl_digest(published)
    entries = accepted_changes(accepted)
    return [line for change in breaking_changes(published, current)
            if " ".join((line := change.entry(digest)).split()) not in entries]
