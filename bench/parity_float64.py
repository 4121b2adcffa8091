"""Parity figures of docs/model.md: ours (fp32) and transformers (fp32) against transformers run in
float64, on the tiny configs of tests/model/test_parity.py. Run by hand from the repository root:

    JAX_PLATFORMS=cpu .venv/bin/python bench/parity_float64.py

The float64 reference runs each row alone, unpadded: in float64 the eager path turns padded query
rows into NaN, which the masked value rows then carry into real tokens.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ppp_jax.model import testing as mt  # noqa: E402
from tests.model.test_parity import (  # noqa: E402
    CONFIGS,
    T,
    fp32_bound,
    hf_forward,
    jax_forward,
    ours,
    padded_batch,
)


def float64_logits(path, tokens, mask) -> np.ndarray:
    """transformers in float64, each row on its real tokens alone; [B, T, V], 0 at padding."""
    from transformers import SeedOssForCausalLM

    ref = SeedOssForCausalLM.from_pretrained(path, dtype=torch.float64,
                                             attn_implementation="eager").eval()
    out = None
    with torch.no_grad():
        for i in range(tokens.shape[0]):
            idx = np.nonzero(mask[i])[0]
            row = ref(input_ids=torch.tensor(tokens[i:i + 1, idx], dtype=torch.long)).logits.numpy()
            if out is None:
                out = np.zeros(tokens.shape + (row.shape[-1],), np.float64)
            out[i, idx] = row[0]
    return out


def main() -> None:
    print("| config | max |logit| | ours vs HF fp32 | ours vs float64 | HF fp32 vs float64 | bound |")
    for name, overrides in CONFIGS.items():
        path = mt.write_tiny_hf_checkpoint(tempfile.mkdtemp(), dtype="float32", **overrides)
        model, ref = ours(path, "float32")
        tokens, positions, mask = padded_batch(model.config.vocab_size)
        hf, _ = hf_forward(ref, tokens, positions, mask)
        our, _ = jax_forward(model, tokens, positions, mask)
        f64 = float64_logits(path, tokens, mask)
        real = mask.astype(bool)
        scale = float(np.abs(f64[real]).max())

        def diff(a, b):
            return float(np.abs(a[real] - b[real]).max())

        bound = fp32_bound(model.config, T, scale)
        print(f"| {name} | {scale:.3g} | {diff(our, hf):.2g} | {diff(our, f64):.2g} "
              f"({diff(our, f64) / scale:.2g}) | {diff(hf, f64):.2g} ({diff(hf, f64) / scale:.2g}) "
              f"| {bound:.2g} ({bound / scale:.2g}) |", flush=True)


if __name__ == "__main__":
    main()
