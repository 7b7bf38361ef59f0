"""Property-based fuzzing of the schema over HTTP (hypothesis-graphql): for any query or
mutation the schema admits, with hostile argument values, the API answers 200 with no
INTERNAL error and no internals in the text. 100 examples of each by default;
PAYSTREAM_HEAVY=1 runs 1,500."""

from __future__ import annotations

import asyncio
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
        from paystream.schema import build_schema

        sdl = str(build_schema(services.settings))
        custom = {"Decimal": DECIMALS.map(lambda s: StringValueNode(value=s))}
        make = hypothesis_graphql.queries if mode == "query" else hypothesis_graphql.mutations
        strategy = make(sdl, custom_scalars=custom)
        examples: list[str] = []

        # Generation only (no shrinking), collected with the event loop held, because
        # background tasks on the loop (Kafka clients) touch the global random state, which
        # Hypothesis would take for a flaky strategy. In chunks of 50 (each its own seed), so
        # the loop is never held for long. Each query is then sent; a failure names it.
        @hypothesis_settings(max_examples=50, deadline=None, database=None,
                             phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(query=strategy, account=ids(accounts))
        def collect(query: str, account: str) -> None:
            # Put a real account id where the generator left an empty ID argument.
            examples.append(query.replace('id: ""', f'id: "{account}"')
                            .replace('accountId: ""', f'accountId: "{account}"'))

        async def send(query: str) -> None:
            try:
                response = await asyncio.wait_for(http.post(
                    "/graphql", json={"query": query},
                    headers={"Authorization": f"Bearer {partner.key}"}), 15)
            except TimeoutError:
                pytest.fail(f"no answer within 15 s to: {query}")
            assert response.status_code == 200, (query, response.text)
            body: dict[str, Any] = response.json()
            codes = [e.get("extensions", {}).get("code") for e in body.get("errors") or []]
            assert "INTERNAL" not in codes, (query, body)
            assert None not in codes, (query, body)
            assert_no_leak(response.text)

        tried: set[str] = set()
        for chunk in range(sized(2, 30)):
            examples.clear()
            seed(chunk)(collect)()
            for query in examples:
                await send(query)
            tried.update(examples)
    # Enough distinct operations were tried (Hypothesis stops early on a small space).
    assert len(tried) >= 20
