"""Security at the edge: control characters, whole-id matching, cross-site cancel, keys kept out of logs,
secret files private from their first byte."""

import asyncio
import copy
import logging
import os
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from gateway_harness import Gateway, GatewayFactory

from gateway.auth import RedactingAccessLogger
from reelstream.detail import valid_clip_id, valid_generation_id
from reelstream.webhooks import secret_file

BRAND: dict[str, Any] = {
    "name": "Acme",
    "fonts": ["Inter"],
    "tone": "playful",
    "tagline": "Fresh",
    "logo_url": "https://example.com/logo.png",
    "guidelines": {"do": ["smile"], "dont": ["cheap"], "required_disclaimer": "Terms apply."},
}
OPTIONS: dict[str, Any] = {"cta_text": "Shop now", "negative_prompt": "blur"}


def _body(path: str, value: str) -> dict[str, Any]:
    """A valid body with ``value`` put at the dotted ``path`` (list items by index)."""
    body: dict[str, Any] = {
        "prompt": "A sunny ad for lemonade",
        "brand": copy.deepcopy(BRAND),
        "options": copy.deepcopy(OPTIONS),
    }
    *parents, last = path.split(".")
    node: Any = body
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return body


@pytest.mark.parametrize(
    "field",
    [
        "prompt",
        "brand.name",
        "brand.fonts.0",
        "brand.tone",
        "brand.tagline",
        "brand.logo_url",
        "brand.guidelines.do.0",
        "brand.guidelines.dont.0",
        "brand.guidelines.required_disclaimer",
        "options.cta_text",
        "options.negative_prompt",
        "options.callback_url",
    ],
)
async def test_a_nul_byte_in_any_string_is_a_422_naming_the_field(gw: Gateway, field: str) -> None:
    value = "https://example.com/a\u0000b" if field.endswith("_url") else "Ac\u0000me"
    before = await gw.pool.fetchval("SELECT count(*) FROM generations")
    resp = await gw.client.post("/api/v1/generations", json=_body(field, value))
    assert resp.status == 422, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == "validation_error"
    assert [d["field"] for d in error["details"]] == [field]
    assert await gw.pool.fetchval("SELECT count(*) FROM generations") == before


@pytest.mark.parametrize("field", ["brand.name", "brand.fonts.0", "options.cta_text", "brand.tone"])
@pytest.mark.parametrize("char", ["\n", "\t", "\u007f", "\u0085", "\u001b"])
async def test_one_line_fields_refuse_every_control_character(gw: Gateway, field: str, char: str) -> None:
    resp = await gw.client.post("/api/v1/generations", json=_body(field, f"Ac{char}me"))
    assert resp.status == 422
    assert [d["field"] for d in (await resp.json())["error"]["details"]] == [field]


async def test_free_text_keeps_its_line_breaks_and_tabs(gw: Gateway) -> None:
    body = _body("prompt", "Line one\n\tLine two")
    body["brand"]["guidelines"]["required_disclaimer"] = "Terms apply.\nSee site."
    body["brand"]["guidelines"]["do"] = ["smile\tbroadly"]
    resp = await gw.client.post("/api/v1/generations", json=body)
    assert resp.status == 202, await resp.text()
    detail = await (await gw.client.get(f"/api/v1/generations/{(await resp.json())['generation_id']}")).json()
    assert detail["prompt"] == "Line one\n\tLine two"
    assert detail["brand"]["guidelines"]["required_disclaimer"] == "Terms apply.\nSee site."


async def test_ids_are_matched_whole(gw: Gateway) -> None:
    gid = await gw.create()
    assert valid_generation_id(gid) and not valid_generation_id(gid + "\n")
    assert valid_clip_id("clip_01") and not valid_clip_id("clip_01\n")
    for path in (f"/api/v1/generations/{gid}%0A", f"/api/v1/generations/{gid}%0A/cancel"):
        method = gw.client.post if path.endswith("cancel") else gw.client.get
        resp = await method(path)
        assert resp.status == 404, path
        assert (await resp.json())["error"]["code"] == "not_found"
    assert (await gw.client.get(f"/api/v1/generations/{gid}")).status == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/x-www-form-urlencoded"},
        {"Content-Type": "text/plain"},
        {"Content-Type": "multipart/form-data; boundary=x"},
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
async def test_cancel_refuses_a_cross_site_post_without_keys(gw: Gateway, headers: dict[str, str]) -> None:
    gid = await gw.create()
    resp = await gw.client.post(f"/api/v1/generations/{gid}/cancel", data=b"x=1", headers=headers)
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "forbidden"
    detail = await (await gw.client.get(f"/api/v1/generations/{gid}")).json()
    assert detail["status"] != "canceled"


async def test_cancel_from_the_same_origin_or_a_cli_still_works(gw: Gateway) -> None:
    same_origin = {"Origin": f"http://{gw.client.host}:{gw.client.port}", "Sec-Fetch-Site": "same-origin"}
    for headers in (same_origin, {}, {"Content-Type": "application/json"}):
        gid = await gw.create()
        resp = await gw.client.post(f"/api/v1/generations/{gid}/cancel", headers=headers)
        assert resp.status == 202, (headers, await resp.text())


def test_the_access_log_never_shows_a_key(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.access")
    access = RedactingAccessLogger(logger, '%a "%r" %s "%{Referer}i" "%{Authorization}i" "%{X-API-Key}i"')
    request = make_mocked_request(
        "GET",
        "/ws/generations/gen_0?x=1&api_key=sekrit-key-1&API_KEY=sekrit-key-2",
        headers={
            "Authorization": "Bearer sekrit-key-3",
            "X-API-Key": "sekrit-key-4",
            "Referer": "http://127.0.0.1:8080/?api_key=sekrit-key-5",
        },
    )
    with caplog.at_level(logging.INFO, logger="test.access"):
        access.log(request, web.Response(status=101), 0.01)
    line = caplog.records[-1].getMessage()
    assert "sekrit" not in line
    assert "api_key=[redacted]" in line and "x=1" in line and "/ws/generations/gen_0" in line


def test_secret_files_are_private_from_their_first_byte(tmp_path: Path) -> None:
    old = os.umask(0)  # even a permissive umask must not make it readable by others
    try:
        first = secret_file(tmp_path / "callback_secret")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "callback_secret").stat().st_mode)
    assert mode == 0o600
    assert first.startswith("whsec_") and secret_file(tmp_path / "callback_secret") == first
    assert [p.name for p in tmp_path.iterdir()] == ["callback_secret"]  # no temporary left behind


async def test_concurrent_first_starts_agree_on_one_secret(tmp_path: Path) -> None:
    path = tmp_path / "webhook_secret"
    found = await asyncio.gather(*(asyncio.to_thread(secret_file, path) for _ in range(8)))
    assert len(set(found)) == 1


async def test_websockets_past_the_cap_are_refused_before_the_upgrade(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(gateway_max_websockets=1, rate_limit_per_minute=1000)
    gid = await gw.create()
    first = await gw.client.ws_connect(f"/ws/generations/{gid}")
    assert (await first.receive_json())["type"] == "snapshot"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gw.client.ws_connect(f"/ws/generations/{gid}")
    assert refused.value.status == 503
    await first.close()
    await asyncio.sleep(0.1)  # the server side of the first socket lets go
    again = await gw.client.ws_connect(f"/ws/generations/{gid}")
    assert (await again.receive_json())["type"] == "snapshot"
    await again.close()


async def test_a_trickling_body_is_answered_408(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(gateway_body_timeout_seconds=0.5, rate_limit_per_minute=1000)
    reader, writer = await asyncio.open_connection(gw.client.host, gw.client.port)
    writer.write(
        b"POST /api/v1/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"prompt": '
    )
    await writer.drain()
    async with asyncio.timeout(10):
        status_line = await reader.readline()
        rest = await reader.read(4096)
    writer.close()
    assert status_line.split()[1] == b"408"
    assert b'"request_timeout"' in rest
