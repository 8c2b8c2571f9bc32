"""How an ad's seconds are shared out between scenes and cut into provider-sized clips.

Pure arithmetic used by the planning stage and by the gateway's estimates, so an estimate and the real
run plan the same clips. Time is counted in whole milliseconds so a scene's clips add up exactly.
"""

import math
from collections.abc import Sequence

from schemas.api import SceneKind

#: Share of the ad per scene kind, with and without a call-to-action scene.
WEIGHTS_WITH_CTA: tuple[tuple[SceneKind, float], ...] = (("intro", 0.2), ("development", 0.5), ("cta", 0.3))
WEIGHTS_WITHOUT_CTA: tuple[tuple[SceneKind, float], ...] = (("intro", 0.3), ("development", 0.7))
MS = 1000


def allocate_seconds(total: int, weights: Sequence[float]) -> list[int]:
    """Split ``total`` whole seconds by ``weights`` (largest remainder), each share at least 1 s.

    Ties in the remainders go to the earlier share, so the result is deterministic.
    """
    if total < len(weights):
        raise ValueError(f"{total} s cannot hold {len(weights)} scenes of at least 1 s")
    scale = sum(weights)
    quotas = [total * w / scale for w in weights]
    shares = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - shares[i]), i))
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    while min(shares) < 1:  # only for extreme weights: take from the largest share
        shares[shares.index(max(shares))] -= 1
        shares[shares.index(min(shares))] += 1
    return shares


def split_ms(total_ms: int, max_ms: int) -> list[int]:
    """Split a duration into as few pieces of at most ``max_ms`` as possible, as equal as possible.

    8 s with a 5 s maximum is 4 + 4, never 5 + 3: equal clips keep the pacing even. Leftover
    milliseconds go to the first pieces, one each, so the pieces add up exactly.
    """
    if max_ms <= 0:
        raise ValueError("the maximum clip length must be positive")
    count = max(1, math.ceil(total_ms / max_ms))
    base, extra = divmod(total_ms, count)
    return [base + 1 if i < extra else base for i in range(count)]
