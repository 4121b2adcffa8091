"""Can the demo's policy learn to copy a location named anywhere in its context? (A capability
probe, not a timing; companion of `demo_copy_probe.py`, whose copy is at a fixed offset.)

Each sequence: random filler tokens with `MARK loc END` at a random position, then fixed
"template" tokens and the answer `MARK loc END`; the loss is on the answer's tokens after MARK.
`loc` is `--kmin`..`--kmax` tokens drawn from a pool of `--pool` ids. With `--ntrain N` the
training locations are N fixed ones and the held-out ones other draws (unseen combinations of
seen pieces); with `--ntrain 0` every row draws a fresh location (every pool id is practised).
Accuracy: the whole answer right under teacher forcing. Model: the demo's shape (hidden 128,
4 layers, tied embeddings, vocabulary 2,248), AdamW with warmup + cosine, as the other probe.

  python bench/demo_copy_probe_positions.py --ntrain 0 --kmin 1 --kmax 1 --pool 200  # one token
  python bench/demo_copy_probe_positions.py --ntrain 170                              # 2-5 pieces

Results are in docs/demo.md.
"""
import argparse
import time

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from demo_copy_probe import probe_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--pool", type=int, default=400)
    ap.add_argument("--ntrain", type=int, default=170, help="distinct training locations (0 = a fresh one each row)")
    ap.add_argument("--kmin", type=int, default=2)
    ap.add_argument("--kmax", type=int, default=5)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    V, T = 2248, a.seq_len
    model, opt = probe_model(V, a.layers, a.seed, a.lr, a.steps)
    rng = np.random.default_rng(a.seed)
    pool = np.arange(V - a.pool, V)
    MARK, END = 5, 6
    TEMPLATE = np.arange(100, 110)
    def rand_loc():
        return rng.choice(pool, size=rng.integers(a.kmin, a.kmax + 1))
    train_locs = [rand_loc() for _ in range(a.ntrain)]
    heldout_locs = [rand_loc() for _ in range(200)]
    def make(locs, n, fresh=False):
        X = np.zeros((n, T), np.int32); W = np.zeros((n, T), np.float32)
        for r in range(n):
            loc = rand_loc() if fresh else locs[rng.integers(len(locs))]
            ans = np.concatenate([[MARK], loc, [END]])
            tail = np.concatenate([TEMPLATE, ans])
            body_len = T - len(tail)
            body = rng.integers(10, 2000, size=body_len)
            p = rng.integers(0, body_len - len(loc) - 2)
            body[p] = MARK; body[p + 1:p + 1 + len(loc)] = loc; body[p + 1 + len(loc)] = END
            X[r] = np.concatenate([body, tail])
            W[r, T - len(ans) : T] = 1.0  # predict positions: tokens after MARK in answer
            W[r, T - len(ans)] = 0.0
        return jnp.asarray(X), jnp.asarray(W)
    positions = jnp.arange(T)[None]
    @nnx.jit
    def step(model, opt, x, w):
        def loss_fn(model):
            logits = model(x[:, :-1], jnp.broadcast_to(positions[:, :-1], x[:, :-1].shape))
            nll = optax.softmax_cross_entropy_with_integer_labels(logits, x[:, 1:])
            return (nll * w[:, 1:]).sum() / w[:, 1:].sum()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss
    @nnx.jit
    def exact(model, x, w):
        logits = model(x[:, :-1], jnp.broadcast_to(positions[:, :-1], x[:, :-1].shape))
        ok = (logits.argmax(-1) == x[:, 1:]) | (w[:, 1:] == 0)
        return ok.all(-1).mean()
    t0 = time.perf_counter()
    for s in range(1, a.steps + 1):
        loss = step(model, opt, *make(train_locs, a.batch, fresh=a.ntrain == 0))
        if s % 50 == 0 or s == a.steps:
            tr = float(exact(model, *make(train_locs, 256, fresh=a.ntrain == 0)))
            ho = float(exact(model, *make(heldout_locs, 256)))
            print(f"step {s} loss {float(loss):.3f} exact-copy (teacher-forced) train {tr:.2f} heldout {ho:.2f} ({time.perf_counter()-t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
