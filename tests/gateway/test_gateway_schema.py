"""schemathesis against the live gateway's own OpenAPI document: no 5xx, no answer that breaks it.

The gateway runs for real (aiohttp on a port, Postgres, the gateway tests' broker) with API keys set,
and the document schemathesis works from is the one ``GET /api/v1/openapi.json`` serves. For every
HTTP operation it sends generated requests, valid ones and deliberately invalid ones, with the key and
(a few) without it, and checks each answer with its default checks: not a server error, a documented
status code, the documented content type and headers, a body that validates against the documented
schema, invalid input refused and valid input accepted. Generated ids never exist, so another pass pins
the path ids to generations seeded here (one queued, one completed with its files stored): the 200/206
answers and the full detail get checked too, not only the 404s.

schemathesis drives ``requests`` (blocking), so it runs in a worker thread while this test's event
loop serves the gateway. Hypothesis is derandomized and keeps no example database: CI sees the same
requests every run.
"""

import asyncio
from typing import Any

import asyncpg
import pytest
import requests
import schemathesis
from gateway_harness import Gateway, GatewayFactory
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from reelstream.storage import clip_key, final_key, thumbnail_key

# schemathesis's own strategies draw from ``random`` (Hypothesis seeds it per example, so runs repeat).
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")

KEY = "schema-key"
AUTH = {"X-API-Key": KEY}
#: Examples per operation and mode: enough to reach every documented branch of these small inputs
#: while the whole test stays well under a minute on a busy machine.
MAX_EXAMPLES = 25
HYPOTHESIS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)


#: Rules that live in code, not in any schema: a request the document calls valid may still break one,
#: and is then refused with a 422 naming that field. Every other 422 on valid data is a failure.
RULES_BEYOND_THE_SCHEMA = {
    "options.max_cost_usd": "`budget_exceeded`: the estimate is above the ceiling",
    "options.callback_url": "https only, and never to a private address",
    "brand.guidelines.required_disclaimer": "must fit on the end card at a legible size",
    "cursor": "an opaque token that only this API hands out",
}


def accepts_valid_data(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Any) -> Any:
    """schemathesis's ``positive_data_acceptance``, except for the rules above (and only them).

    A body that fails the models is answered "the request body is invalid" and is never exempt: the
    rules above are checked after the models accepted the body, and answer with their own message.
    """
    if response.status_code == 422:
        error = response.json().get("error") or {}
        named = {d.get("field") for d in error.get("details") or []}
        beyond = error.get("message") != "the request body is invalid"
        if beyond and named and named <= RULES_BEYOND_THE_SCHEMA.keys():
            return None
    return positive_data_acceptance(ctx, response, case)


async def _seed(gw: Gateway) -> dict[str, str]:
    """A queued generation and a completed one with its video, thumbnail and a clip stored."""
    ids: list[str] = []
    for body in (
        {"prompt": "A sunny ad for lemonade"},
        {
            "prompt": "Trail shoes that grip",
            "duration_seconds": 10,
            "brand": {"name": "Grip", "colors": ["#112233"], "guidelines": {"do": ["be bold"]}},
        },
    ):
        resp = await gw.client.post("/api/v1/generations", json=body, headers=AUTH)
        assert resp.status == 202, await resp.text()
        ids.append((await resp.json())["generation_id"])
    queued, completed = ids
    for gid in ids:  # the gateway writes its rows in batches: wait until both are there
        for _ in range(100):
            if await gw.pool.fetchval("SELECT 1 FROM generations WHERE id = $1", gid):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"{gid} never reached Postgres")

    def store(key: str, content: bytes) -> None:
        path = gw.storage.local_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)

    await asyncio.to_thread(store, final_key(completed), b"\x00" * 4096)
    await asyncio.to_thread(store, thumbnail_key(completed), b"\xff\xd8\xff" + b"\x00" * 64)
    await asyncio.to_thread(store, clip_key(completed, "clip_01"), b"\x00" * 2048)
    video = {
        "url": "ignored",
        "duration_seconds": 10.0,
        "width": 1280,
        "height": 720,
        "fps": 24.0,
        "has_audio": True,
        "thumbnail_url": f"/api/v1/generations/{completed}/thumbnail",
    }
    await gw.pool.execute(
        "UPDATE generations SET status = 'completed', video = $2 WHERE id = $1",
        completed,
        video,
    )
    await gw.pool.execute(
        "INSERT INTO clips (generation_id, clip_id, scene_id, idx, status, duration_seconds, storage_key)"
        " VALUES ($1, 'clip_01', 'scene_1', 0, 'succeeded', 5.0, $2)",
        completed,
        clip_key(completed, "clip_01"),
    )
    return {"queued": queued, "completed": completed}


#: Answers the run must have seen, so that it cannot pass by being refused everywhere (a 401 or a 404
#: is documented on nearly every route): the key works, the seeded ids are found, bad input is refused.
MUST_SEE = {
    "POST /api/v1/generations": {202, 422},
    "GET /api/v1/generations": {200, 422},
    "GET /api/v1/generations/{generation_id}": {200, 404},
    "POST /api/v1/generations/{generation_id}/cancel": {202, 404, 409},
    "GET /api/v1/generations/{generation_id}/video": {200, 404},
    "GET /api/v1/generations/{generation_id}/thumbnail": {200, 404},
    "GET /api/v1/generations/{generation_id}/clips/{clip_id}/video": {200, 404},
    "POST /api/v1/estimates": {200, 422},
    "POST /api/v1/webhooks/replicate": {401},  # nothing schemathesis sends is signed
    "POST /api/v1/session": {401, 422},
    "DELETE /api/v1/session": {204},
    "GET /api/v1/openapi.json": {200},
    "GET /healthz": {200},
    "GET /readyz": {200},
    "GET /metrics": {200},
    "GET /": {200},
    "GET /static/{name}": {200},
    "GET /provider/outputs/{name}": {404},
}


def _explore(base_url: str, seeded: dict[str, str]) -> tuple[list[str], dict[str, set[int]]]:
    """Every HTTP operation, valid and invalid requests, then pinned to the seeded ids.

    Returns the failures and, per operation, the statuses it answered.
    """
    failures: list[str] = []
    seen: dict[str, set[int]] = {}
    with requests.Session() as session:
        # Fetched here and loaded with ``from_dict``: ``from_url`` leaves out the operation that serves
        # the document itself, and that route must hold to it too.
        answer = session.get(f"{base_url}/api/v1/openapi.json", headers=AUTH, timeout=30)
        answer.raise_for_status()
        schema = schemathesis.openapi.from_dict(answer.json())

        def run(
            label: str, strategy: Any, headers: dict[str, str] = AUTH, examples: int = MAX_EXAMPLES
        ) -> None:
            @settings(HYPOTHESIS, max_examples=examples)
            @given(case=strategy)
            def check(case: schemathesis.Case) -> None:
                response = case.call_and_validate(
                    base_url=base_url,
                    session=session,
                    headers=headers,
                    timeout=30,
                    excluded_checks=[positive_data_acceptance],
                    additional_checks=[accepts_valid_data],
                )
                key = case.operation.label if headers else f"{case.operation.label} [no key]"
                seen.setdefault(key, set()).add(response.status_code)

            try:
                check()
            except (Exception, BaseExceptionGroup) as exc:  # every failing operation, not only the first
                failures.append(f"{label}: {exc}")

        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path.startswith("/ws/"):
                continue  # the WebSocket upgrade is not an HTTP exchange schemathesis can check
            run(f"{operation.label} [valid]", operation.as_strategy())
            run(f"{operation.label} [no key]", operation.as_strategy(), headers={}, examples=5)
            inputs = (operation.path_parameters, operation.headers, operation.query, operation.body)
            if any(len(part) for part in inputs):  # nothing to make invalid otherwise
                run(
                    f"{operation.label} [invalid]",
                    operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
                )
            names = {p.name for p in operation.path_parameters}
            if "generation_id" in names:
                for which, gid in seeded.items():
                    pinned: dict[str, str] = {"generation_id": gid}
                    if "clip_id" in names:
                        pinned["clip_id"] = "clip_01"
                    run(f"{operation.label} [{which}]", operation.as_strategy(path_parameters=pinned))
    return failures, seen


async def test_live_gateway_answers_as_its_openapi_document_says(
    make_gateway: GatewayFactory, fresh_pool: asyncpg.Pool
) -> None:
    # A database of its own: the hundreds of orders schemathesis places must not show in other lists.
    gw = await make_gateway(pool=fresh_pool, api_keys=KEY, rate_limit_per_minute=100_000)
    seeded = await _seed(gw)
    base_url = str(gw.client.make_url("")).rstrip("/")
    failures, seen = await asyncio.to_thread(_explore, base_url, seeded)
    assert not failures, "\n\n".join(failures)
    missed = {op: sorted(want - seen.get(op, set())) for op, want in MUST_SEE.items()}
    assert not any(missed.values()), f"never answered: {missed}; seen: {seen}"
    keyed = {op for op in seen if not op.endswith(" [no key]")}
    assert keyed == MUST_SEE.keys(), "the document's HTTP operations changed: update MUST_SEE"
    for op in MUST_SEE:  # the API's routes refuse a request without the key, and say so as documented
        if op.split()[1].startswith("/api/v1/") and "/webhooks/" not in op and "/session" not in op:
            assert seen[f"{op} [no key]"] == {401}, (op, seen[f"{op} [no key]"])
