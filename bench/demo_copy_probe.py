"""Can the demo's policy learn to copy a token it has never seen? (A capability probe, not a timing.)

The demo's productivity needs the policy to copy the location named in the prompt or the user's
reply into its `finish` answer, and the held-out tasks' locations are never answers in training.
This probe isolates that skill on the demo's model shape (Seed-OSS architecture, hidden 128,
4 layers, 4 heads, tied embeddings, vocabulary 2,248): each sequence is `T` random tokens with
the token to copy `offset` positions before the end followed by fixed "template" tokens (the shape
of "...location X<eos><bos>assistant ... <parameter=answer>" in the demo), and the loss is on the
last position only. Copy targets are drawn from a training set of ids; accuracy is measured on
those ids and on `--heldout` ids that never occur in training.

  python bench/demo_copy_probe.py                  # targets: 170 "location" ids
  python bench/demo_copy_probe.py --broad          # targets: every id but the held-out ones

Both runs go through the same model code as the demo (`model/`), AdamW with warmup + cosine.
Results are written into docs/demo.md.
"""

from __future__ import annotations

import argparse
import time

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ppp_jax.model.config import tiny
from ppp_jax.model.transformer import SeedOssForCausalLM


def probe_model(vocab: int, num_layers: int, seed: int, lr: float, steps: int):
    """(model, optimizer): the demo's policy shape (hidden 128, tied embeddings) and AdamW with
    10 warmup steps and a cosine decay to lr / 10 over `steps` (shared by the copy probes)."""
    cfg = tiny(vocab_size=vocab, hidden_size=128, intermediate_size=384, num_layers=num_layers,
               num_heads=4, num_kv_heads=2, head_dim=32, max_position_embeddings=2048,
               tie_word_embeddings=True)
    model = SeedOssForCausalLM(cfg, rngs=nnx.Rngs(seed))
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, 10, steps, lr * 0.1)
    return model, nnx.Optimizer(model, optax.adamw(sched, weight_decay=0.0), wrt=nnx.Param)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=48)
    ap.add_argument("--offset", type=int, default=10, help="template tokens between X and the answer")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--vocab", type=int, default=2248)
    ap.add_argument("--heldout", type=int, default=30, help="ids never seen in training")
    ap.add_argument("--broad", action="store_true",
                    help="train on copies of every id but the held-out ones (else 170 'location' ids)")
    ap.add_argument("--heldout-in-inputs", action="store_true",
                    help="held-out ids occur in the filler (as in the demo, where a held-out "
                         "location's tokens occur in prompts) but are never copy targets")
    ap.add_argument("--shift", type=int, default=0,
                    help="each row's positions start at a random offset in [0, shift] (the copy "
                         "keeps its relative distance; its absolute position varies)")
    ap.add_argument("--template-loss", action="store_true",
                    help="loss also on the template tokens after X, as a warm start trains every "
                         "token of the `finish` call (token mean over offset + 1 positions)")
    ap.add_argument("--copy-weight", type=float, default=1.0,
                    help="with --template-loss: weight of the copied token in that mean "
                         "(`sft.location_weight`)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    V, T, off = a.vocab, a.seq_len, a.offset
    model, opt = probe_model(V, 4, a.seed, a.lr, a.steps)
    rng = np.random.default_rng(a.seed)
    heldout = np.arange(V - a.heldout, V)
    train_ids = np.arange(3, V - a.heldout) if a.broad else np.arange(V - 200, V - a.heldout)
    filler_hi = min(2000, V - 200)  # filler never uses the location-like ids
    # the weight of each trained position: the template after X, then the copy (--template-loss)
    weights = jnp.ones(off + 1).at[-1].set(a.copy_weight)

    def batch(targets: np.ndarray, n: int):
        x = rng.integers(3, filler_hi, size=(n, T))
        if a.heldout_in_inputs:  # a few filler positions per row hold held-out ids
            mask = rng.random((n, T)) < 0.1
            x = np.where(mask, rng.choice(heldout, size=(n, T)), x)
        y = rng.choice(targets, size=n)
        x[:, T - 1 - off] = y
        x[:, T - off:] = np.arange(100, 100 + off)  # the constant template
        pos = np.arange(T)[None] + (rng.integers(0, a.shift + 1, size=(n, 1)) if a.shift else 0)
        return jnp.asarray(x, jnp.int32), jnp.asarray(y, jnp.int32), jnp.asarray(pos, jnp.int32)

    @nnx.jit
    def step(model, opt, x, y, pos):
        def loss_fn(model):
            logits = model(x, pos)
            if not a.template_loss:
                return optax.softmax_cross_entropy_with_integer_labels(logits[:, -1], y).mean()
            # positions T-off-1 .. T-1 predict the template after X, then the copy
            targets = jnp.concatenate([x[:, T - off:], y[:, None]], axis=1)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, T - off - 1:], targets)
            return (ce * weights).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    @nnx.jit
    def accuracy(model, x, y, pos):
        return (model(x, pos)[:, -1].argmax(-1) == y).mean()

    print(f"copy probe: {'every id' if a.broad else f'{len(train_ids)} location ids'} in training, "
          f"{a.heldout} held-out ids; T={T}, offset {off}, batch {a.batch}, lr {a.lr}, "
          f"shift {a.shift}, " + (f"loss on the template too, copy weight {a.copy_weight}"
                                  if a.template_loss else "loss on the copy only"))
    t0 = time.perf_counter()
    for s in range(1, a.steps + 1):
        loss = step(model, opt, *batch(train_ids, a.batch))
        if s % 50 == 0 or s == a.steps:
            tr = float(accuracy(model, *batch(train_ids, 512)))
            ho = float(accuracy(model, *batch(heldout, 512)))
            print(f"step {s:4d}  loss {float(loss):.3f}  copy accuracy: trained ids {tr:.2f}, "
                  f"never-seen ids {ho:.2f}  ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
