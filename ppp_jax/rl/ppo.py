"""PPO mini-batches and epochs: several optimizer updates on one rollout batch.

verl's actor update, in our terms: the rollout batch of R rows is split into K mini-batches
(`rl.ppo_mini_batches`, verl's train_batch_size / ppo_mini_batch_size) and passed over E times
(`rl.ppo_epochs`); each mini-batch is one call of the train step, i.e. one optimizer update whose
loss is aggregated over that mini-batch alone (token-mean: 1 / its loss tokens; seq-mean modes:
1 / its sequences), micro-batched inside the step as before. π_old — the log-probs of the
weights that sampled the episodes — is fixed for all K·E updates: recomputed by the trainer once
before the first update (`make_logprob_fn`, the step's micro-batch size, sharded like the step),
or taken from the sampler (`rl.old_logprobs: sampler`). So the first update of the first epoch
has ratio 1 (up to the two programs' float32 rounding) and the later ones do not, which is where
DAPO's clip-higher and dual-clip act.

With K = E = 1 nothing here runs: the trainer calls the step on the whole batch with π_old =
stop_gradient(π), exactly the on-policy update.

Row order: with `rl.ppo_shuffle` (and K > 1) each epoch permutes the rows with a generator seeded
from the PPP step's seed, so a resumed run draws the same mini-batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ppp_jax.rl.batch import TokenBatch
from ppp_jax.rl.train_step import batch_sharding

# How the per-update metrics of one PPP step are combined into the step's metrics: most are
# means over the K·E updates; these are the state after the last update or a count.
_LAST = ("learning_rate", "num_skipped")
_SUM = ("skipped",)


def mini_batch_rows(
    num_rows: int, mini_batches: int, epochs: int, *, seed: int, shuffle: bool
) -> np.ndarray:
    """int32 [E, K, num_rows // K]: the rows of update (epoch e, mini-batch k).

    Without shuffling (or with K = 1, where the order cannot matter) mini-batch k is the k-th
    contiguous block of rows; with shuffling each epoch is a fresh permutation drawn from
    `np.random.default_rng([seed, epoch])`.
    """
    if num_rows % mini_batches:
        raise ValueError(
            f"batch rows {num_rows} are not divisible by rl.ppo_mini_batches {mini_batches}"
        )
    size = num_rows // mini_batches
    orders = []
    for epoch in range(epochs):
        if shuffle and mini_batches > 1:
            order = np.random.default_rng([seed, epoch]).permutation(num_rows)
        else:
            order = np.arange(num_rows)
        orders.append(order.reshape(mini_batches, size))
    return np.stack(orders).astype(np.int32)


def make_row_selector(mesh: Mesh | None) -> Callable[[TokenBatch, jax.Array], TokenBatch]:
    """A jitted `(batch [R, T], rows int32 [r]) -> batch [r, T]` gathering `rows`, placed with
    the step's batch sharding (rows over ("data", "fsdp")) when a mesh is given. One compiled
    program serves every mini-batch (the row indices are an argument, not a constant)."""

    def select(batch: TokenBatch, rows: jax.Array) -> TokenBatch:
        return jax.tree.map(lambda x: jnp.take(x, rows, axis=0), batch)

    if mesh is None:
        return jax.jit(select)
    return jax.jit(select, out_shardings=batch_sharding(mesh))


def combine_update_metrics(per_update: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The step's metrics from its K·E updates' (host floats): the mean over updates, except
    learning_rate and num_skipped (after the last update) and skipped (a count). Adds
    `ppo_updates` and, when there are several updates, `ratio_last` / `clipfrac_high_last` /
    `clipfrac_low_last` (the last update, where the policy has moved furthest from π_old)."""
    if not per_update:
        raise ValueError("no update metrics to combine")
    out: dict[str, float] = {}
    for key in per_update[0]:
        values = [float(m[key]) for m in per_update]
        if key in _LAST:
            out[key] = values[-1]
        elif key in _SUM:
            out[key] = float(sum(values))
        else:
            out[key] = float(np.mean(values))
    out["ppo_updates"] = float(len(per_update))
    if len(per_update) > 1:
        for key in ("ratio", "clipfrac_high", "clipfrac_low"):
            if key in per_update[-1]:
                out[f"{key}_last"] = float(per_update[-1][key])
    return out


def ppo_update(
    train_step: Callable[..., tuple[Any, dict[str, jax.Array]]],
    state: Any,
    batch: TokenBatch,
    rows: np.ndarray,
    *,
    select_rows: Callable[[TokenBatch, jax.Array], TokenBatch],
    old_logprob_fn: Callable[[Any, TokenBatch], jax.Array] | None = None,
    ref_params: Any = None,
) -> tuple[Any, list[dict[str, jax.Array]]]:
    """K·E updates of `state` on `batch`; returns (new state, the per-update metrics).

    train_step: `(state, batch, ref_params=None) -> (state, metrics)` (`make_train_step`).
    batch: the rollout batch [R, T]; its `old_logprobs` are used as π_old when set.
    rows: int32 [E, K, R/K] from `mini_batch_rows`.
    old_logprob_fn: `(params, batch) -> logp [R, T]` (`make_logprob_fn`); when given, π_old is
      computed with it from `state.params` before the first update and overrides the batch's.
    ref_params: passed to every update (KL to a reference policy).
    """
    epochs, mini_batches, _ = rows.shape
    kwargs = {} if ref_params is None else {"ref_params": ref_params}
    if epochs == 1 and mini_batches == 1:
        new, metrics = train_step(state, batch, **kwargs)
        return new, [metrics]
    if old_logprob_fn is not None:
        batch = batch.with_old_logprobs(old_logprob_fn(state.params, batch))
    elif batch.old_logprobs is None:
        raise ValueError(
            "several PPO updates per batch need π_old: pass old_logprob_fn or a batch with "
            "old_logprobs (rl.old_logprobs: sampler)"
        )
    per_update = []
    for epoch in range(epochs):
        for k in range(mini_batches):
            mini = select_rows(batch, rows[epoch, k])  # numpy: replicated on every process
            state, metrics = train_step(state, mini, **kwargs)
            per_update.append(metrics)
    return state, per_update
