"""``POST /api/v1/estimates``: the plan and the price of a request, without generating anything.

The arithmetic lives in :mod:`reelstream.estimates` (the CLI's ``replay --force`` prints the same
estimate); it is re-exported here for the gateway's callers.
"""

from aiohttp import web

from gateway.body import json_body
from gateway.deps import get_deps
from gateway.errors import json_response, validation_error
from reelstream import finishing
from reelstream.estimates import (
    LOCAL_MODEL,
    MODEL_COSTS,
    UNKNOWN_MODEL_COST,
    ModelCost,
    configured_model,
    estimate,
    plan,
)
from schemas.api import GenerationRequest

__all__ = [
    "LOCAL_MODEL",
    "MODEL_COSTS",
    "UNKNOWN_MODEL_COST",
    "ModelCost",
    "configured_model",
    "create_estimate",
    "estimate",
    "plan",
    "routes",
]

routes = web.RouteTableDef()


@routes.post("/api/v1/estimates")
async def create_estimate(request: web.Request) -> web.Response:
    req = await json_body(request, GenerationRequest)
    if (unfit := await finishing.unfit_disclaimer(req)) is not None:
        raise validation_error("brand.guidelines.required_disclaimer", unfit)
    return json_response(estimate(req, get_deps(request).settings))
