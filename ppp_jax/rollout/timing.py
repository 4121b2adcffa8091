"""A user simulator wrapper that times its calls (the `time/simulator` metric)."""

from __future__ import annotations

import time
from typing import Any

from ppp_jax.envs.simulator import UserSimulator


class TimedSimulator:
    """Wraps a user simulator and adds up the time its answers take (summed over concurrent
    calls, so it can exceed the wall time of the rollout)."""

    def __init__(self, inner: UserSimulator):
        self.inner = inner
        self.reset()

    def reset(self) -> None:
        """Zeroes the totals (at the start of each rollout round)."""
        self.seconds = 0.0
        self.calls = 0

    async def answer(self, ctx: Any, question: str) -> Any:
        t0 = time.perf_counter()
        try:
            return await self.inner.answer(ctx, question)
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1
