"""A small deterministic training run for the kill-and-resume tests (run as a subprocess).

    python tests/ppp_jax/_resume_run.py RUN_DIR --steps N --save-every K
        [--kill-at-step S] [--step-sleep SECONDS] [--policy toy|tiny] [--ballast N] [--keep K]
        [--check-folder] [--restart]

It drives the real pieces: the grain data pipeline (ppp_jax.train.data), the loop (ppp_jax.train.loop), the
orbax checkpoint manager and the jsonl + TensorBoard metrics writers, with a toy optax problem in
place of the PPP step: linear regression whose inputs are derived from each prompt's uid, with
noise drawn from the state's rng, plus fake episode records aggregated by `episode_metrics`.
`--policy tiny` uses the real train step on the tiny Seed-OSS policy instead.
`--kill-at-step S` SIGKILLs the process in the middle of step S (after its update, before its
metrics row and checkpoint).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from ppp_jax.config.data import DataConfig
from ppp_jax.train.data import PromptItem, ShardInfo, make_dataset
from ppp_jax.rollout.episode_metrics import episode_metrics
from ppp_jax.train.metrics import make_writer
from ppp_jax.train.checkpointing import CheckpointManager  # noqa: E402
from ppp_jax.envs.records import EpisodeRecord, Question, TokenView
from ppp_jax.train.loop import RUN_HISTORY, LoopState, check_run_folder, run_loop, set_aside_run

DIM = 6
W_TRUE = np.linspace(-1.0, 1.0, DIM).astype(np.float32)
EFFORTS = ("low", "medium", "high")


def rows(n: int = 5):
    return [
        {"task_id": f"t{i}", "domain": "toy", "precise_prompt": f"do {i} exactly",
         "vague_prompt": f"do {i}", "hidden_info": "h", "gold": [i]}
        for i in range(n)
    ]


def features(item: PromptItem) -> np.ndarray:
    return np.random.default_rng(zlib.crc32(item.uid.encode())).normal(size=DIM).astype(np.float32)


def fake_episodes(batch, draws) -> list[EpisodeRecord]:
    """Episode records whose contents depend on the batch and the rng draws, for the metrics path."""
    out = []
    for item, (nq, effort, length) in zip(batch, draws):
        qs = tuple(Question(f"q{j}", "a", EFFORTS[(effort + j) % 3], followed=bool(j % 2)) for j in range(nq))
        n = 4 + int(length)
        out.append(EpisodeRecord(
            task_id=item.task.task_id, domain="toy", preference_id=item.preference_id,
            prompt_kind=item.prompt_kind, questions=qs, task_score=float(length) / 2,
            num_turns=1 + int(nq),
            tokens=TokenView(tuple(range(n)), (0,) * 2 + (1,) * (n - 2), (0.0,) * n),
        ))
    return out


OPT = optax.adamw(0.05, weight_decay=0.01)


@struct.dataclass
class ToyTrainState:
    """Shaped like `ppp_jax.rl.train_step.TrainState`: params, optimizer state, array counters."""

    params: dict
    opt_state: object
    step: jax.Array
    skipped: jax.Array


@jax.jit
def update(train: ToyTrainState, rng, x):
    """One toy update; module level so repeated runs in one process compile it once."""
    params, opt_state = train.params, train.opt_state
    rng, noise_key, episode_key = jax.random.split(rng, 3)
    y = x @ jnp.asarray(W_TRUE) + 0.1 * jax.random.normal(noise_key, (x.shape[0],))

    def loss_fn(p):
        # "ballast" (--ballast N): a real parameter of N floats, so parameter files are large
        # enough for the checkpoint fault tests to damage a block inside one.
        extra = 1e-3 * jnp.mean(p["ballast"] ** 2) if "ballast" in p else 0.0
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2) + extra

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = OPT.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    draws = jax.random.randint(episode_key, (x.shape[0], 3), 0, 3)
    train = ToyTrainState(params, opt_state, train.step + 1, train.skipped)
    return train, rng, draws, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def make_step_fn(kill_at: int | None):
    def step_fn(state: LoopState, batch):
        x = jnp.asarray(np.stack([features(i) for i in batch]))
        new_train, rng, draws, train = update(state.train, state.rng, x)
        if kill_at is not None and state.step + 1 == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        uid_digest = zlib.crc32("".join(i.uid for i in batch).encode()) % 1_000_003
        out = {"train": {**train, "batch_digest": uid_digest}}
        out.update(episode_metrics(fake_episodes(batch, np.asarray(draws))))
        out["train"]["updates"] = new_train.step
        return state.replace(train=new_train, rng=rng), out

    return step_fn


def toy_loop_parts():
    """(dataset, initial LoopState, step_fn) of the toy problem, for tests that run the loop in
    their own process (5 rows, batch 6, seed 1, rng key 0; no kill)."""
    cfg = DataConfig(batch_size=6, seed=1, vague_preferences=("a", "b", "c"))
    ds = make_dataset(cfg, rows(), shard=ShardInfo(0, 1))
    params = {"w": jnp.zeros((DIM,), jnp.float32), "b": jnp.zeros((), jnp.float32)}
    zero = jnp.zeros((), jnp.int32)
    init = LoopState(0, ToyTrainState(params, OPT.init(params), zero, zero), jax.random.key(0))
    return ds, init, make_step_fn(None)


def make_real_policy(kill_at: int | None):
    """The real train step (`ppp_jax.rl.train_step`, donating its state) on the tiny Seed-OSS policy.

    Token views are synthetic but a deterministic function of the batch; advantages are drawn
    from the loop's rng. Returns (initial train state, step_fn).
    """
    from ppp_jax.rl.batch import assemble_batch
    from ppp_jax.config.rl import OptimConfig, RLConfig
    from ppp_jax.rl.train_step import init_train_state, make_train_step, split_model
    from tests.ppp_jax.rl_helpers import random_views, tiny_model

    graphdef, params = split_model(tiny_model())
    cfg = RLConfig(optim=OptimConfig(learning_rate=3e-3, weight_decay=0.01), logprob_chunk_size=8)
    opt = optax.adamw(3e-3, weight_decay=0.01)
    train_step = make_train_step(graphdef, cfg, opt, donate=True)

    def step_fn(state: LoopState, batch):
        digest = zlib.crc32("".join(i.uid for i in batch).encode())
        views = random_views(len(batch), seed=digest, max_len=30)
        rng, sub = jax.random.split(state.rng)
        adv = np.asarray(jax.random.normal(sub, (len(batch),)))
        tokens = assemble_batch(views, adv, row_len=32)
        new_train, m = train_step(state.train, tokens)
        if kill_at is not None and state.step + 1 == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return state.replace(train=new_train, rng=rng), {"train": m, "train/batch_digest": digest % 1_000_003}

    return init_train_state(params, opt), step_fn


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--save-every", type=int, required=True)
    p.add_argument("--kill-at-step", type=int, default=None)
    p.add_argument("--step-sleep", type=float, default=0.0)
    p.add_argument("--policy", choices=("toy", "tiny"), default="toy")
    p.add_argument("--ballast", type=int, default=0, help="extra parameter floats (toy policy)")
    p.add_argument("--keep", type=int, default=2)
    p.add_argument("--check-folder", action="store_true",
                   help="refuse a run folder with history but no checkpoint (as `ppp train` does)")
    p.add_argument("--restart", action="store_true", help="set the earlier run aside first")
    args = p.parse_args(argv)

    cfg = DataConfig(batch_size=6, seed=11, vague_preferences=("a", "b", "c"))
    ds = make_dataset(cfg, rows(), shard=ShardInfo(0, 1))  # 20 prompts: epochs cut batches
    opt = OPT
    params = {"w": jnp.zeros((DIM,), jnp.float32), "b": jnp.zeros((), jnp.float32)}
    if args.ballast:
        params["ballast"] = jnp.asarray(np.random.default_rng(0).normal(size=args.ballast), jnp.float32)
    zero = jnp.zeros((), jnp.int32)
    if args.policy == "toy":
        train = ToyTrainState(params, opt.init(params), zero, zero)
        step_fn = make_step_fn(args.kill_at_step)
    else:
        train, step_fn = make_real_policy(args.kill_at_step)
    init = LoopState(step=0, train=train, rng=jax.random.key(3))
    if args.step_sleep:
        inner = step_fn

        def step_fn(state, batch):
            time.sleep(args.step_sleep)
            return inner(state, batch)

    if args.restart:
        set_aside_run(args.run_dir, RUN_HISTORY + ("ckpt", "ckpt-damaged"))
    ckpt = CheckpointManager(os.path.join(args.run_dir, "ckpt"), save_every=args.save_every, keep=args.keep)
    if args.check_folder:
        check_run_folder(args.run_dir, ckpt)
    writer = make_writer(args.run_dir)
    state = run_loop(init, ds.iterator(), step_fn, num_steps=args.steps, ckpt=ckpt, writer=writer,
                     metadata={"config": {"seed": 11}})
    ckpt.close()
    print(f"DONE step={state.step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
