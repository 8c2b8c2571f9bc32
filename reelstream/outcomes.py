"""One decision about outcomes, used by the clips and completion stages alike.

A prediction's outcome is *usable* when it succeeded with an http(s) output URL; anything else (failed,
canceled, aborted, or ``succeeded`` with a null or unusable output) fails that attempt, and the clips
stage resubmits the clip while attempts remain.

Fetching a usable output can still go wrong, in two kinds of ways:

* *transient*: the output host answers 5xx/429/408, DNS does not resolve for a moment, the connection
  drops or the payload is cut short, our own storage is unreachable. Replicate keeps outputs for an
  hour, so these are retried (by the stage runtime, within its transient budget) and never fail the
  generation or cancel what was paid for;
* *permanent*: any other 4xx, not a video, too large, refused by the SSRF guard. The attempt failed.
"""

from urllib.parse import urlsplit

import aiohttp
from botocore.exceptions import BotoCoreError
from botocore.exceptions import ClientError as S3ClientError

from reelstream.storage import TransientStorageError
from schemas.events import Prediction


def problem(prediction: Prediction) -> str | None:
    """Why this terminal outcome cannot become a clip, or None when it can (usable output URL)."""
    if prediction.status != "succeeded":
        return str(prediction.error or f"prediction {prediction.status}")[:1000]
    url = prediction.output_url
    if url is None:
        return "prediction succeeded without an output"
    if urlsplit(url).scheme not in ("http", "https"):
        return "prediction succeeded with an output that is not an http(s) URL"
    return None


def is_transient(exc: BaseException) -> bool:
    """True when fetching or storing an output failed for a reason that goes away by itself."""
    if isinstance(exc, TransientStorageError | TimeoutError | BotoCoreError):
        return True
    if isinstance(exc, S3ClientError):
        code = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return isinstance(code, int) and (code >= 500 or code in (408, 429))
    if isinstance(exc, aiohttp.ClientResponseError):
        return exc.status >= 500 or exc.status in (408, 425, 429)
    return isinstance(exc, aiohttp.ClientError | OSError)
