"""The train step: one pure, jit-compiled, sharded function

    (TrainState, TokenBatch, ref_params | None) -> (TrainState, metrics)

What one call does, for a global batch of B rows split into M micro-batches:
  1. D = the aggregation denominator of the whole batch (`ppp_jax.rl.losses.agg_denominator`:
     loss tokens for token-mean, non-empty sequences for the seq-mean modes).
  2. `lax.scan` over the M micro-batches (row m, m+M, m+2M, ... form micro-batch m, so each
     data-parallel shard's rows stay on it): forward the policy (`model.hidden`, then the chunked
     `token_logprobs` at the sampling temperature τ), compute the micro-batch's unreduced objective
     Σ a_t·o_t (`ppp_jax.rl.losses.objective_sums`), and add its gradient to a float32 accumulator.
     When β > 0 the reference policy is forwarded too (no gradient); when β = 0 there is no
     reference argument at all and no reference computation in the program.
  3. g = accumulated gradient / D — exactly the gradient of the global-batch loss, whatever M.
  4. Non-finite guard: if ‖g‖ is not finite, params and optimizer state are returned unchanged
     and `skipped` is incremented; otherwise optax (global-norm clip → AdamW with schedule).

With `cfg.freeze` (`FreezeConfig`), the bottom K layers and/or the embeddings get no gradient
and no update (the model runs them outside autodiff; their updates are zeroed after AdamW).

The model is split once into (graphdef, params); params travel as a jit argument and are merged
inside, so new params never recompile. Remat is the model config's (`ModelConfig.remat`), applied
per decoder layer inside `model.hidden`. The logits are never materialized whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ppp_jax.config.rl import FreezeConfig, RLConfig
from ppp_jax.model.logprobs import token_logprobs
from ppp_jax.rl.batch import TokenBatch
from ppp_jax.rl.losses import agg_denominator, combine_stats, finalize_metrics, objective_sums
from ppp_jax.rl.optim import learning_rate_schedule, make_optimizer

BATCH_AXES = ("data", "fsdp")  # mesh axes the batch rows are split over


@struct.dataclass
class TrainState:
    """Everything the step updates. A pytree (checkpointable as is).

    params:    the policy's `nnx.Param` state (from `split_model`).
    opt_state: the optax state of `make_optimizer(cfg.optim)`.
    step:      int32 [], updates attempted (applied + skipped).
    skipped:   int32 [], updates skipped because the gradient was not finite.
    """

    params: Any
    opt_state: Any
    step: jax.Array
    skipped: jax.Array


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, params) of a model whose state is all `nnx.Param` (raises otherwise)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise ValueError(
            "the model holds non-Param state (e.g. RNG or batch statistics); the train step "
            "updates only nnx.Param"
        )
    return graphdef, params


def init_train_state(params: nnx.State, optimizer: optax.GradientTransformation) -> TrainState:
    """A fresh TrainState (optimizer state initialized from `params`)."""
    return TrainState(
        params=params,
        opt_state=optimizer.init(params),
        step=jnp.zeros((), jnp.int32),
        skipped=jnp.zeros((), jnp.int32),
    )


def policy_logprobs(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    batch: TokenBatch,
    *,
    temperature: float,
    chunk_size: int,
    frozen_layers: int = 0,
) -> tuple[jax.Array, jax.Array]:
    """(logp, entropy), float32 [b, T], of batch.targets under the model (graphdef, params);
    `frozen_layers` as in `model.hidden` (same values, no gradient below the top layers)."""
    model = nnx.merge(graphdef, params)
    hidden, _ = model.hidden(batch.tokens, batch.positions, batch.segment_ids,
                             frozen_layers=frozen_layers)
    return token_logprobs(model, hidden, batch.targets, temperature=temperature, chunk_size=chunk_size)


def make_logprob_fn(
    graphdef: nnx.GraphDef,
    cfg: RLConfig,
    *,
    num_micro: int | None = None,
    mesh: Mesh | None = None,
) -> Callable[[nnx.State, TokenBatch], jax.Array]:
    """A jitted `(params, batch) -> logp float32 [B, T]` (no gradient), micro-batched like the
    step (`lax.map` over `num_micro` strided micro-batches, default `cfg.num_micro_batches`) so
    its memory matches the step's forward pass.

    Use it for π_old before several updates on one batch (`batch.with_old_logprobs(...)`), or for
    precomputed reference log-probs. With `mesh`, micro-batch rows are constrained over
    ("data", "fsdp") as in the step and the result is returned with the batch's sharding.
    """
    m = cfg.num_micro_batches if num_micro is None else num_micro

    def fn(params, batch):
        micro = _constrain_rows(split_micro_batches(batch, m), mesh, row_axis=1)
        logp = jax.lax.map(
            lambda mb: policy_logprobs(
                graphdef,
                params,
                _constrain_rows(mb, mesh, row_axis=0),
                temperature=cfg.loss.temperature,
                chunk_size=cfg.logprob_chunk_size,
            )[0],
            micro,
        )  # [M, B/M, T]
        return logp.swapaxes(0, 1).reshape(batch.tokens.shape)

    if mesh is None:
        return jax.jit(fn)
    return jax.jit(fn, out_shardings=batch_sharding(mesh))


def split_micro_batches(batch: TokenBatch, num_micro: int) -> TokenBatch:
    """[B, T] -> [M, B/M, T]; micro-batch m holds rows m, m+M, m+2M, ... (strided, so that a
    batch sharded in contiguous row blocks over devices keeps each device's rows local)."""
    b = batch.tokens.shape[0]
    if b % num_micro:
        raise ValueError(f"batch rows {b} are not divisible by num_micro_batches {num_micro}")

    def split(x):
        return x.reshape(b // num_micro, num_micro, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def _constrain_rows(tree: Any, mesh: Mesh | None, row_axis: int) -> Any:
    if mesh is None:
        return tree
    spec = PartitionSpec(*([None] * row_axis), BATCH_AXES)
    sharding = NamedSharding(mesh, spec)
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


_EMBEDDING_ROOTS = ("embed", "lm_head")


def _root(path) -> str:
    key = path[0]
    return str(getattr(key, "key", getattr(key, "name", key)))


def stop_frozen_gradients(params: nnx.State, freeze: FreezeConfig) -> nnx.State:
    """`params` with `stop_gradient` on the embedding leaves when `freeze.embeddings` (the
    frozen bottom layers are cut inside the model, `hidden(frozen_layers=K)`)."""
    if not freeze.embeddings:
        return params
    return jax.tree_util.tree_map_with_path(
        lambda path, p: jax.lax.stop_gradient(p) if _root(path) in _EMBEDDING_ROOTS else p, params)


def zero_frozen_updates(updates: nnx.State, freeze: FreezeConfig) -> nnx.State:
    """`updates` with the frozen entries set to 0: layer slices [:K] of the stacked layer leaves
    ([L, ...]) and, with `freeze.embeddings`, the embedding leaves. Their gradients are already 0;
    this also cancels AdamW's weight decay on them, so frozen values stay bit-identical."""
    if not freeze.active:
        return updates
    k = freeze.bottom_layers

    def mask(path, u):
        root = _root(path)
        if root in _EMBEDDING_ROOTS and freeze.embeddings:
            return jnp.zeros_like(u)
        if root == "layers" and k:
            keep = (jnp.arange(u.shape[0]) >= k).reshape((-1,) + (1,) * (u.ndim - 1))
            return jnp.where(keep, u, jnp.zeros_like(u))
        return u

    return jax.tree_util.tree_map_with_path(mask, updates)


def check_freeze(freeze: FreezeConfig, params: nnx.State) -> None:
    """Raises ValueError naming `rl.freeze.bottom_layers` unless it leaves a layer to train."""
    stacked = [p for path, p in jax.tree_util.tree_leaves_with_path(params) if _root(path) == "layers"]
    num_layers = stacked[0].shape[0] if stacked else 0
    if freeze.bottom_layers and freeze.bottom_layers >= num_layers:
        raise ValueError(f"rl.freeze.bottom_layers = {freeze.bottom_layers} leaves nothing to "
                         f"train: the model has {num_layers} layers (use 0..{num_layers - 1})")


def make_train_step(
    graphdef: nnx.GraphDef,
    cfg: RLConfig,
    optimizer: optax.GradientTransformation | None = None,
    *,
    mesh: Mesh | None = None,
    state_shardings: TrainState | None = None,
    donate: bool = True,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted step `step(state, batch, ref_params=None) -> (state, metrics)`.

    graphdef: the policy's graph (from `split_model`); static, part of the compiled program.
    cfg: the RL config (loss, optimizer, micro-batches, log-prob chunk).
    optimizer: defaults to `make_optimizer(cfg.optim)`; must be the one the state was built with.
    mesh: when given, micro-batches are constrained to rows split over ("data", "fsdp"); place
      the state and batch with `shard_train_state` / `shard_batch` before calling.
    state_shardings: when given (with mesh; from `train_state_shardings`), the returned state is
      pinned to these shardings, so it stays laid out as it came in, step after step.
    ref_params: the reference policy's params (same graphdef), required iff cfg.loss.kl_coef > 0
      and refused otherwise, so with β = 0 no reference model exists anywhere in the step.

    metrics (float32 scalars): loss, pg_loss, kl (β>0), entropy, clipfrac_low, clipfrac_high,
    dual_clipfrac, ppo_kl, ratio, tis_weight / tis_capped_frac (TIS on), logp_abs_diff,
    logp_abs_diff_max, logp_pearson (sampler vs trainer), grad_norm (before clipping),
    learning_rate, skipped (1.0 if this update was skipped), num_skipped, loss_tokens,
    agg_denominator.
    """
    optimizer = make_optimizer(cfg.optim) if optimizer is None else optimizer
    schedule = learning_rate_schedule(cfg.optim)
    lcfg = cfg.loss
    num_micro = cfg.num_micro_batches
    freeze = cfg.freeze
    logprobs = lambda params, mb, frozen=0: policy_logprobs(  # noqa: E731
        graphdef, params, mb, temperature=lcfg.temperature, chunk_size=cfg.logprob_chunk_size,
        frozen_layers=frozen,
    )

    def step(state: TrainState, batch: TokenBatch, ref_params: nnx.State | None = None):
        if lcfg.use_reference and ref_params is None:
            raise ValueError(f"kl_coef={lcfg.kl_coef} > 0 needs ref_params")
        if not lcfg.use_reference and ref_params is not None:
            raise ValueError("kl_coef == 0: pass no ref_params (no reference model is run at β = 0)")
        check_freeze(freeze, state.params)
        denom = agg_denominator(batch.loss_mask, batch.segment_ids, lcfg.agg_mode, lcfg.loss_scale_factor)
        micro = _constrain_rows(split_micro_batches(batch, num_micro), mesh, row_axis=1)
        m = batch.loss_mask.astype(jnp.float32)
        shift = jnp.sum(m * batch.sampler_logprobs) / jnp.maximum(jnp.sum(m), 1.0)

        def micro_objective(params, mb: TokenBatch, ref_logp):
            logp, entropy = logprobs(stop_frozen_gradients(params, freeze), mb,
                                     freeze.bottom_layers)
            return objective_sums(
                logp,
                entropy,
                loss_mask=mb.loss_mask,
                advantages=mb.advantages,
                segment_ids=mb.segment_ids,
                old_logp=mb.old_logprobs,
                sampler_logp=mb.sampler_logprobs,
                ref_logp=ref_logp,
                cfg=lcfg,
                stat_shift=shift,
            )

        def body(carry, mb: TokenBatch):
            grads_acc, stats_acc, obj_acc = carry
            mb = _constrain_rows(mb, mesh, row_axis=0)
            ref_logp = None
            if ref_params is not None:
                ref_logp = jax.lax.stop_gradient(logprobs(ref_params, mb)[0])

            def f(params):
                obj, sums, maxes = micro_objective(params, mb, ref_logp)
                return obj, (sums, maxes)

            (obj, stats), grads = jax.value_and_grad(f, has_aux=True)(state.params)
            grads_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_acc, grads)
            return (grads_acc, combine_stats(stats_acc, stats), obj_acc + obj), None

        # Shapes of the statistics, for the scan carry's initial value.
        first = jax.tree.map(lambda x: x[0], micro)
        ref0 = None if ref_params is None else jnp.zeros(first.tokens.shape, jnp.float32)
        stats_shape = jax.eval_shape(lambda p, mb: micro_objective(p, mb, ref0)[1:], state.params, first)
        stats0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), stats_shape)
        grads0 = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
        (grads, (sums, maxes), obj_sum), _ = jax.lax.scan(
            body, (grads0, stats0, jnp.zeros((), jnp.float32)), micro
        )

        safe_denom = jnp.maximum(denom, 1e-12)
        grads = jax.tree.map(lambda g: g / safe_denom, grads)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(grad_norm)

        def apply(_):
            updates, new_opt = optimizer.update(grads, state.opt_state, state.params)
            updates = zero_frozen_updates(updates, freeze)
            return optax.apply_updates(state.params, updates), new_opt

        def skip(_):
            return state.params, state.opt_state

        new_params, new_opt = jax.lax.cond(finite, apply, skip, None)
        skipped_now = (~finite).astype(jnp.int32)
        new_state = TrainState(
            params=new_params,
            opt_state=new_opt,
            step=state.step + 1,
            skipped=state.skipped + skipped_now,
        )
        metrics = finalize_metrics(sums, maxes, denom)
        metrics["loss"] = obj_sum / safe_denom
        metrics["grad_norm"] = grad_norm
        metrics["learning_rate"] = jnp.asarray(schedule(state.step - state.skipped), jnp.float32)
        metrics["skipped"] = skipped_now.astype(jnp.float32)
        metrics["num_skipped"] = new_state.skipped.astype(jnp.float32)
        return new_state, metrics

    donate_argnums = (0,) if donate else ()
    if state_shardings is None:
        return jax.jit(step, donate_argnums=donate_argnums)
    if mesh is None:
        raise ValueError("state_shardings needs the mesh")
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(step, donate_argnums=donate_argnums, out_shardings=(state_shardings, replicated))


# ----------------------------------------------------------------------------------------------
# Placement on a mesh
# ----------------------------------------------------------------------------------------------


def train_state_shardings(
    state: TrainState, param_shardings: nnx.State, optimizer: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """A TrainState of NamedShardings: params as `param_shardings` (e.g. from
    `ppp_jax.model.sharding.state_shardings`), optimizer moments like their params, the rest
    (counters) replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    opt = optax.tree_map_params(
        optimizer,
        lambda _, s: s,
        state.opt_state,
        param_shardings,
        transform_non_params=lambda _: replicated,
    )
    return TrainState(params=param_shardings, opt_state=opt, step=replicated, skipped=replicated)


def shard_train_state(state: TrainState, shardings: TrainState) -> TrainState:
    """`jax.device_put` of every leaf onto its sharding."""
    return jax.device_put(state, shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows over ("data", "fsdp"), tokens replicated: the placement of every [B, T] batch field."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def shard_batch(batch: TokenBatch, mesh: Mesh) -> TokenBatch:
    """Places every field of `batch` with `batch_sharding(mesh)` (B must divide by data×fsdp)."""
    return jax.device_put(batch, batch_sharding(mesh))
