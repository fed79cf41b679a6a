"""The dashboard in real Chromium (Playwright) against a real `python server.py` in demo mode.

Each test saves screenshots under test-output/screenshots (TEST_OUTPUT_DIR to change it),
to be looked at by eye.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from bot.engines.simulator import DEMO_PICTURE
from tests.support import ROOT, ServerProcess, chromium_for_tests

ADMIN = "admin-token-for-dashboard-01"
OUTPUT = Path(os.environ.get("TEST_OUTPUT_DIR", ROOT / "test-output")) / "screenshots"
WAIT = 20_000  # ms, Playwright's unit


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    env = {
        "ADMIN_TOKEN": ADMIN,
        "WHATSAPP_SIMULATOR": "1",
        "CHROMIUM_PATH": chromium_for_tests(),
        "SEND_RATE": "0",
        "WEBHOOK_ALLOW_PRIVATE": "true",
    }
    with ServerProcess(tmp_path / "data", env) as running:
        running.wait_ready()
        yield running


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        found = await playwright.chromium.launch(
            executable_path=chromium_for_tests(),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield found
        await found.close()


async def shot(page: Page, name: str) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(OUTPUT / f"{name}.png"), full_page=True)


async def signed_in(
    browser: Browser, server: ServerProcess, token: str, **options: Any
) -> tuple[BrowserContext, Page]:
    context = await browser.new_context(base_url=server.base_url, **options)
    page = await context.new_page()
    await page.goto("/")
    await expect(page).to_have_url(f"{server.base_url}/login")
    await page.get_by_label("Token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Keep-alive")).to_be_visible()
    return context, page


def api(server: ServerProcess, method: str, path: str, token: str = ADMIN, **kw: Any) -> Any:
    response = httpx.request(
        method,
        server.base_url + path,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
        **kw,
    )
    assert response.status_code < 300, response.text
    return response.json()


async def test_sign_in_refuses_a_wrong_token_and_shows_the_overview(
    browser: Browser, server: ServerProcess
):
    context = await browser.new_context(base_url=server.base_url)
    page = await context.new_page()
    await page.goto("/")
    await page.get_by_label("Token").fill("wk_not-a-real-token")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("That token is not valid.")
    await shot(page, "sign-in-refused")
    await page.get_by_label("Token").fill(ADMIN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Keep-alive")).to_be_visible()
    await expect(page.get_by_text("DEMO MODE")).to_be_visible()
    await expect(page.locator("svg.chart")).to_be_visible()
    # The admin sees the cluster's nodes: here one, this process, running no bot yet.
    await expect(page.locator("#cluster-nodes")).to_contain_text("1 node(s)")
    await expect(page.locator("#cluster-nodes")).to_contain_text("(this node) runs 0 bot(s)")
    cookies = await context.cookies()
    (session,) = [c for c in cookies if c["name"] == "wakeful_session"]
    assert session["httpOnly"] and session["sameSite"] == "Lax"
    assert ADMIN not in session["value"]
    await shot(page, "overview-signed-in")
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(f"{server.base_url}/login")
    await page.goto("/")
    await expect(page).to_have_url(f"{server.base_url}/login")
    await context.close()


async def test_create_a_bot_scan_it_and_send_a_message_without_reloading(
    browser: Browser, server: ServerProcess
):
    context, page = await signed_in(browser, server, ADMIN)
    await page.get_by_label("New bot's name").fill("shop")
    await page.get_by_role("button", name="Create").click()
    await expect(page.locator("#bots-message")).to_contain_text("Created shop")
    row = page.locator("#bot-table tbody tr", has_text="shop")
    await expect(row).to_be_visible()
    await shot(page, "overview-bot-created")

    await row.get_by_role("link", name="shop").click()
    qr = page.get_by_role("img", name="QR code to link this bot")
    await expect(qr).to_be_visible(timeout=WAIT)
    assert (await qr.get_attribute("src") or "").startswith("data:image/png;base64,")
    await expect(page.locator("#state")).to_have_text("SCAN_QR")
    await shot(page, "bot-qr")

    await page.evaluate("window.__notReloaded = true")
    await page.get_by_role("button", name="Simulate scan (demo)").click()
    await expect(page.locator("#connected")).to_contain_text("Connected as +1555", timeout=WAIT)
    await expect(page.locator("#state")).to_have_text("CONNECTED")
    await expect(qr).to_be_hidden()
    assert await page.evaluate("window.__notReloaded") is True
    await shot(page, "bot-connected")

    await page.get_by_label("To", exact=True).fill("+15550001111")
    await page.get_by_label("Text", exact=True).fill("hello from the dashboard")
    await page.get_by_role("button", name="Send").click()
    item = page.locator("#messages li", has_text="hello from the dashboard")
    await expect(item).to_contain_text("[sent]", timeout=WAIT)
    await expect(page.locator("#history li").first).to_contain_text("CONNECTED")
    assert await page.evaluate("window.__notReloaded") is True
    await shot(page, "bot-message-sent")
    bot_id = page.url.rsplit("/", 1)[1]
    sent = api(server, "GET", f"/api/sessions/{bot_id}/simulator/sent")["messages"]
    assert [m["body"] for m in sent] == ["hello from the dashboard"]
    await context.close()


async def test_actions_show_their_result_in_place(browser: Browser, server: ServerProcess):
    api(server, "POST", "/api/sessions", json={"name": "support", "start": False})
    context, page = await signed_in(browser, server, ADMIN)
    row = page.locator("#bot-table tbody tr", has_text="support")
    await expect(row.locator(".state")).to_have_text("IDLE")
    await row.get_by_role("button", name="Stop support", exact=True).click()
    await expect(page.locator("#bots-message")).to_contain_text("cannot be stopped")
    await row.get_by_role("button", name="Start support", exact=True).click()
    await expect(page.locator("#bots-message")).to_contain_text("Start: support is CONNECTING")
    await shot(page, "overview-action-result")
    await context.close()


async def test_another_user_does_not_see_the_first_users_bot(
    browser: Browser, server: ServerProcess
):
    alice = api(server, "POST", "/api/users", json={"name": "alice"})
    bob = api(server, "POST", "/api/users", json={"name": "bob"})
    bot = api(server, "POST", "/api/sessions", alice["token"], json={"name": "alices-bot"})
    context, page = await signed_in(browser, server, bob["token"])
    await expect(page.locator("#bot-table tbody")).to_contain_text("No bots yet")
    await expect(page.get_by_text("alices-bot")).to_have_count(0)
    await expect(page.get_by_role("link", name="Admin")).to_have_count(0)
    await shot(page, "overview-second-user")
    response = await page.goto(f"/bots/{bot['id']}")
    assert response is not None and response.status == 404
    await shot(page, "second-user-other-bot-404")
    admin_page = await page.goto("/admin")
    assert admin_page is not None and admin_page.status == 403
    await context.close()


async def test_posts_without_the_csrf_token_are_refused(browser: Browser, server: ServerProcess):
    context, page = await signed_in(browser, server, ADMIN)
    cookies = {c["name"]: c["value"] for c in await context.cookies()}
    with httpx.Client(base_url=server.base_url, cookies=cookies, timeout=10) as client:
        # The cookie alone reads...
        assert client.get("/api/sessions").status_code == 200
        # ...but does not act: the API wants the page's CSRF token as well.
        refused = client.post("/api/sessions", json={"name": "forged"})
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        assert "CSRF" in refused.json()["detail"]
        assert client.post("/logout", data={}).status_code == 403
        token = await page.locator('meta[name="csrf-token"]').get_attribute("content")
        assert token
        wrong = client.post(
            "/api/sessions", json={"name": "forged"}, headers={"X-CSRF-Token": token + "x"}
        )
        assert wrong.status_code == 403
        ok = client.post(
            "/api/sessions", json={"name": "real", "start": False}, headers={"X-CSRF-Token": token}
        )
        assert ok.status_code == 201, ok.text
    names = [s["name"] for s in api(server, "GET", "/api/sessions")["sessions"]]
    assert names == ["real"]
    # The sign-in form has its own token: a post from elsewhere is refused.
    with httpx.Client(base_url=server.base_url, timeout=10) as fresh:
        login = fresh.post("/login", data={"token": ADMIN, "csrf": "guess"})
        assert login.status_code == 403
        assert "wakeful_session" not in login.cookies
    await context.close()


async def test_admin_creates_a_user_and_runs_a_job(browser: Browser, server: ServerProcess):
    context, page = await signed_in(browser, server, ADMIN)
    await page.get_by_role("link", name="Admin").click()
    await page.get_by_label("New user's name").fill("carol")
    await page.get_by_role("button", name="Create").click()
    await expect(page.locator("#new-token")).to_contain_text("Token for carol")
    token = (await page.locator("#new-token").inner_text()).rsplit(" ", 1)[1]
    assert token.startswith("wk_")
    await expect(page.locator("#user-table")).to_contain_text("carol")
    row = page.locator("#job-table tbody tr", has_text="cleanup")
    await row.get_by_role("button", name="Run now").click()
    await expect(page.locator("#jobs-message")).to_contain_text("cleanup: run done")
    await expect(row).to_contain_text("removed")
    await row.get_by_role("button", name="Pause").click()
    await expect(row).to_contain_text("paused")
    await shot(page, "admin")
    # The token shown works for carol, and is not shown again.
    await page.reload()
    await expect(page.locator("#new-token")).to_have_text("")
    assert api(server, "GET", "/api/me", token)["name"] == "carol"
    await context.close()


@pytest.mark.parametrize("width", [375, 1280])
async def test_pages_fit_a_phone_and_a_desktop_with_long_names(
    browser: Browser, server: ServerProcess, width: int
):
    long_name = "a-bot-with-a-remarkably-long-name-that-goes-on-and-on-1234567890"
    bot = api(server, "POST", "/api/sessions", json={"name": long_name, "start": False})
    context, page = await signed_in(
        browser, server, ADMIN, viewport={"width": width, "height": 800}
    )
    await expect(page.get_by_text(long_name)).to_be_visible()
    await page.goto(f"/bots/{bot['id']}")
    await page.get_by_role("button", name="Start this bot").click()
    await expect(page.locator("#state")).to_have_text("SCAN_QR", timeout=WAIT)
    await expect(page.get_by_role("button", name="Start this bot")).to_be_hidden()
    for path in ("/", f"/bots/{bot['id']}", "/admin"):
        await page.goto(path)
        await page.wait_for_load_state("networkidle")
        overflow = await page.evaluate(
            "document.scrollingElement.scrollWidth - document.scrollingElement.clientWidth"
        )
        assert overflow <= 1, f"{path} scrolls sideways by {overflow}px at {width}px"
        # Every input has a label a screen reader can read.
        unlabelled = await page.evaluate(
            "[...document.querySelectorAll('input:not([type=hidden])')]"
            ".filter(i => !i.labels || !i.labels.length).map(i => i.id || i.name)"
        )
        assert unlabelled == [], (path, unlabelled)
        await shot(page, f"{path.strip('/').split('/')[0] or 'overview'}-{width}px")
    await context.close()


async def test_every_page_works_under_its_content_security_policy(
    browser: Browser, server: ServerProcess
):
    bot = api(server, "POST", "/api/sessions", json={"name": "policed"})["id"]
    context = await browser.new_context(base_url=server.base_url)
    # Every violation the browser reports, from the first script on each page.
    await context.add_init_script(
        "window.__csp = [];"
        "document.addEventListener('securitypolicyviolation', (e) =>"
        " window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    console: list[str] = []
    page = await context.new_page()
    page.on("console", lambda message: console.append(message.text))
    await page.goto("/login")
    await page.get_by_label("Token").fill(ADMIN)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Keep-alive")).to_be_visible()
    # The pages' own scripts ran: each filled in what only JavaScript fills in.
    await expect(page.locator("#bot-table tbody tr", has_text="policed")).to_be_visible()
    violations = await page.evaluate("window.__csp")
    await page.goto(f"/bots/{bot}")
    qr = page.get_by_role("img", name="QR code to link this bot")
    await expect(qr).to_be_visible(timeout=WAIT)  # a data: image, allowed by img-src
    violations += await page.evaluate("window.__csp")
    await page.goto("/admin")
    await expect(page.locator("#job-table tbody tr", has_text="cleanup")).to_be_visible()
    violations += await page.evaluate("window.__csp")
    response = await page.goto("/admin")
    assert response is not None
    assert response.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert violations == []
    assert not [line for line in console if "Content Security Policy" in line]
    await context.close()


async def test_an_image_is_sent_from_the_bot_page(
    browser: Browser, server: ServerProcess, tmp_path: Path
):
    """The bot page reads the chosen file in the browser and sends it as a media message;
    it arrives in the simulated WhatsApp as an image, with its caption and its bytes."""
    png = base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    )
    picture = tmp_path / "pixel.png"
    picture.write_bytes(png)
    bot_id = api(server, "POST", "/api/sessions", json={"name": "gallery"})["id"]
    context, page = await signed_in(browser, server, ADMIN)
    await page.goto(f"/bots/{bot_id}")
    await expect(page.locator("#state")).to_have_text("SCAN_QR", timeout=WAIT)
    await page.get_by_role("button", name="Simulate scan (demo)").click()
    await expect(page.locator("#state")).to_have_text("CONNECTED", timeout=WAIT)

    await page.get_by_label("Image", exact=True).set_input_files(str(picture))
    await page.get_by_label("Caption").fill("one pixel")
    await page.get_by_role("button", name="Upload image").click()
    # No number in "To" yet: the API's refusal is shown in place.
    await expect(page.locator("#bot-message")).to_contain_text("Image not sent")
    await page.get_by_label("To", exact=True).fill("+15550001111")
    await page.get_by_label("Image", exact=True).set_input_files(str(picture))
    await page.get_by_label("Caption").fill("one pixel")
    await page.get_by_role("button", name="Upload image").click()
    item = page.locator("#messages li", has_text="one pixel")
    await expect(item).to_contain_text("(image)")
    await expect(item).to_contain_text("[sent]", timeout=WAIT)
    await shot(page, "bot-image-sent")
    sent = api(server, "GET", f"/api/sessions/{bot_id}/simulator/sent")["messages"]
    assert [m["type"] for m in sent] == ["image"]
    record = [
        json.loads(line)
        for line in (tmp_path / "data" / "simulator-sent.jsonl").read_text().splitlines()
    ]
    (image,) = [r for r in record if r["session_id"] == bot_id]
    assert image["caption"] == "one pixel" and image["mimetype"] == "image/png"
    stored = tmp_path / "data" / "simulator-media" / image["media_sha256"]
    assert stored.read_bytes() == png

    # The phone answers with a picture: listed under "Received", shown and downloadable.
    api(
        server,
        "POST",
        f"/api/sessions/{bot_id}/simulator",
        json={"action": "image", "from": "+15550001111", "body": "got it, here is mine"},
    )
    got = page.locator("#received li", has_text="got it, here is mine")
    await expect(got).to_contain_text("+15550001111", timeout=WAIT)
    await expect(got).to_contain_text("(image)")
    picture_shown = got.get_by_role("img", name="got it, here is mine")
    await expect(picture_shown).to_be_visible()
    # Decoded under the page's Content-Security-Policy: the simulator's 16x12 picture.
    handle = await picture_shown.element_handle()
    await page.wait_for_function("i => i.complete && i.naturalWidth > 0", arg=handle, timeout=WAIT)
    assert await picture_shown.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [16, 12]
    link = got.get_by_role("link", name="Download image (image/png)")
    href = await link.get_attribute("href")
    assert href is not None and href.startswith(f"/api/sessions/{bot_id}/messages/")
    download = httpx.get(server.base_url + href, headers={"Authorization": f"Bearer {ADMIN}"})
    assert download.content == DEMO_PICTURE
    await shot(page, "bot-image-received")
    await context.close()
