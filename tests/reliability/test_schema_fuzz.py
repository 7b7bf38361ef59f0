"""Property-based fuzzing of the schema over HTTP (hypothesis-graphql): for any query or
mutation the schema admits, with hostile argument values (cursors in `after` included), the
API answers 200 with no INTERNAL error and no internals in the text. 100 examples of each by
default; PAYSTREAM_HEAVY=1 runs 1,500. Cursors get a fuzzer of their own as well, since the
generated operations reach an `after` argument only now and then."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from datetime import timedelta, timezone
from typing import Any

import hypothesis_graphql
import pytest
from graphql import StringValueNode
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from tests.integration._gateway import app_client

from .conftest import sized
from .leaks import assert_no_leak

pytestmark = pytest.mark.integration

# Decimal travels as a string: hostile spellings next to plausible ones.
DECIMALS = st.one_of(
    st.sampled_from(["1.00", "0.01", "1e309", "-0", "NaN", "Infinity", "0.001", "１.００",
                     "9" * 40, "", " 1", "1_0", "0x1"]),
    st.decimals(allow_nan=True, allow_infinity=True, places=None).map(str),
    st.text(max_size=50),
)


def _base64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# Timestamps as a cursor spells them, at and past the ends of Python's and PostgreSQL's range
# (in UTC, "0001-01-01T00:00:00+14:00" is in year 0), and arbitrary text.
_OFFSETS = st.timedeltas(min_value=timedelta(hours=-23, minutes=-59),
                         max_value=timedelta(hours=23, minutes=59)).map(timezone)
_STAMPS = st.one_of(
    st.sampled_from(["0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00+00:01",
                     "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00", "294277-01-01T00:00:00Z",
                     "2024-02-30T00:00:00Z", "-4713-01-01T00:00:00Z", ""]),
    st.datetimes(timezones=_OFFSETS).map(lambda d: d.isoformat()),
    st.text(max_size=40),
)
CURSORS = st.one_of(
    st.tuples(_STAMPS, st.one_of(st.uuids().map(str), st.text(max_size=40)))
    .map(lambda t: _base64url(f"{t[0]}|{t[1]}".encode(errors="surrogatepass"))),
    st.binary(max_size=80).map(_base64url),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=",
            max_size=80),
    st.text(max_size=40),
)
_AFTER = re.compile(r'after: "(?:[^"\\]|\\.)*"')


def ids(known: list[str]) -> st.SearchStrategy[str]:
    """Real account ids (so resolvers go past the lookup), random UUIDs and junk."""
    return st.one_of(st.sampled_from(known), st.uuids().map(str), st.text(max_size=40))


@pytest.mark.parametrize("mode", ["query", "mutation"])
async def test_no_generated_operation_is_internal_or_5xx(settings, make_partner, mode: str) -> None:
    partner, other = await make_partner(), await make_partner()
    accounts = [await partner.account(), await partner.account(balance="0"),
                await partner.account("EUR"), await other.account()]
    # No rate limit in the way: every example must reach the resolvers.
    limits = {"query_burst": 1_000_000, "query_rate_per_s": 1e6, "mutation_burst": 1_000_000,
              "mutation_rate_per_s": 1e6}
    async with app_client(settings, limits=limits) as (http, services):
        from paystream.resolvers.schema import build_schema

        sdl = str(build_schema(services.settings))
        # DateTime arguments (statement ranges, balanceAt, payment filters) get the hostile
        # timestamps the cursors get.
        custom = {"Decimal": DECIMALS.map(lambda s: StringValueNode(value=s)),
                  "DateTime": _STAMPS.map(lambda s: StringValueNode(value=s))}
        make = hypothesis_graphql.queries if mode == "query" else hypothesis_graphql.mutations
        strategy = make(sdl, custom_scalars=custom)
        examples: list[str] = []

        # Generation only (no shrinking), collected with the event loop held, because
        # background tasks on the loop (Kafka clients) touch the global random state, which
        # Hypothesis would take for a flaky strategy. In chunks of 50 (each its own seed), so
        # the loop is never held for long. Each query is then sent; a failure names it.
        @hypothesis_settings(max_examples=50, deadline=None, database=None,
                             phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(query=strategy, account=ids(accounts), after=CURSORS)
        def collect(query: str, account: str, after: str) -> None:
            # Put a real account id where the generator left an empty ID argument, and a
            # hostile cursor in every `after` (the generator writes arbitrary strings there).
            query = (query.replace('id: ""', f'id: "{account}"')
                     .replace('accountId: ""', f'accountId: "{account}"'))
            examples.append(_AFTER.sub(lambda _: f"after: {json.dumps(after)}", query))

        tried: set[str] = set()
        for chunk in range(sized(2, 30)):
            examples.clear()
            seed(chunk)(collect)()
            for query in examples:
                await send(http, partner.key, query)
            tried.update(examples)
    # Enough distinct operations were tried (Hypothesis stops early on a small space).
    assert len(tried) >= 20


async def send(http: Any, key: str, query: str, variables: dict[str, Any] | None = None) -> None:
    """One operation: answered 200 within 15 s, no INTERNAL or uncoded error, no internals."""
    try:
        response = await asyncio.wait_for(http.post(
            "/graphql", json={"query": query, "variables": variables or {}},
            headers={"Authorization": f"Bearer {key}"}), 15)
    except TimeoutError:
        pytest.fail(f"no answer within 15 s to: {query} {variables}")
    assert response.status_code == 200, (query, variables, response.text)
    body: dict[str, Any] = response.json()
    codes = [e.get("extensions", {}).get("code") for e in body.get("errors") or []]
    assert "INTERNAL" not in codes, (query, variables, body)
    assert None not in codes, (query, variables, body)
    assert_no_leak(response.text)


CURSOR_QUERIES = [
    "query($a: ID!, $after: String) { payments(accountId: $a, after: $after) { edges { cursor } } }",
    ("query($a: ID!, $after: String) { account(id: $a) { payments(first: 5, after: $after) "
     "{ pageInfo { endCursor } } } }"),
]


async def test_no_cursor_is_internal(settings, make_partner) -> None:
    """Arbitrary base64url strings (and hostile timestamps inside well-formed ones) as `after`
    of both payment lists: a cursor is either one the API could have issued or BAD_USER_INPUT."""
    partner = await make_partner()
    account = await partner.account()
    limits = {"query_burst": 1_000_000, "query_rate_per_s": 1e6}
    async with app_client(settings, limits=limits) as (http, _):
        cursors: list[str] = []

        # Generation only, with the loop held, as above.
        @hypothesis_settings(max_examples=sized(100, 1000), deadline=None, database=None,
                             phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(after=CURSORS)
        def collect(after: str) -> None:
            cursors.append(after)

        seed(0)(collect)()
        for after in cursors:
            for query in CURSOR_QUERIES:
                await send(http, partner.key, query, {"a": account, "after": after})
    assert len(set(cursors)) >= 50
