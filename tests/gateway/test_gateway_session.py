"""Browser sessions: an API key traded for a cookie that plays media and opens the WebSocket."""

from http.cookies import SimpleCookie

from gateway_harness import Gateway, GatewayFactory

from gateway.session import COOKIE_NAME, SESSION_SECONDS, issue, verify

KEY = "page-key-0123456789"
OTHER = "other-key-9876543210"


async def keyed(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway(api_keys=f"{KEY},{OTHER}", rate_limit_per_minute=100_000)


async def login(gw: Gateway, key: str = KEY) -> str:
    resp = await gw.client.post("/api/v1/session", json={"api_key": key})
    assert resp.status == 204, await resp.text()
    cookie = SimpleCookie(resp.headers["Set-Cookie"])[COOKIE_NAME]
    gw.client.session.cookie_jar.clear()  # each request below says for itself what it sends
    return cookie.value


async def test_session_cookie_is_httponly_strict_and_not_the_key(make_gateway: GatewayFactory) -> None:
    gw = await keyed(make_gateway)
    resp = await gw.client.post("/api/v1/session", json={"api_key": KEY})
    assert resp.status == 204
    header = resp.headers["Set-Cookie"]
    morsel = SimpleCookie(header)[COOKIE_NAME]
    assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/"
    assert not morsel["secure"]  # plain http here; https requests get Secure
    assert int(morsel["max-age"]) == SESSION_SECONDS
    assert KEY not in header and KEY not in morsel.value


async def test_wrong_or_missing_key_is_refused(make_gateway: GatewayFactory) -> None:
    gw = await keyed(make_gateway)
    resp = await gw.client.post("/api/v1/session", json={"api_key": "nope"})
    assert resp.status == 401 and "Set-Cookie" not in resp.headers
    assert (await resp.json())["error"]["code"] == "unauthorized"
    resp = await gw.client.post("/api/v1/session", json={})
    assert resp.status == 422
    assert (await resp.json())["error"]["details"][0]["field"] == "api_key"
    resp = await gw.client.post("/api/v1/session", data="api_key=x", headers={"Content-Type": "text/plain"})
    assert resp.status == 415


async def test_cookie_authenticates_reads_but_not_changes(make_gateway: GatewayFactory) -> None:
    gw = await keyed(make_gateway)
    token = await login(gw)
    cookie = {"Cookie": f"{COOKIE_NAME}={token}"}
    assert (await gw.client.get("/api/v1/generations")).status == 401
    assert (await gw.client.get("/api/v1/generations", headers=cookie)).status == 200
    missing = await gw.client.get(f"/api/v1/generations/gen_{'0' * 32}/video", headers=cookie)
    assert missing.status == 404  # authenticated: the generation simply does not exist
    create = await gw.client.post("/api/v1/generations", json={"prompt": "Lemonade"}, headers=cookie)
    assert create.status == 401  # a cross-site form cannot ride the cookie into a change
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    bad = await gw.client.get("/api/v1/generations", headers={"Cookie": f"{COOKIE_NAME}={tampered}"})
    assert bad.status == 401


async def test_token_names_its_own_key_and_expires() -> None:
    token = issue(OTHER, now=1000.0)
    assert verify(token, [KEY, OTHER], now=1001.0) == OTHER
    assert verify(token, [KEY], now=1001.0) is None  # the key was removed: its sessions end
    assert verify(token, [KEY, OTHER], now=1000.0 + SESSION_SECONDS + 1) is None
    digest, expires, signature = token.split(".")
    forged = f"{digest}.{int(expires) + 3600}.{signature}"
    assert verify(forged, [KEY, OTHER], now=1001.0) is None


async def test_delete_clears_the_cookie_and_open_gateway_needs_none(make_gateway: GatewayFactory) -> None:
    gw = await keyed(make_gateway)
    resp = await gw.client.delete("/api/v1/session")
    assert resp.status == 204
    morsel = SimpleCookie(resp.headers["Set-Cookie"])[COOKIE_NAME]
    assert morsel.value == "" and morsel["max-age"] == "0"
    open_gw = await make_gateway(rate_limit_per_minute=100_000)
    resp = await open_gw.client.post("/api/v1/session", json={"api_key": "anything"})
    assert resp.status == 204 and "Set-Cookie" not in resp.headers


async def test_page_and_its_files_are_served(gw: Gateway) -> None:
    page = await gw.client.get("/")
    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    for name, ctype in (("app.js", "text/javascript"), ("app.css", "text/css")):
        assert f"/static/{name}" in html
        resp = await gw.client.get(f"/static/{name}")
        assert resp.status == 200 and resp.content_type == ctype
    assert (await gw.client.get("/static/index.html")).status == 404
    assert (await gw.client.get("/static/..%2Fapp.py")).status == 404
