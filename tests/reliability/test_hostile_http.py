"""Hostile input over HTTP: every malformed, oversized or nonsensical request is refused with
the right status and code, never a 5xx or INTERNAL, and never with internals in the answer.

Already proven elsewhere: each query limit just under and over, the 413 body limit (also
chunked) and the batch cap (test_gateway_limits); the amounts "0.001" USD, "1e309", "NaN",
"-0", "0", too large, a bad currency (test_write_path::test_bad_amounts_name_the_field).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from .leaks import assert_no_leak

pytestmark = pytest.mark.integration

CREATE = """mutation($input: CreatePaymentInput!) { createPayment(input: $input) { id status } }"""


async def post(client: httpx.AsyncClient, content: bytes, key: str | None = None,
               content_type: str = "application/json") -> httpx.Response:
    headers = {"content-type": content_type}
    if key:
        headers["authorization"] = f"Bearer {key}"
    response = await client.post("/graphql", content=content, headers=headers)
    assert response.status_code < 500, response.text
    assert_no_leak(response.text)
    return response


def codes(response: httpx.Response) -> list[str]:
    body = response.json()
    assert "INTERNAL" not in json.dumps(body)
    return [e["extensions"]["code"] for e in body["errors"]]


@pytest.mark.parametrize("content", [
    b"{", b'{"query": ', b"not json at all", b"\x00\x01\x02", b"[]", b"null", b"42", b'"{}"',
    b'{"query": 42}', b'{"query": ["{ __typename }"]}', b'{"query": "{ __typename }", "variables": 7}',
    b'{"query": "{ __typename }", "variables": "x"}', b'[1, 2]', b'[{"query": 1}]',
    b'{"query": "{ __typename }", "operationName": {"a": 1}}',
    b'{"query": "{ __typename }", "extensions": "x"}',
    b'{"query": "{ __typename }", "extensions": {"persistedQuery": "x"}}',
    b'{"query": "{ __typename }", "extensions": {"persistedQuery": {"version": 1, "sha256Hash": 5}}}',
    # Invalid UTF-8: a lone continuation byte, an overlong encoding, a truncated sequence.
    b'{"query": "{ __typename \x80 }"}', b'{"query": "\xc0\xaf"}', b'{"query": "\xe2\x82"}',
    b'\xff\xfe{\x00"\x00',
], ids=lambda c: repr(c[:24]))
async def test_malformed_bodies_are_client_errors(client, make_partner, content: bytes) -> None:
    partner = await make_partner()
    response = await post(client, content, partner.key)
    if response.status_code == 200:
        # Strawberry answers some shapes with GraphQL errors (say, an extension it ignores):
        # then never INTERNAL, and never data from a document it could not read.
        body = response.json()
        assert body.get("errors") or body == {"data": {"__typename": "Query"}}, body
        if body.get("errors"):
            assert set(codes(response)) <= {"BAD_USER_INPUT", "PERSISTED_QUERY_NOT_FOUND",
                                            "PERSISTED_QUERY_NOT_SUPPORTED"}
    else:
        assert 400 <= response.status_code < 500


async def test_wrong_content_types_are_refused(client, make_partner) -> None:
    partner = await make_partner()
    for content_type in ("text/plain", "application/xml", "multipart/form-data; boundary=x",
                         "application/x-www-form-urlencoded"):
        response = await post(client, b'{"query": "{ __typename }"}', partner.key, content_type)
        assert 400 <= response.status_code < 500, (content_type, response.text)


async def test_huge_body_is_refused_before_it_is_read(client, settings) -> None:
    body = b'{"query": "{ __typename }", "pad": "' + b"x" * (8 << 20) + b'"}'
    response = await post(client, body)
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


@pytest.mark.parametrize("depth", [1_000, 5_000])
async def test_extreme_depth_is_too_complex(client, make_partner, depth: int) -> None:
    """Deeper than Python's recursion limit would allow a recursive parser to go."""
    partner = await make_partner()
    query = "{ " + "payment(id: \"x\") { sourceAccount { " * (depth // 2) + "id" + " } }" * (depth // 2) + " }"
    response = await post(client, json.dumps({"query": query}).encode(), partner.key)
    assert response.status_code == 200
    assert codes(response) == ["QUERY_TOO_COMPLEX"]


async def test_deep_nesting_inside_values_is_refused(client, make_partner) -> None:
    """Nesting in a list or object literal (no selection depth at all) and in the JSON body."""
    partner = await make_partner()
    nested_list = "[" * 3000 + "]" * 3000
    query = "{ payment(id: " + nested_list + ") { id } }"
    response = await post(client, json.dumps({"query": query}).encode(), partner.key)
    assert response.status_code == 200 and codes(response) in (["QUERY_TOO_COMPLEX"], ["BAD_USER_INPUT"])
    deep_variables = '{"query": "{ __typename }", "variables": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}"
    response = await post(client, deep_variables.encode(), partner.key)
    assert 200 <= response.status_code < 500


@pytest.mark.parametrize("count", [10_000])
async def test_ten_thousand_aliases_are_too_complex(client, make_partner, count: int) -> None:
    partner = await make_partner()
    query = "{ " + " ".join(f"a{i}: __typename" for i in range(count)) + " }"
    response = await post(client, json.dumps({"query": query}).encode(), partner.key)
    assert codes(response) == ["QUERY_TOO_COMPLEX"]


async def test_many_fragments_and_directives_are_too_complex(client, make_partner) -> None:
    partner = await make_partner()
    fragments = " ".join(f"fragment F{i} on Query {{ ...F{i + 1} }}" for i in range(3000))
    response = await post(client, json.dumps(
        {"query": "{ ...F0 } " + fragments + " fragment F3000 on Query { __typename }"}).encode(),
        partner.key)
    assert codes(response) == ["QUERY_TOO_COMPLEX"]
    directives = "{ __typename " + "@skip(if: false) " * 5000 + "}"
    response = await post(client, json.dumps({"query": directives}).encode(), partner.key)
    assert codes(response) == ["QUERY_TOO_COMPLEX"]


def payment_input(source: str, destination: str, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"idempotencyKey": uuid.uuid4().hex, "sourceAccountId": source,
                            "destinationAccountId": destination, "amount": "1.00",
                            "currency": "USD"}
    data.update(fields)
    return {"input": data}


async def create(client: httpx.AsyncClient, key: str, variables: dict[str, Any]) -> httpx.Response:
    return await post(client, json.dumps({"query": CREATE, "variables": variables}).encode(), key)


@pytest.mark.parametrize(("field", "value"), [
    ("amount", "Infinity"), ("amount", "-Infinity"), ("amount", "sNaN"), ("amount", "-1.00"),
    ("amount", "+1.00"), ("amount", "1e2"), ("amount", "1E-2"), ("amount", "0x10"),
    ("amount", "1_000.00"), ("amount", "１.００"), ("amount", "1.00\u0000"), ("amount", ""),
    ("amount", " "), ("amount", "  12.34"), ("amount", "12.34\u00a0"), ("amount", "\u200312.34"),
    ("amount", "12.34\n"), ("amount", "." ), ("amount", "1."), ("amount", ".5"), ("amount", "1,00"),
    ("amount", "9" * 100_000), ("amount", "0." + "0" * 10_000 + "1"),
    ("amount", 1.5), ("amount", 100), ("amount", True), ("amount", None), ("amount", ["1.00"]),
    ("amount", {"value": "1.00"}),
    ("currency", ""), ("currency", "US"), ("currency", "USDX"), ("currency", "ÜSD"),
    ("currency", "U\u0000D"), ("currency", "x" * 100_000), ("currency", 840),
    ("idempotencyKey", ""), ("idempotencyKey", "k" * 256), ("idempotencyKey", "k" * 10_240),
    ("idempotencyKey", "\u00e9" * 10_240), ("idempotencyKey", "a\u0000b"), ("idempotencyKey", "a\nb"),
    ("idempotencyKey", "\ud800"), ("idempotencyKey", 12345),
    ("reference", "r" * 141), ("reference", "r" * 200_000), ("reference", "line\nbreak"),
    ("reference", "\udfff"),
    ("sourceAccountId", ""), ("sourceAccountId", "x" * 100_000), ("sourceAccountId", "' OR '1'='1"),
    ("sourceAccountId", "{00000000-0000-0000-0000-000000000000}"),
    ("destinationAccountId", "../../etc/passwd"), ("destinationAccountId", "\u0000"),
], ids=lambda v: repr(v)[:30])
async def test_bad_payment_inputs_are_bad_user_input(client, make_partner, services,
                                                      field: str, value: Any) -> None:
    partner = await make_partner()
    source, destination = await partner.account(), await partner.account()
    variables = payment_input(source, destination, **{field: value})
    response = await create(client, partner.key, variables)
    body = response.json()
    assert body.get("data") is None, body
    assert codes(response) == ["BAD_USER_INPUT"], body
    # A giant value is not echoed back in full.
    assert len(response.content) < 20_000
    from sqlalchemy import text

    async with services.db.primary.connect() as conn:
        count = (await conn.execute(text(
            "SELECT count(*) FROM payments WHERE source_account_id = :a"),
            {"a": uuid.UUID(source)})).scalar()
    assert count == 0


async def test_unicode_idempotency_keys_are_exact_and_idempotent(client, make_partner) -> None:
    """Keys are the partner's own identifiers: any printable Unicode up to 255 characters,
    compared exactly (no normalisation), so NFC and NFD spellings are different keys."""
    partner = await make_partner()
    source, destination = await partner.account(), await partner.account()
    nfc, nfd = "caf\u00e9-\U0001F4B8-\u4ed8\u6b3e", "cafe\u0301-\U0001F4B8-\u4ed8\u6b3e"
    first = await create(client, partner.key, payment_input(source, destination, idempotencyKey=nfc))
    again = await create(client, partner.key, payment_input(source, destination, idempotencyKey=nfc))
    other = await create(client, partner.key, payment_input(source, destination, idempotencyKey=nfd))
    ids = [r.json()["data"]["createPayment"]["id"] for r in (first, again, other)]
    assert ids[0] == ids[1] != ids[2]
    longest = "\U0001F600" * 255  # 255 characters, 1,020 bytes of UTF-8
    made = await create(client, partner.key, payment_input(source, destination, idempotencyKey=longest))
    assert made.json()["data"]["createPayment"]["status"] == "PENDING"


@pytest.mark.parametrize("query", [
    'query { payments(accountId: "A", first: -1) { edges { cursor } } }',
    'query { payments(accountId: "A", first: 2147483648) { edges { cursor } } }',
    'query { payments(accountId: "A", first: 1.5) { edges { cursor } } }',
    'query { payments(accountId: "A", after: "!!!not base64") { edges { cursor } } }',
    'query { payments(accountId: "A", after: "' + "A" * 50_000 + '") { edges { cursor } } }',
    'query { payments(accountId: "A", after: "eyJ4IjogMX0=") { edges { cursor } } }',
    'query { payment(id: "A") { nope } }',
    'query { payment { id } }',
    'query Q { __typename } query Q { __typename }',
    'mutation { __typename } subscription { paymentStatus(id: "x") { id } }',
    'subscription { paymentStatus(id: "x") { id } }',
    '{ __typename @nope }',
    '{ __typename } fragment Unused on Query { __typename }',
    'query($x: Int) { __typename }' + ' ' * 10,
    '\ufeff{ __typename }x',
], ids=lambda q: q[:40])
async def test_invalid_operations_are_bad_user_input(client, make_partner, query: str) -> None:
    partner = await make_partner()
    account = await partner.account()
    response = await post(client, json.dumps({"query": query.replace('"A"', f'"{account}"')}).encode(),
                          partner.key)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 200:
        assert codes(response) and set(codes(response)) <= {"BAD_USER_INPUT"}, response.text
