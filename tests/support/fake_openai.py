"""A scriptable OpenAI-compatible server for tests: ``POST /v1/chat/completions`` on 127.0.0.1.

Point the real ``openai`` client at ``server.base_url``. Queue replies with :meth:`FakeOpenAI.push`
(status, JSON body, headers) or the helpers; with nothing queued, every call succeeds with a valid
``AnalysisResult`` as ``choices[0].message.content``. Every request body is kept in ``requests``.
"""

import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import loopback
from aiohttp import web

VALID_RESULT: dict[str, Any] = {
    "tone": "energetic",
    "style": "cinematic",
    "narrative_structure": "hook, product in action, call to action",
    "target_audience": "urban runners",
    "key_themes": ["speed", "night city"],
    "key_messages": ["Run the city at night."],
    "visual_elements": [{"name": "running shoes", "importance": 0.9}],
    "color_mood": "cool, neon blues and magentas",
    "pacing": "fast",
    "call_to_action": {"text": "Shop Acme now", "placement": "end"},
}


def completion(
    content: str | None = None, *, refusal: str | None = None, model: str = "gpt-fake"
) -> dict[str, Any]:
    """A chat.completion body whose first choice carries ``content`` (or a refusal)."""
    return {
        "id": f"chatcmpl-{time.time_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "logprobs": None,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }


def error_body(message: str, kind: str = "server_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class FakeOpenAI:
    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.default_result: dict[str, Any] = dict(VALID_RESULT)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- scripting -------------------------------------------------------------------------------

    def push(self, status: int = 200, body: Any = None, headers: dict[str, str] | None = None) -> None:
        """Queue one reply; ``body`` None with 200 means the default success."""
        self.replies.append(Reply(status, body, dict(headers or {})))

    def push_content(self, content: str) -> None:
        """Queue a 200 whose message content is ``content`` verbatim (e.g. broken JSON)."""
        self.push(200, completion(content))

    def push_refusal(self, text: str = "I can't help with that.") -> None:
        self.push(200, completion(None, refusal=text))

    def push_error(self, status: int, headers: dict[str, str] | None = None, times: int = 1) -> None:
        for _ in range(times):
            self.push(status, error_body(f"fake error {status}"), headers)

    def reset(self) -> None:
        self.replies.clear()
        self.requests.clear()
        self.default_result = dict(VALID_RESULT)

    # -- server ----------------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        reply = self.replies.popleft() if self.replies else Reply()
        payload = reply.body
        if payload is None and reply.status == 200:
            payload = completion(json.dumps(self.default_result), model=body.get("model", "gpt-fake"))
        return web.json_response(payload, status=reply.status, headers=reply.headers)

    async def start(self) -> "FakeOpenAI":
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner, self.port = await loopback.serve(app)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
