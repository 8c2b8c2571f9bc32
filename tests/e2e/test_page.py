"""The web page in headless Chromium (Playwright) against a live embedded stack with the local renderer.

What a user does: order an ad with a brand, see a bad colour named next to its field, see the estimate,
watch the clip cards fill and the final video play, cancel one, page through the history with a status
filter and open an entry; and the same with API keys set, where media plays through the session
cookie and the key shows up in no URL and no log line.
"""

import json
import logging
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from .conftest import Stack, running_stack, stack_settings

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
#: A compliance report as the detail carries it (given to the page where the detail has none yet).
COMPLIANCE = {"avoided_words_removed": ["cheap"], "disclaimer_on_screen_seconds": 3.0, "logo": "none"}
#: A generation on a busy 2-core machine: minutes at worst, never a hang.
DONE_MS = 240_000


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def browser() -> AsyncIterator[Any]:
    if shutil.which(CHROMIUM) is None:
        pytest.skip("the Debian package chromium is not installed (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:  # a fresh temporary profile, as launch() makes one
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def start_stack(
    tmp_path_factory: pytest.TempPathFactory,
    kafka_bootstrap: str,
    new_database: Callable[[], Awaitable[str]],
    **overrides: Any,
) -> Any:
    settings = stack_settings(
        tmp_path_factory.mktemp("page-stack"), kafka_bootstrap, await new_database(), **overrides
    )
    return running_stack(settings)


async def open_page(browser: Any, url: str, width: int = 1280) -> Any:
    context = await browser.new_context(viewport={"width": width, "height": 900})
    page = await context.new_page()
    await page.goto(url)
    await page.wait_for_selector("body[data-ready=true]")
    return page


async def video_state(page: Any, selector: str) -> dict[str, Any]:
    """Wait until the ``<video>`` has loaded its metadata; its readyState, duration and size."""
    await page.wait_for_function(
        f"document.querySelector({selector!r}) && document.querySelector({selector!r}).readyState >= 1",
        timeout=60_000,
    )
    state: dict[str, Any] = await page.eval_on_selector(
        selector,
        "v => ({ready: v.readyState, duration: v.duration, width: v.videoWidth, height: v.videoHeight,"
        " error: v.error && v.error.code, src: v.currentSrc})",
    )
    return state


async def wait_status(page: Any, status: str) -> None:
    await page.wait_for_selector(f"#job[data-status={status}]", timeout=DONE_MS)


async def history_shows(page: Any, message: str) -> None:
    """Wait until the history has settled (no request in flight) on the page that says ``message``."""
    await page.wait_for_selector("#history-list[aria-busy=false]")
    await page.wait_for_function(
        f"document.getElementById('history-message').textContent === {message!r}"
        " && document.getElementById('history-list').getAttribute('aria-busy') === 'false'"
    )


async def shown_ids(page: Any) -> list[str]:
    """The generations the history lists, in order."""
    ids: list[str] = await page.eval_on_selector_all(
        "#history-list button", "buttons => buttons.map(b => b.dataset.generationId)"
    )
    return ids


async def api_json(session: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> Any:
    async with session.request(method, url, **kw) as resp:
        assert resp.status < 300, await resp.text()
        return await resp.json()


async def test_order_watch_cancel_and_browse(
    browser: Any,
    tmp_path_factory: pytest.TempPathFactory,
    kafka_bootstrap: str,
    new_database: Callable[[], Awaitable[str]],
    tmp_path: Path,
) -> None:
    async with await start_stack(tmp_path_factory, kafka_bootstrap, new_database) as stack:
        await _order_watch_cancel_and_browse(browser, stack, tmp_path)


async def _order_watch_cancel_and_browse(browser: Any, stack: Stack, shots: Path) -> None:
    page = await open_page(browser, stack.url, width=390)  # a phone's width
    await page.fill("#prompt", "A sunrise run along the harbour for a trail shoe that grips wet rock")
    await page.fill("#duration", "5")
    await page.select_option("#aspect", "9:16")
    await page.select_option("#resolution", "480p")
    await page.fill("#brand-name", "Ridgeline")
    await page.fill("#brand-colors", "#0A84FF, blue")
    await page.fill("#brand-fonts", "Inter")
    await page.fill("#brand-tone", "bold")
    await page.fill("#brand-dont", "cheap")
    await page.fill("#brand-disclaimer", "Terms apply.")
    await page.fill("#cta", "Find your line")

    # A bad colour: the API's 422 detail shows next to the colours field, and nothing is ordered.
    await page.click("#submit-button")
    error = page.locator("#err-brand-colors")
    await error.wait_for(state="visible")
    assert await error.inner_text() == 'item 2 ("blue"): use a hex colour like #0A84FF'
    assert await page.get_attribute("#brand-colors", "aria-invalid") == "true"
    assert await page.evaluate("document.activeElement.id") == "brand-colors"
    assert await page.is_hidden("#job")
    await page.screenshot(path=str(shots / "bad-colour.png"), full_page=True)

    # Fixed: the estimate is shown, matching what the API plans, and the order goes through.
    await page.fill("#brand-colors", "#0A84FF, #FF375F")
    await page.click("#estimate-button")
    async with aiohttp.ClientSession() as session:
        planned = await api_json(
            session,
            "POST",
            f"{stack.url}/api/v1/estimates",
            json={"prompt": "x", "duration_seconds": 5},
        )
    await page.wait_for_function("document.getElementById('estimate').textContent.startsWith('Estimate:')")
    assert f"{len(planned['clips'])} clips" in await page.inner_text("#estimate")
    assert await page.get_attribute("#brand-colors", "aria-invalid") is None
    # The page's first WebSocket is dropped right after its snapshot, as a restarting gateway would:
    # the page must reconnect and still see everything through to the end. Later, a snapshot without a
    # compliance report gets one (until the finishing work reports its own), to see the page render it.
    sockets: list[str] = []
    relay = {"inject_compliance": False}

    async def drop_the_first(route: Any) -> None:
        sockets.append(route.url)
        server = route.connect_to_server()
        drop = len(sockets) == 1

        async def from_server(message: str | bytes) -> None:
            if relay["inject_compliance"] and isinstance(message, str):
                data = json.loads(message)
                if data["type"] == "snapshot" and not data["generation"].get("compliance"):
                    data["generation"]["compliance"] = COMPLIANCE
                    message = json.dumps(data)
            route.send(message)
            if drop:
                await route.close(code=1012, reason="restarting")

        server.on_message(from_server)

    await page.route_web_socket(re.compile(r"/ws/generations/"), drop_the_first)
    await page.click("#submit-button")
    await page.wait_for_selector("#job:not([hidden])")
    generation_id = await page.get_attribute("#job", "data-generation-id")
    assert generation_id and generation_id.startswith("gen_")

    # Live: clip cards fill in, the timeline ends at completed, the final video plays its 5 s.
    await wait_status(page, "completed")
    assert len(sockets) >= 2, sockets  # it reconnected after the drop
    cards = page.locator("#clips li.clip")
    assert await cards.count() == len(planned["clips"])
    assert await page.locator("#clips li[data-status=succeeded]").count() == await cards.count()
    clip = await video_state(page, "#clips li.clip video")
    assert clip["error"] is None and clip["duration"] > 0
    final = await video_state(page, "#final-video")
    assert final["error"] is None
    assert final["duration"] == pytest.approx(5, abs=0.25)
    assert final["height"] > final["width"]  # 9:16
    assert await page.inner_text("#timeline li[aria-current=step]") == "completed"
    href = await page.get_attribute("#download", "href")
    assert href == f"/api/v1/generations/{generation_id}/video"
    download = await page.request.get(stack.url + href)
    assert download.status == 200 and download.headers["content-type"] == "video/mp4"
    async with aiohttp.ClientSession() as session:
        detail = await api_json(session, "GET", f"{stack.url}/api/v1/generations/{generation_id}")
    assert detail["brand"]["colors"] == ["#0A84FF", "#FF375F"]
    assert detail["brand"]["guidelines"]["required_disclaimer"] == "Terms apply."
    assert detail["aspect_ratio"] == "9:16" and detail["options"]["cta_text"] == "Find your line"
    if detail.get("compliance"):  # present once the finishing work reports it
        assert await page.is_visible("#compliance")
    await page.screenshot(path=str(shots / "completed.png"), full_page=True)
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone

    # Cancel a long one while it runs.
    await page.fill("#prompt", "A slow pan over a quiet library, for a reading app")
    await page.fill("#duration", "60")
    await page.click("#submit-button")
    await page.wait_for_function(f"document.getElementById('job').dataset.generationId !== {generation_id!r}")
    await page.wait_for_selector("#cancel-button:visible")
    await page.click("#cancel-button")
    await wait_status(page, "canceled")
    assert await page.inner_text("#timeline li[aria-current=step]") == "canceled"
    assert await page.is_hidden("#cancel-button")
    canceled_id = await page.get_attribute("#job", "data-generation-id")

    # History: 10 more canceled orders make at least two pages under the "Canceled" filter. The page must
    # show exactly the pages the API gives (the stack shares its broker with other tests, so it may hold
    # orders that are not ours: compare with the API rather than count).
    async with aiohttp.ClientSession() as session:
        fillers = []
        for i in range(10):
            made = await api_json(
                session,
                "POST",
                f"{stack.url}/api/v1/generations",
                json={"prompt": f"Filler order {i}", "duration_seconds": 5},
            )
            fillers.append(made["generation_id"])
            await api_json(session, "POST", f"{stack.url}/api/v1/generations/{made['generation_id']}/cancel")
        first = await api_json(session, "GET", f"{stack.url}/api/v1/generations?status=canceled&limit=10")
        assert first["next_cursor"]
        second = await api_json(
            session,
            "GET",
            f"{stack.url}/api/v1/generations?status=canceled&limit=10&cursor={first['next_cursor']}",
        )
    api_pages = [[i["generation_id"] for i in page_["items"]] for page_ in (first, second)]
    assert {canceled_id, *fillers} <= {*api_pages[0], *api_pages[1]}
    await page.select_option("#history-status", "canceled")
    await history_shows(page, "Page 1 (Canceled)")
    assert await shown_ids(page) == api_pages[0]
    assert set(await page.locator("#history-list .status").all_inner_texts()) == {"canceled"}
    assert await page.is_enabled("#history-older") and not await page.is_enabled("#history-newer")
    await page.click("#history-older")
    await history_shows(page, "Page 2 (Canceled)")
    assert await shown_ids(page) == api_pages[1]
    assert await page.is_enabled("#history-older") == (second["next_cursor"] is not None)
    await page.click("#history-newer")
    await history_shows(page, "Page 1 (Canceled)")
    assert await shown_ids(page) == api_pages[0]

    # The completed one, opened from the history by keyboard, plays again, with its compliance report.
    relay["inject_compliance"] = True
    await page.select_option("#history-status", "completed")
    await history_shows(page, "Page 1 (Completed)")
    assert set(await page.locator("#history-list .status").all_inner_texts()) == {"completed"}
    entry = page.locator(f"#history-list button[data-generation-id={generation_id}]")
    await entry.focus()
    await page.keyboard.press("Enter")
    await page.wait_for_function(f"document.getElementById('job').dataset.generationId === {generation_id!r}")
    await wait_status(page, "completed")
    reopened = await video_state(page, "#final-video")
    await page.wait_for_selector("#compliance:not([hidden])")
    report = await page.inner_text("#compliance-list")
    assert "Avoided words removed" in report and "Disclaimer on screen" in report and "Logo" in report
    assert reopened["duration"] == pytest.approx(5, abs=0.25)
    await page.screenshot(path=str(shots / "history.png"), full_page=True)
    await page.context.close()


async def test_with_api_keys_media_plays_through_the_cookie(
    browser: Any,
    tmp_path_factory: pytest.TempPathFactory,
    kafka_bootstrap: str,
    new_database: Callable[[], Awaitable[str]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = f"page-key-{uuid.uuid4().hex}"
    caplog.set_level(logging.DEBUG, logger="gateway")  # the gateway's per-request log lines
    async with await start_stack(
        tmp_path_factory, kafka_bootstrap, new_database, api_keys=f"{key},other-{uuid.uuid4().hex}"
    ) as stack:
        page = await open_page(browser, stack.url)
        urls: list[str] = []
        page.on("request", lambda request: urls.append(request.url))
        page.on("websocket", lambda ws: urls.append(ws.url))

        await page.wait_for_selector("#key-section:not([hidden])")
        await page.fill("#api-key", "not-the-key")
        await page.press("#api-key", "Enter")
        await page.wait_for_function(
            "document.getElementById('err-api_key').textContent.includes('not valid')"
        )
        await page.fill("#api-key", key)
        await page.press("#api-key", "Enter")
        await page.wait_for_selector("#key-section", state="hidden")
        assert await page.is_visible("#signed-in")
        cookies = await page.context.cookies()
        session = next(c for c in cookies if c["name"] == "reelstream_session")
        assert session["httpOnly"] and session["sameSite"] == "Strict" and key not in session["value"]

        await page.fill("#prompt", "A neon night market, for a street-food delivery app")
        await page.fill("#duration", "5")
        await page.fill("#brand-name", "Night Bite")
        await page.click("#submit-button")
        await page.wait_for_selector("#job:not([hidden])")
        await wait_status(page, "completed")
        final = await video_state(page, "#final-video")
        assert final["error"] is None and final["duration"] == pytest.approx(5, abs=0.25)
        assert "api_key" not in final["src"] and key not in final["src"]
        await page.screenshot(path=str(tmp_path / "keyed.png"), full_page=True)

        # Without the cookie the same media is refused: it is the cookie that authenticated it.
        anonymous = await browser.new_context()
        refused = await anonymous.request.get(final["src"])
        assert refused.status == 401
        await anonymous.close()

        # Forgetting the key drops the session: the page asks again.
        await page.click("#sign-out")
        await page.wait_for_selector("#key-section:not([hidden])")
        assert not [c for c in await page.context.cookies() if c["name"] == "reelstream_session"]
        await page.context.close()

    assert any("/ws/generations/" in url for url in urls)
    assert not [url for url in urls if key in url or "api_key" in url]
    lines = [record.getMessage() for record in caplog.records]
    assert any("/api/v1/generations" in line for line in lines), "the request log was not captured"
    # The progress came over the WebSocket, opened with the cookie alone (101), not from polling.
    assert [line for line in lines if re.match(r"GET /ws/generations/gen_[0-9a-f]{32} 101 ", line)]
    assert not [line for line in lines if key in line]
