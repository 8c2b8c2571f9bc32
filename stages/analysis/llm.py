"""The OpenAI analyzer: structured output from an OpenAI-compatible model, cached, with offline fallback.

* No API key configured: the offline analyzer answers (``fallback_reason`` stays null).
* A cached answer for the same input and model is returned without calling the model (never pay twice).
* Throttling and provider outages (429, 5xx, connection errors, timeouts) are retried with a capped
  exponential backoff that honours ``Retry-After``; at most :data:`MAX_ATTEMPTS` calls in all.
* Anything else that keeps the model from answering (invalid output, a refusal, retries exhausted, a
  4xx) falls back to the offline analyzer with a short ``fallback_reason`` (never a secret, never the
  provider's message text). Fallbacks are not cached: a later replay may get the model's answer.
"""

import asyncio
import email.utils
import hashlib
import json
import logging
import random
import time
from typing import Any

import asyncpg
import openai
import pydantic

from reelstream.settings import Settings
from schemas.api import Analysis, AnalysisResult, GenerationRequest
from stages.analysis.offline import analyze_offline, to_analysis

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 4
BASE_DELAY = 0.5
MAX_DELAY = 8.0
#: A ``Retry-After`` longer than this is capped: past it the offline analyzer answers instead.
MAX_RETRY_AFTER = 20.0
REQUEST_TIMEOUT = 30.0
MAX_REASON_CHARS = 200

SYSTEM_PROMPT = (
    "You are the creative director of an advertising agency, planning a short video ad. "
    "Given the client's prompt and, when present, the brand kit and the ad's format, analyse the ad: "
    "its tone, visual style, narrative structure (e.g. hook, development, call to action), target "
    "audience, key themes, key messages (short, on-brand sentences), the visual elements to show with "
    "their importance from 0 to 1, the colour mood (start with warm, cool or neutral; follow the brand "
    "palette when there is one), the pacing (slow, moderate or fast, fitting the duration) and the call "
    "to action with its placement. Respect the brand guidelines: never use words the brand avoids. "
    "If the client gives a call-to-action text, use it verbatim. Answer in the language of the prompt."
)

_clients: dict[tuple[str, str | None], openai.AsyncOpenAI] = {}


def client_for(api_key: str, base_url: str | None) -> openai.AsyncOpenAI:
    """One client per (key, base URL) per process: its connection pool is reused across calls."""
    key = (api_key, base_url)
    client = _clients.get(key)
    if client is None:
        client = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=REQUEST_TIMEOUT, max_retries=0
        )
        _clients[key] = client
    return client


def model_input(request: GenerationRequest) -> dict[str, Any]:
    """What the model is told about the request (and so, with the model name, what the cache keys on)."""
    return {
        "prompt": request.prompt,
        "brand": request.brand.model_dump(mode="json") if request.brand is not None else None,
        "duration_seconds": request.duration_seconds,
        "aspect_ratio": request.aspect_ratio,
        "include_cta": request.options.include_cta,
        "cta_text": request.options.cta_text,
    }


def cache_key(request: GenerationRequest, model: str) -> str:
    """sha256 of the canonical JSON of the model's input and the model name."""
    canonical = json.dumps(
        {"model": model, "input": model_input(request)},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


async def _cached(conn: asyncpg.Pool | asyncpg.Connection, key: str) -> Analysis | None:
    # ``::text`` both ways: independent of whether the connection has a jsonb codec installed.
    raw = await conn.fetchval("SELECT analysis::text FROM analysis_cache WHERE cache_key = $1", key)
    if raw is None:
        return None
    try:
        return Analysis.model_validate_json(raw)
    except pydantic.ValidationError:
        log.warning("analysis cache entry %s no longer matches the schema; ignoring it", key[:12])
        return None


async def _store(conn: asyncpg.Pool | asyncpg.Connection, key: str, analysis: Analysis) -> None:
    await conn.execute(
        "INSERT INTO analysis_cache (cache_key, analysis) VALUES ($1, $2::text::jsonb)"
        " ON CONFLICT (cache_key) DO NOTHING",
        key,
        analysis.model_dump_json(),
    )


def _retry_after(exc: openai.APIStatusError) -> float | None:
    headers = exc.response.headers
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return float(value) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    parsed = email.utils.parsedate_to_datetime(value) if value else None
    if parsed is None:
        return None
    return parsed.timestamp() - time.time()


def _delay(attempt: int, exc: Exception) -> float:
    """Backoff before retry number ``attempt`` (1-based): Retry-After when given, else capped exponential."""
    if isinstance(exc, openai.APIStatusError):
        try:
            hinted = _retry_after(exc)
        except (TypeError, ValueError, OverflowError):
            hinted = None
        if hinted is not None:
            return max(0.0, min(hinted, MAX_RETRY_AFTER))
    return min(MAX_DELAY, BASE_DELAY * 2.0 ** (attempt - 1)) * random.uniform(0.8, 1.2)


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, openai.RateLimitError | openai.APIConnectionError):  # includes APITimeoutError
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500


def _describe(exc: Exception) -> str:
    """Short and secret-free: the error class and status, never the provider's message text."""
    if isinstance(exc, openai.APIStatusError):
        return f"{type(exc).__name__} (HTTP {exc.status_code})"
    return type(exc).__name__


def _validation_summary(exc: pydantic.ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    if not errors:
        return "invalid output"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "output"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('type', 'invalid')}{more}"


class _Fallback(Exception):
    """The model could not answer; the message is the fallback reason."""


async def _call_model(client: openai.AsyncOpenAI, model: str, request: GenerationRequest) -> AnalysisResult:
    messages: list[Any] = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": json.dumps(model_input(request), ensure_ascii=False)},
    ]
    attempt = 0
    while True:
        attempt += 1
        try:
            completion = await client.chat.completions.parse(
                model=model, messages=messages, response_format=AnalysisResult
            )
        except pydantic.ValidationError as exc:
            raise _Fallback(f"model output failed validation: {_validation_summary(exc)}") from exc
        except json.JSONDecodeError as exc:
            raise _Fallback("model output failed validation: invalid JSON") from exc
        except (openai.LengthFinishReasonError, openai.ContentFilterFinishReasonError) as exc:
            raise _Fallback(f"model output incomplete: {type(exc).__name__}") from exc
        except openai.APIError as exc:
            if not _retryable(exc):
                raise _Fallback(f"openai rejected the request: {_describe(exc)}") from exc
            if attempt >= MAX_ATTEMPTS:
                raise _Fallback(f"openai unavailable: {_describe(exc)} after {attempt} attempts") from exc
            delay = _delay(attempt, exc)
            log.warning(
                "openai call failed (%s), attempt %d/%d; retrying in %.2fs",
                _describe(exc),
                attempt,
                MAX_ATTEMPTS,
                delay,
            )
            await asyncio.sleep(delay)
            continue
        if not completion.choices:
            raise _Fallback("model returned no choices")
        message = completion.choices[0].message
        if message.refusal:
            raise _Fallback("model refused the request")
        if message.parsed is None:
            raise _Fallback("model returned no structured output")
        return message.parsed


async def analyze(
    request: GenerationRequest, settings: Settings, conn: asyncpg.Pool | asyncpg.Connection
) -> Analysis:
    """The analysis of ``request``: by the configured model when there is one, else offline.

    Pass the pool, not a connection held across the call: the model may take a while to answer.
    """
    if settings.openai_api_key is None:
        return analyze_offline(request)
    key = cache_key(request, settings.openai_model)
    hit = await _cached(conn, key)
    if hit is not None:
        log.info("analysis cache hit %s", key[:12])
        return hit
    client = client_for(settings.openai_api_key.get_secret_value(), settings.openai_base_url)
    try:
        result = await _call_model(client, settings.openai_model, request)
    except _Fallback as exc:
        reason = str(exc)[:MAX_REASON_CHARS]
        log.warning("openai analysis fell back to offline: %s", reason)
        return analyze_offline(request, fallback_reason=reason)
    if request.options.cta_text:
        # The client's own words win over the model's paraphrase, as in the offline analyzer.
        result = result.model_copy(
            update={
                "call_to_action": result.call_to_action.model_copy(update={"text": request.options.cta_text})
            }
        )
    analysis = to_analysis(result, request, source="openai")
    await _store(conn, key, analysis)
    return analysis
