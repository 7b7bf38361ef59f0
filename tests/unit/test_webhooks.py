"""Webhook rules without servers: signatures and their verification, URL and address rules,
retry delays, stable event ids, secrets at rest."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from paystream.client import WebhookSignatureError, verify_signature
from paystream.config import WebhookSettings
from paystream.domain.webhooks import (
    EVENT_TYPES,
    address_refusal,
    event_id,
    event_type,
    retry_delay_s,
    signature,
    signature_header,
)
from paystream.webhooks.secrets import SecretBox, SecretsUnavailable, new_encryption_key, new_secret
from paystream.webhooks.urls import UrlRefused, check_url

BODY = b'{"id":"e1","type":"payment.succeeded","data":{"amount":"12.50"}}'


def test_a_signed_body_verifies() -> None:
    now = int(time.time())
    header = signature_header(["whsec_a"], now, BODY)
    verify_signature("whsec_a", header, BODY)
    assert header == f"t={now},v1={signature('whsec_a', now, BODY)}"


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    expected = hmac.new(b"whsec_a", b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert signature("whsec_a", 1700000000, BODY) == expected


def test_a_tampered_body_fails() -> None:
    now = int(time.time())
    header = signature_header(["whsec_a"], now, BODY)
    with pytest.raises(WebhookSignatureError, match="no v1"):
        verify_signature("whsec_a", header, BODY.replace(b"12.50", b"99.50"))


def test_an_old_timestamp_fails_even_when_signed_right() -> None:
    old = int(time.time()) - 301
    header = signature_header(["whsec_a"], old, BODY)
    with pytest.raises(WebhookSignatureError, match="tolerance"):
        verify_signature("whsec_a", header, BODY)
    verify_signature("whsec_a", header, BODY, tolerance=400)


def test_a_wrong_secret_and_malformed_headers_fail() -> None:
    now = int(time.time())
    with pytest.raises(WebhookSignatureError):
        verify_signature("whsec_b", signature_header(["whsec_a"], now, BODY), BODY)
    for header in (None, "", "v1=abc", f"t={now}", "t=x,v1=abc", "garbage"):
        with pytest.raises(WebhookSignatureError):
            verify_signature("whsec_a", header, BODY)


def test_during_rotation_either_secret_verifies() -> None:
    now = int(time.time())
    header = signature_header(["whsec_new", "whsec_old"], now, BODY)
    assert header.count("v1=") == 2
    verify_signature("whsec_new", header, BODY)
    verify_signature("whsec_old", header, BODY)
    verify_signature(["whsec_old", "whsec_new"], header, BODY)
    with pytest.raises(WebhookSignatureError):
        verify_signature("whsec_other", header, BODY)


@given(st.integers(min_value=1, max_value=200), st.floats(min_value=0, max_value=1))
def test_retry_delays_grow_to_the_cap_with_jitter(attempts: int, jitter: float) -> None:
    delay = retry_delay_s(attempts, base_s=10.0, max_s=3600.0, jitter=jitter)
    ceiling = min(10.0 * 2 ** (attempts - 1), 3600.0)
    assert ceiling / 2 <= delay <= ceiling


def test_the_first_retry_comes_within_ten_seconds() -> None:
    assert retry_delay_s(1, base_s=10.0, max_s=3600.0, jitter=1.0) <= 10.0
    assert retry_delay_s(1, base_s=10.0, max_s=3600.0, jitter=0.0) >= 5.0


def test_event_ids_are_stable_per_payment_version() -> None:
    payment = uuid.uuid4()
    assert event_id(payment, 2) == event_id(payment, 2)
    assert event_id(payment, 2) != event_id(payment, 3)
    assert event_id(payment, 2) != event_id(uuid.uuid4(), 2)


def test_event_types() -> None:
    assert event_type("SUCCEEDED") == "payment.succeeded"
    assert event_type("SUCCEEDED", "FAILED") == "refund.failed"
    assert {event_type(s) for s in ("PENDING", "AUTHORIZED", "SUCCEEDED", "FAILED",
                                    "CANCELED")} <= set(EVENT_TYPES)


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1",
                                     "169.254.169.254", "169.254.1.1", "fe80::1", "fc00::1",
                                     "100.64.0.1", "0.0.0.0", "224.0.0.1", "::ffff:10.0.0.1",
                                     "::ffff:127.0.0.1", "fd00:ec2::254"])
def test_non_public_addresses_are_refused_outside_dev(address: str) -> None:
    assert address_refusal(address, dev=False) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_refusal(address, dev=False) is None


def test_dev_allows_loopback_only() -> None:
    assert address_refusal("127.0.0.1", dev=True) is None
    assert address_refusal("::1", dev=True) is None
    for address in ("10.0.0.1", "169.254.169.254", "192.168.0.10"):
        assert address_refusal(address, dev=True) is not None


def resolver_to(*addresses: str):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        return list(addresses)
    return resolve


async def refused(url: str, *, dev: bool, addresses: tuple[str, ...] = ("93.184.216.34",)) -> str:
    with pytest.raises(UrlRefused) as caught:
        await check_url(url, dev=dev, resolver=resolver_to(*addresses), timeout_s=1.0)
    return caught.value.reason


async def test_outside_dev_only_https_to_public_addresses() -> None:
    assert await check_url("https://hooks.example.com/p", dev=False,
                           resolver=resolver_to("93.184.216.34"), timeout_s=1.0)
    assert await refused("http://hooks.example.com/p", dev=False) == "URL_SCHEME_NOT_ALLOWED"
    assert await refused("https://127.0.0.1:8443/", dev=False) == "URL_ADDRESS_NOT_ALLOWED"
    assert await refused("https://169.254.169.254/latest", dev=False) == "URL_ADDRESS_NOT_ALLOWED"
    assert await refused("https://[::1]/", dev=False) == "URL_ADDRESS_NOT_ALLOWED"
    # Checked after DNS resolution: a public-looking name for a private address.
    assert await refused("https://internal.example.com/", dev=False,
                         addresses=("10.0.0.7",)) == "URL_ADDRESS_NOT_ALLOWED"
    # Any refused address refuses the host (a connection could pick it).
    assert await refused("https://mixed.example.com/", dev=False,
                         addresses=("93.184.216.34", "192.168.0.2")) == "URL_ADDRESS_NOT_ALLOWED"
    assert await refused("https://user:pw@hooks.example.com/", dev=False) == "URL_INVALID"
    assert await refused("ftp://hooks.example.com/", dev=False) == "URL_SCHEME_NOT_ALLOWED"
    assert await refused("not a url", dev=False) == "URL_INVALID"
    for bad in ("https://hooks.example.com/a\x00b", "https://hooks.example.com/\x7f",
                "https://[::1/", "https://hooks.example.com:99999/", "https:///path",
                "https://" + "a" * 2048 + ".com/"):
        assert await refused(bad, dev=False) == "URL_INVALID", bad


async def test_dev_allows_http_to_loopback() -> None:
    assert await check_url("http://127.0.0.1:9000/hook", dev=True,
                           resolver=resolver_to(), timeout_s=1.0) == ["127.0.0.1"]
    assert await refused("http://10.0.0.1/hook", dev=True) == "URL_ADDRESS_NOT_ALLOWED"


@pytest.mark.parametrize("error", [OSError("Name or service not known"), UnicodeError("idna"),
                                   ValueError("embedded null byte"), TimeoutError()])
async def test_an_unresolvable_host_is_refused(error: Exception) -> None:
    async def fails(host: str, port: int) -> list[str]:
        raise error

    with pytest.raises(UrlRefused) as caught:
        await check_url("https://nowhere.invalid/", dev=False, resolver=fails, timeout_s=1.0)
    assert caught.value.reason == "URL_NOT_RESOLVABLE"


async def test_the_system_resolver_refuses_odd_names_without_crashing() -> None:
    from paystream.webhooks.urls import system_resolver

    for host in ("xn--.invalid", "a" * 300 + ".invalid"):
        with pytest.raises(UrlRefused):
            await check_url(f"https://{host}/", dev=False, resolver=system_resolver,
                            timeout_s=2.0)


def test_secrets_round_trip_encrypted_and_old_keys_decrypt() -> None:
    old, new = new_encryption_key(), new_encryption_key()
    secret = new_secret()
    ciphertext = SecretBox(WebhookSettings(encryption_key=SecretStr(old))).encrypt(secret)
    assert secret.encode() not in ciphertext
    rotated = SecretBox(WebhookSettings(encryption_key=SecretStr(new),
                                        old_encryption_keys=[SecretStr(old)]))
    assert rotated.decrypt(ciphertext) == secret
    with pytest.raises(SecretsUnavailable):
        SecretBox(WebhookSettings(encryption_key=SecretStr(new))).decrypt(ciphertext)


def test_no_key_means_no_secrets_and_a_bad_key_is_not_echoed() -> None:
    box = SecretBox(WebhookSettings())
    assert not box.configured
    with pytest.raises(SecretsUnavailable):
        box.encrypt("x")
    with pytest.raises(SecretsUnavailable) as caught:
        SecretBox(WebhookSettings(encryption_key=SecretStr("not-a-key-value-123")))
    assert "not-a-key-value-123" not in str(caught.value)


async def test_the_readme_receiver_accepts_signed_events_once_and_refuses_the_rest() -> None:
    import httpx

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("## Webhooks", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    namespace["SECRETS"] = ["whsec_readme"]
    transport = httpx.ASGITransport(app=namespace["app"])  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as http:
        now = int(time.time())
        body = b'{"id":"e-1","type":"payment.succeeded","data":{"id":"p","status":"SUCCEEDED"}}'
        good = {"Paystream-Signature": signature_header(["whsec_readme"], now, body)}
        assert (await http.post("/paystream", content=body, headers=good)).status_code == 204
        assert (await http.post("/paystream", content=body, headers=good)).status_code == 204
        assert namespace["seen"] == {"e-1"}
        tampered = body.replace(b"SUCCEEDED", b"FAILED")
        assert (await http.post("/paystream", content=tampered, headers=good)).status_code == 400
        stale = {"Paystream-Signature": signature_header(["whsec_readme"], now - 600, body)}
        assert (await http.post("/paystream", content=body, headers=stale)).status_code == 400
        assert (await http.post("/paystream", content=body)).status_code == 400
