"""The PPP trainer: wires data, engine, orchestrator, train step, checkpoints and metrics.

    cfg = load_run_config("configs/tiny_cpu.yaml")
    parts = build_parts(cfg)                 # tokenizer, model, tasks, domain, simulator
    trainer = PPPTrainer(cfg, parts)
    final = trainer.train()                  # resumes from <run>/checkpoints if present

One step (`PPPTrainer.step_fn`), in order:
  1. the rollout seed is drawn from the carried PRNG key (the only randomness of the step);
  2. the engine gets the current params if it does not have them yet (after a restore);
  3. the orchestrator rolls out G episodes per prompt, scores them, computes PPP rewards and
     advantages and assembles the token batch (`ppp_jax.rollout.orchestrator`);
  4. the jitted train step updates params and optimizer state (`ppp_jax.rl.train_step`): once
     on the whole batch, or `rl.ppo_mini_batches` × `rl.ppo_epochs` times on its mini-batches
     against a fixed π_old (`ppp_jax.rl.ppo`);
  5. the new params go to the engine (`Engine.update_params`, no recompilation).
A step whose rollout cannot build a batch (dynamic sampling hit `max_gen_batches`, a round
with no usable group, the data running out while refilling) is skipped and counted
(`rollout/steps_skipped`); when the data is exhausted the loop then ends cleanly.
Parallelism follows `cfg.sharding`: the mesh (`model.sharding.make_mesh`), params and optimizer
state laid out by its rules, batch rows over ("data", "fsdp") (rows a multiple of
num_micro_batches × data × fsdp).
The rollout engine follows `cfg.rollout.engine_layout`: "training" (default) one engine on the
training mesh and dtype; "sampling" the layout `ppp compile` compiles from the `engine:` section:
this process's devices split into replicas of N = `engine.mesh`'s tensor size, each its own
engine on {data: 1, fsdp: 1, tensor: N} with the weights in `engine.dtype` laid out by
`SAMPLING_RULES` (`make_engine_replicas`, `EngineReplicas`); every sync casts the params
and places them on every replica, and each episode runs on one replica chosen by its group
(`rollout.ReplicaEnginePolicy`). `trainer.engine` is the engine (or the `EngineReplicas`),
`trainer.engines` the list of engines.
The outer loop (`ppp_jax.train.loop.run_loop`) writes metrics.jsonl / TensorBoard and checkpoints
params, optimizer state, RNG and the data-iterator position, so a killed run resumes on the
same trajectory.

Several processes (multi-host; `ppp_jax.scale.distributed.initialize` before anything else): the
data pipeline gives process i the i-th contiguous block of each global batch of prompts, and
each process rolls out only those groups, on its own engine (a process-local copy of the params
on `distributed.local_mesh`, refreshed after every update by one collective reshard), so
episodes, simulator calls and tool calls are split by process and groups never straddle
processes (GRPO advantages are per group, hence per process; with `engine_layout: sampling` the local
copy is cast first, then placed on the process's own replicas). Each process assembles the token
rows of its own episodes; the global batch is made from them
(`jax.make_array_from_process_local_data`, rows padded to a common count and length). The
episodes' summaries (no tokens or messages) are exchanged so that every process computes the
step's metrics over all episodes in the single-process order: what process 0 logs are global
means and global drop/retry counters. DAPO dynamic sampling is single-process only for now.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ppp_jax.config import loader as cfgmod
from ppp_jax.config.data import DataConfig
from ppp_jax.config.run import RunConfig, engine_layout
from ppp_jax.model import sharding as shd
from ppp_jax.rl import dapo
from ppp_jax.rl.batch import TokenBatch
from ppp_jax.rl.optim import make_optimizer
from ppp_jax.rl.ppo import combine_update_metrics, make_row_selector, mini_batch_rows, ppo_update
from ppp_jax.rl.train_step import TrainState as StepState
from ppp_jax.rl.train_step import (
    batch_sharding,
    make_logprob_fn,
    make_train_step,
    shard_batch,
    shard_train_state,
    split_model,
    train_state_shardings,
)
from ppp_jax.rollout.orchestrator import RolloutOrchestrator, RolloutRoundEmpty
from ppp_jax.rollout.summaries import merge_summaries, summarize
from ppp_jax.scale import distributed
from ppp_jax.scale.compile_engine import sampling_model_config
from ppp_jax.train import loop
from ppp_jax.train.builders import Parts, make_engine, make_policy, task_rows
from ppp_jax.train.checkpointing import CheckpointManager, abstract_like
from ppp_jax.train.data import make_dataset
from ppp_jax.train.engine_replicas import EngineReplicas, cast_floating, make_engine_replicas
from ppp_jax.train.metrics import make_writer, throughput

log = logging.getLogger(__name__)


class DataExhausted(RuntimeError):
    """The prompt iterator ran out while a step was refilling its batch (finite epochs)."""


class PPPTrainer:
    """PPP RL on one run config (see the module docstring).

    Args:
      cfg: the run config.
      parts: tokenizer, model (initial policy), tasks, agent-side domain, simulator.
      engine: an engine over `parts.model` (built from `cfg.engine` when None); must be None
        with `rollout.engine_layout: sampling` (the trainer builds its replicas itself).
      run_dir: where metrics and checkpoints go (default `cfg.output_dir`).
    """

    def __init__(self, cfg: RunConfig, parts: Parts, *, engine: Any = None,
                 run_dir: str | Path | None = None):
        self.cfg = cfg
        self.parts = parts
        self.run_dir = Path(run_dir) if run_dir is not None else cfg.output_dir
        # The mesh and logical-axis rules of cfg.sharding: params (and with them the optimizer
        # moments) are laid out by the rules, batch rows over ("data", "fsdp").
        self.mesh = shd.make_mesh(cfg.sharding.mesh)
        self.rules = cfg.sharding.rules
        shd.shard_model(parts.model, self.mesh, self.rules)
        self.graphdef, self.init_params = split_model(parts.model)
        self.num_processes = jax.process_count()
        if self.num_processes > 1 and cfg.rl.dapo.dynamic_sampling:
            raise NotImplementedError(
                "rl.dapo.dynamic_sampling with several processes: the refill rounds would need "
                "to be agreed between processes; run it single-process or switch it off")
        # With several processes each runs its own engine on a local copy of the params.
        self.engine_mesh = distributed.local_mesh(self.mesh) if self.num_processes > 1 else None
        self.engine_param_shardings = (
            shd.state_shardings(self.init_params, self.engine_mesh, self.rules)
            if self.engine_mesh is not None else None)
        # engine_layout "sampling": per-replica engines in the engine dtype (EngineReplicas);
        # "training": one engine on the training mesh and dtype.
        layout = engine_layout(cfg)
        self.engine_dtype = (
            jnp.dtype(sampling_model_config(parts.model.config, layout.dtype).param_dtype)
            if layout.tensor != 0 else None)
        if engine is not None and layout.tensor != 0:
            raise ValueError("rollout.engine_layout=sampling: the trainer builds its own engine "
                             "replicas; pass engine=None (or use engine_layout: training to use "
                             "the given engine)")
        if engine is None:
            if layout.tensor != 0:
                engine = make_engine_replicas(cfg, parts.model.config,
                                              self._engine_params(self._cast_for_engine(
                                                  self.init_params)))
            else:
                model = parts.model
                if self.engine_mesh is not None:
                    model = nnx.merge(self.graphdef, self._engine_params(self.init_params))
                engine = make_engine(cfg, model)
        self.engine = engine
        # every engine the trainer syncs (the replicas, or the one engine)
        self.engines = list(engine.engines) if isinstance(engine, EngineReplicas) else [engine]
        self.policy = make_policy(cfg, self.engine, parts.tokenizer)
        self.optimizer = make_optimizer(cfg.rl.optim)
        self.param_shardings = shd.state_shardings(self.init_params, self.mesh, self.rules)
        self.state_shardings = train_state_shardings(
            self._abstract_train_state(), self.param_shardings, self.optimizer, self.mesh)
        # Not donated: the engine may hold the very same buffers after `update_params`.
        self.train_step = make_train_step(self.graphdef, cfg.rl, self.optimizer, mesh=self.mesh,
                                          state_shardings=self.state_shardings, donate=False)
        # PPO mini-batches (rl.ppo_mini_batches × rl.ppo_epochs updates per step, `rl.ppo`):
        # π_old is recomputed at the step's micro-batch size (M·K micro-batches of the batch).
        rl = cfg.rl
        self.select_rows = make_row_selector(self.mesh)
        self.old_logprob_fn = (
            make_logprob_fn(self.graphdef, rl, num_micro=rl.num_micro_batches * rl.ppo_mini_batches,
                            mesh=self.mesh)
            if rl.updates_per_step > 1 and rl.old_logprobs == "recompute" else None)
        train_tasks = [t for t in parts.tasks if t.split == "train"] or list(parts.tasks)
        if cfg.demo.num_train_tasks:
            train_tasks = train_tasks[: cfg.demo.num_train_tasks]
        self.train_tasks = train_tasks
        self.tasks = {t.task_id: t for t in parts.tasks}
        # Every micro-batch of every PPO mini-batch must split evenly over data × fsdp.
        dp = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        row_unit = cfg.rl.num_micro_batches * cfg.rl.ppo_mini_batches * dp
        rows_multiple = math.lcm(row_unit, cfg.rollout.rows_multiple)
        if self.num_processes > 1:
            # Each process assembles 1/P of the rows (rollout.rows_multiple counts global rows).
            nproc = self.num_processes
            if row_unit % nproc:
                raise ValueError(f"num_micro_batches × ppo_mini_batches × data × fsdp = {row_unit} "
                                 f"must be a multiple of the {nproc} processes")
            rm = cfg.rollout.rows_multiple
            rows_multiple = math.lcm(row_unit // nproc,
                                     rm // nproc if rm % nproc == 0 else rm)
        self.process_rows_multiple = rows_multiple
        self.orchestrator = RolloutOrchestrator(
            parts.domain, self.policy, parts.simulator, rl=cfg.rl, reward=cfg.reward,
            metrics=cfg.metrics, episode=cfg.rollout.episode, concurrency=cfg.rollout.concurrency,
            max_retries=cfg.rollout.max_episode_retries, row_len=cfg.rollout.row_len,
            pad_to_multiple=cfg.rollout.pad_to_multiple, rows_multiple=rows_multiple,
            pack=cfg.rollout.pack, drop_too_long=cfg.rollout.truncate_long,
            pad_token_id=cfg.model.build().pad_token_id)
        self.data_iter = None
        self.start_step = 0  # the step the last `train` call started after (resumed runs: > 0)
        self._engine_step = -1  # the step whose params the engine holds (-1: unknown, sync first)
        self.last_rollout = None

    @property
    def engine_step(self) -> int:
        """The training step whose params the rollout engine holds (-1 before the first sync);
        after `train` returns, the final step's."""
        return self._engine_step

    # -- state ------------------------------------------------------------------------------
    def _abstract_train_state(self) -> StepState:
        scalar = jax.ShapeDtypeStruct((), jnp.int32)
        return StepState(params=abstract_like(self.init_params),
                         opt_state=jax.eval_shape(self.optimizer.init, self.init_params),
                         step=scalar, skipped=scalar)

    def init_state(self) -> loop.LoopState:
        sh = self.state_shardings
        # the optimizer state is created directly in its shards (never whole on one device)
        opt_state = jax.jit(self.optimizer.init, out_shardings=sh.opt_state)(self.init_params)
        train = shard_train_state(
            StepState(params=self.init_params, opt_state=opt_state,
                      step=jnp.zeros((), jnp.int32), skipped=jnp.zeros((), jnp.int32)), sh)
        return loop.LoopState(step=0, train=train, rng=jax.random.key(self.cfg.seed))

    def _engine_params(self, params: Any) -> Any:
        """The params as the engine takes them: as they are with one process, else this
        process's local copy (a collective: every process calls it at the same point)."""
        if self.engine_param_shardings is None:
            return params
        return distributed.to_local(params, self.engine_param_shardings)

    def _cast_for_engine(self, params: Any) -> Any:
        """`params` in the replica engines' dtype (as they are without replicas). Cast before
        `_engine_params`, so that with several processes the copy to each process moves the
        engine dtype (half the bytes of float32 for bfloat16)."""
        return params if self.engine_dtype is None else cast_floating(params, self.engine_dtype)

    def _sync_engine(self, params: Any) -> None:
        """Gives `params` (the training params, on the training mesh) to the engine: to every
        replica, cast to the engine dtype and placed on its mesh, with `engine_layout: sampling`; else
        to the one engine as before. With several processes a collective (`_engine_params`)."""
        self.engine.update_params(self._engine_params(self._cast_for_engine(params)))

    def _global_batch(self, local: TokenBatch | None, shapes: Sequence[Any]) -> TokenBatch:
        """The global token batch from every process's own rows (`shapes`: every process's
        local [rows, T], None where it kept no episode). Rows are padded to a common count (a
        multiple of `process_rows_multiple`) and length; padding is segment 0, mask 0."""
        present = [sh for sh in shapes if sh is not None]
        row_len = max(sh[1] for sh in present)
        rows = max(sh[0] for sh in present)
        rows = -(-rows // self.process_rows_multiple) * self.process_rows_multiple
        nproc = self.num_processes
        sharding = batch_sharding(self.mesh)
        if distributed.rows_per_process(sharding, rows * nproc) != rows:
            raise ValueError(f"batch sharding {sharding} does not give each process {rows} rows")
        pad_id = self.orchestrator.pad_token_id
        out = {}
        for field in dataclasses.fields(TokenBatch):
            name = field.name
            x = None if local is None else getattr(local, name)
            if local is not None and x is None:
                out[name] = None
                continue
            if name == "old_logprobs" and local is None:
                out[name] = None  # the orchestrator never fills it
                continue
            dtype = np.int32 if name in ("tokens", "targets", "positions", "segment_ids") else np.float32
            fill = pad_id if name in ("tokens", "targets") else 0
            full = np.full((rows, row_len), fill, dtype)
            if x is not None:
                x = np.asarray(x)
                full[: x.shape[0], : x.shape[1]] = x
            out[name] = jax.make_array_from_process_local_data(sharding, full, (rows * nproc, row_len))
        return TokenBatch(**out)

    def dataset(self):
        data_cfg: DataConfig = self.cfg.data
        return make_dataset(data_cfg, task_rows(self.train_tasks))

    # -- one step ---------------------------------------------------------------------------
    def step_fn(self, state: loop.LoopState, items: list[Any]) -> tuple[loop.LoopState, dict]:
        """One PPP step on a batch of prompts (see the module docstring)."""
        rng, sub = jax.random.split(state.rng)
        seed = int(jax.random.randint(sub, (), 0, 2**31 - 1))
        t0 = time.perf_counter()
        if self._engine_step != state.step:
            self._sync_engine(state.train.params)
            self._engine_step = state.step
        sync_s = time.perf_counter() - t0

        def more(_round: int):
            try:
                return next(self.data_iter)
            except StopIteration:
                raise DataExhausted("the prompt data ran out while dynamic sampling was "
                                    "refilling the batch") from None

        try:
            ro = self.orchestrator.collect(items, self.tasks, seed, more_items=more)
        except (dapo.DynamicSamplingError, RolloutRoundEmpty, DataExhausted) as e:
            # A step that cannot build its batch is skipped, not the end of the run. When the
            # data ran out, the loop's next `next(data_iter)` ends training cleanly.
            why = ("dynamic_sampling" if isinstance(e, dapo.DynamicSamplingError) else
                   "round_empty" if isinstance(e, RolloutRoundEmpty) else "data_exhausted")
            log.warning("step %d: update skipped (%s): %s", state.step + 1, why, e)
            self.last_rollout = None
            return state.replace(rng=rng), {"rollout/steps_skipped": 1.0,
                                            f"rollout/skipped_{why}": 1.0}
        self.last_rollout = ro
        if self.num_processes > 1:
            # Every process's episode summaries and batch shape, so that the metrics are global
            # and every process agrees on the batch (or on skipping the step).
            local_shape = None if ro.batch is None else tuple(ro.batch.tokens.shape)
            gathered = distributed.allgather_objects((summarize(ro), local_shape))
            metrics = merge_summaries([g[0] for g in gathered])
            shapes = [g[1] for g in gathered]
            have_batch = any(sh is not None for sh in shapes)
            tokens = sum(g[0].batch_tokens for g in gathered)
        else:
            metrics = dict(ro.metrics)
            have_batch = ro.batch is not None
        metrics["rollout/steps_skipped"] = 0.0
        if not have_batch:
            log.warning("step %d: no usable episode; the update is skipped", state.step + 1)
            metrics["train/skipped_no_episodes"] = 1.0
            metrics["rollout/steps_skipped"] = 1.0
            return state.replace(rng=rng), metrics
        t1 = time.perf_counter()
        if self.cfg.rollout.release_engine_memory:
            # the update gets the engines' pools and weight copies; `_sync_engine` below brings
            # them back with the new weights
            self.engine.release_memory()
        if self.num_processes > 1:
            batch = self._global_batch(ro.batch, shapes)
        else:
            batch = shard_batch(ro.batch, self.mesh)
            tokens = float(np.sum(ro.batch.segment_ids > 0))
        # The model's activation constraints (sequence sharding among them) only exist in
        # programs traced under `using_mesh`; on one device they would be no-ops, so the
        # single-device program is left exactly as it was.
        with (shd.using_mesh(self.mesh, self.rules) if self.mesh.size > 1
              else contextlib.nullcontext()):
            rl = self.cfg.rl
            if rl.updates_per_step > 1 and rl.old_logprobs == "sampler":
                batch = batch.with_old_logprobs(batch.sampler_logprobs)
            rows = mini_batch_rows(batch.shape[0], rl.ppo_mini_batches, rl.ppo_epochs,
                                   seed=seed, shuffle=rl.ppo_shuffle)
            new, per_update = ppo_update(self.train_step, state.train, batch, rows,
                                         select_rows=self.select_rows,
                                         old_logprob_fn=self.old_logprob_fn)
        jax.block_until_ready(new.params)
        tm = combine_update_metrics([_host_scalars(m) for m in per_update])
        train_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        self._sync_engine(new.params)
        self._engine_step = state.step + 1
        sync_s += time.perf_counter() - t2
        metrics.update({f"train/{k}": v for k, v in tm.items()})
        metrics.update({"time/train": train_s, "time/sync": sync_s})
        metrics.update({k.replace("perf/", "perf/train_"): v
                        for k, v in throughput(tokens, train_s).items()})
        gen = float(metrics.get("rollout/response_tokens_sum", 0.0))
        metrics.update({k.replace("perf/", "perf/sample_"): v
                        for k, v in throughput(gen, metrics["time/rollout"]).items()})
        return state.replace(train=new, rng=rng), metrics

    # -- the run ----------------------------------------------------------------------------
    def train(self, *, num_steps: int | None = None, progress: bool | None = None,
              hooks: Sequence[Callable[[loop.LoopState, Any], None]] = (),
              restart: bool = False) -> loop.LoopState:
        """Trains to `num_steps` (default `cfg.trainer.num_steps`), resuming if possible.

        A run folder with history (metrics.jsonl, tb/, policy/) but no checkpoint is refused
        (`loop.RunFolderError`), and one whose checkpoints are all damaged too
        (`CheckpointError`); `restart=True` first moves the earlier run's files into
        `<run>/previous-<time>/` and starts at step 0. `self.start_step` is the step this call
        started after (0, or the restored checkpoint's).
        """
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if restart:
            loop.set_aside_run(self.run_dir, RESTART_MOVES)
        ds = self.dataset()
        self.data_iter = ds.iterator()
        ckcfg = dataclasses.replace(cfg.checkpoint, directory=str(self.run_dir / "checkpoints"))
        ckpt = CheckpointManager.from_config(ckcfg)
        try:
            loop.check_run_folder(self.run_dir, ckpt)
            writer = make_writer(self.run_dir, tensorboard=cfg.trainer.tensorboard)
            meta = {"config": cfgmod.to_dict(cfg)}
            final = loop.run_loop(self.init_state, self.data_iter, self.step_fn,
                                  num_steps=num_steps or cfg.trainer.num_steps, ckpt=ckpt,
                                  writer=writer, metadata=meta,
                                  abstract_state=self._abstract_state(),
                                  progress=cfg.trainer.progress if progress is None else progress,
                                  hooks=hooks, on_start=self._started)
        finally:
            ckpt.close()
        if self._engine_step != final.step:
            self._sync_engine(final.train.params)
            self._engine_step = final.step
        return final

    def _started(self, step: int) -> None:
        self.start_step = step

    def _abstract_state(self) -> loop.LoopState:
        # Counters replicated on the mesh: a checkpoint holds the sharding it was saved with,
        # and one saved by another process count can only be restored onto an explicit one.
        scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=self.state_shardings.step)
        opt = jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                           jax.eval_shape(self.optimizer.init, self.init_params),
                           self.state_shardings.opt_state)
        # restored on the mesh, laid out as the train step expects
        train = StepState(params=abstract_like(self.init_params), opt_state=opt,
                          step=scalar, skipped=scalar)
        return loop.LoopState(step=0, train=train, rng=jax.random.key(0))

    def save_policy(self, params: Any, path: str | Path) -> Path:
        """Writes `params` as a ppp_jax orbax model checkpoint (`ppp convert orbax2hf` makes it
        a Hugging Face directory)."""
        from ppp_jax.model.checkpoint import save_checkpoint

        return save_checkpoint(params, self.parts.model.config, path, overwrite=True)


def _host_scalars(tree: dict[str, Any]) -> dict[str, Any]:
    """Replicated scalar metrics on the host (with several processes a replicated global array
    is read from this process's own copy)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return {k: np.asarray(v.addressable_data(0)) if isinstance(v, jax.Array) else v
            for k, v in tree.items()}


# What `PPPTrainer.train(restart=True)` moves into `<run>/previous-<time>/`.
RESTART_MOVES = loop.RUN_HISTORY + ("checkpoints", "checkpoints-damaged")


def preflight(run_dir: str | Path, *, restart: bool = False) -> None:
    """What `PPPTrainer.train` would refuse, checked before anything is built: a run folder
    with history but no checkpoint (`loop.RunFolderError`), or checkpoints none of which is
    intact (`CheckpointError`). With `restart`, first moves the earlier run aside."""
    run_dir = Path(run_dir)
    if restart:
        loop.set_aside_run(run_dir, RESTART_MOVES)
    if not (run_dir / "checkpoints").is_dir():
        loop.check_run_folder(run_dir, None)
        return
    with CheckpointManager(run_dir / "checkpoints") as ckpt:
        loop.check_run_folder(run_dir, ckpt)
        ckpt.newest_intact_step()


def restore_params(run_dir: str | Path, abstract_params: Any, step: int | None = None) -> tuple[Any, int]:
    """(params, step) of a training checkpoint under `<run_dir>/checkpoints` (latest by default)."""
    with CheckpointManager(Path(run_dir) / "checkpoints") as mgr:
        got = mgr.restore(step, abstract_params=abstract_like(abstract_params),
                          restore_opt_state=False)
    return got.params, got.step
