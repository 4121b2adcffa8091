"""The token batch the train step consumes, and its assembly from episodes' token views.

Layout ([B, T] everywhere; B rows, T tokens per row):
  tokens            int32    input ids; row position t predicts targets[t]
  positions         int32    RoPE positions, restarting at 0 for each packed sequence
  segment_ids       int32    1..k: which packed sequence a position belongs to; 0 = padding
  targets           int32    the next token (tokens shifted left by one within a sequence)
  loss_mask         float32  1 where targets[t] is a token the policy sampled, else 0
  advantages        float32  the episode's advantage A_i on every position of episode i
  sampler_logprobs  float32  the sampler's log-prob of targets[t] (0 where loss_mask is 0)
  old_logprobs      float32  optional: log π_old(targets[t]) recomputed by the trainer; None means
                             on-policy (one update per batch: ℓ_old = stop_gradient(ℓ))

From a TokenView (ids x_0..x_{S−1}, mask m, sampler log-probs s) an episode becomes the S − 1
positions tokens = x_0..x_{S−2}, targets = x_1..x_{S−1}, loss_mask = m_1..m_{S−1},
sampler_logprobs = s_1..s_{S−1}: the log-prob of a sampled token sits at the position that
predicts it. x_0 is always prompt (its mask must be 0). Only the policy's own sampled tokens carry
loss mask 1, so tool outputs, user replies and chat-template tokens never enter the loss.

Padding (one episode per row, pack=False) or first-fit packing (pack=True: several episodes per
row, separated by segment ids, positions restarting). Row length and row count are rounded up
(`pad_to_multiple`, `rows_multiple`) so that a few shapes serve every step without recompiling, and
so that the rows split evenly into micro-batches and data-parallel shards. Padding positions have
segment id 0, loss mask 0 and advantage 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import struct

from ppp_jax.envs.records import TokenView


@struct.dataclass
class TokenBatch:
    """One training batch (see the module docstring for the fields' meaning). All [B, T]."""

    tokens: jax.Array
    positions: jax.Array
    segment_ids: jax.Array
    targets: jax.Array
    loss_mask: jax.Array
    advantages: jax.Array
    sampler_logprobs: jax.Array
    old_logprobs: jax.Array | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.tokens.shape)  # type: ignore[return-value]

    def with_old_logprobs(self, old_logprobs: jax.Array) -> TokenBatch:
        return self.replace(old_logprobs=old_logprobs)


def _round_up(x: int, k: int) -> int:
    return -(-x // k) * k


def _episode_arrays(view: TokenView, index: int) -> tuple[np.ndarray, ...]:
    ids = np.asarray(view.token_ids, dtype=np.int32)
    mask = np.asarray(view.loss_mask, dtype=np.float32)
    slp = np.asarray(view.sampler_logprobs, dtype=np.float32)
    if ids.size < 2:
        raise ValueError(f"episode {index}: a token view needs at least 2 tokens, got {ids.size}")
    if mask[0] != 0:
        raise ValueError(f"episode {index}: the first token cannot be a sampled (loss) token")
    if not np.all((mask == 0) | (mask == 1)):
        raise ValueError(f"episode {index}: loss_mask must be 0/1")
    return ids[:-1], ids[1:], mask[1:], slp[1:] * mask[1:]


def assemble_batch(
    views: Sequence[TokenView],
    advantages: Sequence[float] | np.ndarray,
    *,
    row_len: int | None = None,
    pad_to_multiple: int = 128,
    rows_multiple: int = 1,
    pack: bool = False,
    pad_token_id: int = 0,
    loss_weights: Sequence[float] | np.ndarray | None = None,
) -> TokenBatch:
    """Builds a TokenBatch (numpy arrays) from episodes' token views and per-episode advantages.

    views: one TokenView per episode; advantages: one float per episode (e.g. from
    `ppp_jax.rl.advantages.compute_advantages`), broadcast over the episode's positions.
    row_len: T; None = the longest episode (S − 1 positions) rounded up to `pad_to_multiple`.
    rows_multiple: B is rounded up to a multiple of this (num_micro_batches × data shards) with
    empty rows. pack: first-fit packing of episodes into rows of length T.
    loss_weights: optional 0/1 per episode, float [N]; an episode with weight 0 keeps its tokens
    (same rows and shapes) but gets loss mask 0 everywhere, so it adds nothing to the loss, its
    denominator or the gradient (`rl.mask_overlong`). None = all 1.
    Raises ValueError if an episode does not fit in T.
    """
    adv = np.asarray(advantages, dtype=np.float32)
    if adv.shape != (len(views),):
        raise ValueError(f"got {len(views)} views but advantages of shape {adv.shape}")
    keep = (np.ones(len(views), np.float32) if loss_weights is None
            else np.asarray(loss_weights, dtype=np.float32))
    if keep.shape != (len(views),) or not np.all((keep == 0) | (keep == 1)):
        raise ValueError(f"loss_weights must be 0/1 with shape ({len(views)},), got {keep!r}")
    if not views:
        raise ValueError("no episodes to assemble")
    eps = [_episode_arrays(v, i) for i, v in enumerate(views)]
    lengths = [len(e[0]) for e in eps]
    if row_len is None:
        row_len = _round_up(max(lengths), pad_to_multiple)
    too_long = [i for i, n in enumerate(lengths) if n > row_len]
    if too_long:
        raise ValueError(
            f"episodes {too_long[:8]} have {max(lengths[i] for i in too_long)} positions > row_len {row_len}"
        )

    # rows: list of lists of episode indices.
    rows: list[list[int]] = []
    if pack:
        free: list[int] = []
        for i, n in enumerate(lengths):
            for r, f in enumerate(free):
                if n <= f:
                    rows[r].append(i)
                    free[r] -= n
                    break
            else:
                rows.append([i])
                free.append(row_len - n)
    else:
        rows = [[i] for i in range(len(views))]
    num_rows = _round_up(len(rows), rows_multiple)

    shape = (num_rows, row_len)
    tokens = np.full(shape, pad_token_id, np.int32)
    targets = np.full(shape, pad_token_id, np.int32)
    positions = np.zeros(shape, np.int32)
    segment_ids = np.zeros(shape, np.int32)
    loss_mask = np.zeros(shape, np.float32)
    advantages_bt = np.zeros(shape, np.float32)
    sampler = np.zeros(shape, np.float32)
    for r, members in enumerate(rows):
        start = 0
        for seg, i in enumerate(members, start=1):
            inp, tgt, m, slp = eps[i]
            m, slp = m * keep[i], slp * keep[i]
            sl = slice(start, start + len(inp))
            tokens[r, sl] = inp
            targets[r, sl] = tgt
            positions[r, sl] = np.arange(len(inp))
            segment_ids[r, sl] = seg
            loss_mask[r, sl] = m
            advantages_bt[r, sl] = adv[i] * m
            sampler[r, sl] = slp
            start += len(inp)
    return TokenBatch(
        tokens=tokens,
        positions=positions,
        segment_ids=segment_ids,
        targets=targets,
        loss_mask=loss_mask,
        advantages=advantages_bt,
        sampler_logprobs=sampler,
    )
