"""The status page (/status/<payment id>, /status/account/<account id>) in headless Chromium
against a real API process, the real worker and the real broker."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from .conftest import ApiProcess
from .test_subscriptions import held, pay

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium dials out at start, which this machine's
# closed network refuses.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TIMEOUT_MS = 30_000


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing in CI (.ci/run installs Debian's chromium)")
        pytest.skip(f"needs Debian's chromium at {CHROMIUM}")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context()
    page = await context.new_page()
    try:
        yield page
    finally:
        await context.close()


def sent_urls(page: Page) -> list[str]:
    """Every URL the page asks for (documents, assets, the websocket), as it goes."""
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    page.on("websocket", lambda ws: urls.append(ws.url))
    return urls


async def open_subscriptions(api: ApiProcess) -> float:
    async with httpx.AsyncClient(base_url=api.url) as http:
        text = (await http.get("/metrics")).text
    match = re.search(r"^paystream_open_subscriptions (\S+)$", text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


async def until_subscribed(api: ApiProcess, before: float, timeout: float = 10.0) -> None:
    """Until the API process has one more subscription open than ``before``: accountActivity
    sends nothing when it starts, so the process's gauge is the only sign that it is live."""
    async with asyncio.timeout(timeout):
        while await open_subscriptions(api) <= before:
            await asyncio.sleep(0.05)


async def test_status_page_shows_pending_then_succeeded_live(
    api: ApiProcess, worker: subprocess.Popen[bytes], make_partner: Any, page: Page,
) -> None:
    partner = await make_partner()
    source = await partner.account(balance="100.00", name="Ops")
    destination = await partner.account(balance="0", name="Payroll")
    urls = sent_urls(page)
    with held(worker):
        payment = await pay(api, partner, source, destination, "10.00")
        await page.goto(f"{api.url}/status/{payment['id']}#key={partner.key}")
        await expect(page.locator("#status")).to_have_text("PENDING", timeout=TIMEOUT_MS)
        await expect(page.locator("#amount")).to_have_text("10.00")
        await expect(page.locator("#currency")).to_have_text("USD")
        await expect(page.locator("#source")).to_have_text(
            f"Ops ({source}) · balance 100.00 USD")
        await expect(page.locator("#payment-id")).to_have_text(payment["id"])
    await expect(page.locator("#status")).to_have_text("SUCCEEDED", timeout=TIMEOUT_MS)
    await expect(page.locator("#source")).to_have_text(f"Ops ({source}) · balance 90.00 USD")
    await expect(page.locator("#destination")).to_have_text(
        f"Payroll ({destination}) · balance 10.00 USD")
    await expect(page.locator("#failure-reason")).to_have_text("—")
    await expect(page.locator("#connection")).to_have_text(re.compile("^complete"))
    # The key went over the websocket only: in no URL the browser asked for, and out of the
    # address bar once read.
    assert urls and not [url for url in urls if partner.key in url]
    assert partner.key not in page.url


async def test_account_page_shows_activity_with_failure_reason_and_escaped_names(
    api: ApiProcess, worker: subprocess.Popen[bytes], make_partner: Any, page: Page,
) -> None:
    partner, other = await make_partner(), await make_partner()
    hostile = "<img src=x onerror=\"document.title='owned'\">"
    source = await partner.account(balance="20.00", name=hostile)
    destination = await other.account(balance="0", name="Vendor")
    await page.goto(f"{api.url}/status/account/{source}")
    before = await open_subscriptions(api)
    # The key typed into the form this time.
    await page.fill("#key", partner.key)
    await page.click("#connect")
    await until_subscribed(api, before)
    with held(worker):
        ok = await pay(api, partner, source, destination, "15.00")
        refused = await pay(api, partner, source, destination, "15.00")
        ok_row = page.locator(f"#activity tr[data-payment-id='{ok['id']}']")
        await expect(ok_row.locator(".status")).to_have_text("PENDING", timeout=TIMEOUT_MS)
    refused_row = page.locator(f"#activity tr[data-payment-id='{refused['id']}']")
    await expect(ok_row.locator(".status")).to_have_text("SUCCEEDED", timeout=TIMEOUT_MS)
    await expect(refused_row.locator(".status")).to_have_text("FAILED", timeout=TIMEOUT_MS)
    await expect(refused_row.locator(".c-reason")).to_have_text("INSUFFICIENT_FUNDS")
    # The counterparty's balance is not shown; the name is text, not markup.
    await expect(refused_row.locator(".c-destination")).to_have_text(
        f"Vendor ({destination}) · balance not visible")
    await expect(refused_row.locator(".c-source")).to_have_text(
        f"{hostile} ({source}) · balance 5.00 USD")
    assert await page.locator("#activity img").count() == 0
    assert await page.title() != "owned"


async def test_status_page_reports_a_refused_key_without_retrying(
    api: ApiProcess, page: Page,
) -> None:
    await page.goto(f"{api.url}/status/{uuid.uuid4()}#key=psk_not-a-key")
    await expect(page.locator("#connection")).to_have_text(re.compile(r"^refused \(44\d\d\)"),
                                                          timeout=TIMEOUT_MS)
    await expect(page.locator("#error")).to_be_visible()


async def test_status_page_routes_and_headers(client: httpx.AsyncClient) -> None:
    page = await client.get(f"/status/{uuid.uuid4()}")
    account = await client.get(f"/status/account/{uuid.uuid4()}")
    script = await client.get("/status/assets/status.js")
    assert page.status_code == account.status_code == script.status_code == 200
    assert page.text == account.text and '<script src="/status/assets/status.js"' in page.text
    assert page.headers["content-type"].startswith("text/html")
    assert script.headers["content-type"].startswith("text/javascript")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    assert (await client.get("/status/not-an-id")).status_code == 404
    assert (await client.get("/status/assets/missing.js")).status_code == 404


async def test_status_page_shows_not_found_for_a_payment_the_key_may_not_see(
    api: ApiProcess, worker: subprocess.Popen[bytes], make_partner: Any, page: Page,
) -> None:
    owner, stranger = await make_partner(), await make_partner()
    payment = await pay(api, owner, await owner.account(), await owner.account())
    await page.goto(f"{api.url}/status/{payment['id']}#key={stranger.key}")
    await expect(page.locator("#error")).to_have_text("NOT_FOUND: no such payment",
                                                      timeout=TIMEOUT_MS)
    await expect(page.locator("#connection")).to_have_text("ended with an error")
    await expect(page.locator("#status")).to_have_text("…")


async def test_status_page_shows_a_hold_then_its_capture(
    api: ApiProcess, worker: subprocess.Popen[bytes], make_partner: Any, page: Page,
) -> None:
    from paystream.client import PaystreamClient

    partner = await make_partner()
    source = await partner.account(balance="100.00", name="Ops")
    destination = await partner.account(balance="0", name="Payroll")
    async with PaystreamClient(api.url, partner.key) as http:
        payment = await http.create_payment(
            idempotency_key=uuid.uuid4().hex, source_account_id=source,
            destination_account_id=destination, amount="40.00", currency="USD", capture=False)
        await page.goto(f"{api.url}/status/{payment['id']}#key={partner.key}")
        await expect(page.locator("#status")).to_have_text("AUTHORIZED", timeout=TIMEOUT_MS)
        await expect(page.locator("#source")).to_have_text(
            f"Ops ({source}) · balance 100.00 USD · available 60.00 USD")
        await expect(page.locator("#expires-at")).not_to_have_text("—")
        await expect(page.locator("#connection")).not_to_have_text(re.compile("^complete"))
        await http.capture_payment(payment["id"], "25.00")
        await expect(page.locator("#status")).to_have_text("SUCCEEDED", timeout=TIMEOUT_MS)
        await expect(page.locator("#captured")).to_have_text("25.00 USD")
        await expect(page.locator("#source")).to_have_text(f"Ops ({source}) · balance 75.00 USD")
        await expect(page.locator("#expires-at")).to_have_text("—")
        await expect(page.locator("#connection")).to_have_text(re.compile("^complete"))


async def test_account_page_shows_a_canceled_hold(
    api: ApiProcess, worker: subprocess.Popen[bytes], make_partner: Any, page: Page,
) -> None:
    from paystream.client import PaystreamClient

    partner = await make_partner()
    source = await partner.account(balance="100.00", name="Ops")
    destination = await partner.account(balance="0", name="Payroll")
    before = await open_subscriptions(api)
    await page.goto(f"{api.url}/status/account/{source}#key={partner.key}")
    await until_subscribed(api, before)
    async with PaystreamClient(api.url, partner.key) as http:
        payment = await http.create_payment(
            idempotency_key=uuid.uuid4().hex, source_account_id=source,
            destination_account_id=destination, amount="10.00", currency="USD", capture=False)
        row = page.locator(f"tr[data-payment-id='{payment['id']}']")
        await expect(row.locator(".status")).to_have_text("AUTHORIZED", timeout=TIMEOUT_MS)
        await http.cancel_payment(payment["id"])
        await expect(row.locator(".status")).to_have_text("CANCELED", timeout=TIMEOUT_MS)


@pytest.fixture
async def watcher(migrated, worker):  # type: ignore[no-untyped-def]
    from .conftest import StatusWatcher

    watcher = StatusWatcher(migrated)
    await watcher.start()
    yield watcher
    await watcher.stop()


async def test_account_page_opens_on_its_history_then_continues_live_in_local_time(
    api: ApiProcess, watcher: Any, make_partner: Any, page: Page,
) -> None:
    partner, other = await make_partner(), await make_partner()
    source = await partner.account(balance="100.00", name="Ops")
    destination = await other.account(balance="0", name="Vendor")
    past = []
    for _ in range(3):
        past.append(await pay(api, partner, source, destination, "5.00"))
        await watcher.terminal(past[-1]["id"])
    before = await open_subscriptions(api)
    await page.goto(f"{api.url}/status/account/{source}#key={partner.key}")
    # Shown from the feed before anything happens live.
    for payment in past:
        row = page.locator(f"#activity tr[data-payment-id='{payment['id']}']")
        await expect(row.locator(".status")).to_have_text("SUCCEEDED", timeout=TIMEOUT_MS)
    rows = page.locator("#activity tr")
    assert [await rows.nth(i).get_attribute("data-payment-id") for i in range(3)] == [
        p["id"] for p in reversed(past)]  # the latest on top
    await until_subscribed(api, before)
    live = await pay(api, partner, source, destination, "5.00")
    live_row = page.locator(f"#activity tr[data-payment-id='{live['id']}']")
    await expect(live_row.locator(".status")).to_have_text("SUCCEEDED", timeout=TIMEOUT_MS)
    await expect(live_row.locator(".c-source")).to_have_text(f"Ops ({source}) · balance 80.00 USD")
    assert await rows.count() == 4
    # The viewer's locale, not the raw ISO string (which stays in the tooltip).
    updated = live_row.locator(".c-updated")
    assert not re.search(r"\d{4}-\d{2}-\d{2}T", await updated.inner_text())
    assert re.match(r"\d{4}-\d{2}-\d{2}T", await updated.get_attribute("title") or "")
