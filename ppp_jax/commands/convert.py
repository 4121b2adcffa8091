"""`ppp convert`: Hugging Face safetensors <-> ppp_jax orbax checkpoints.

    ppp convert hf2orbax SRC_HF_DIR DST_ORBAX_DIR [--param-dtype bfloat16]
                         [--mesh data=1,fsdp=-1,tensor=1]
    ppp convert orbax2hf SRC_ORBAX_DIR DST_HF_DIR [--dtype bfloat16] [--max-shard-size 5GB]
    ppp convert gguf2hf SRC.gguf DST_HF_DIR      (a Llama GGUF, dequantized; needs `gguf`)

Tensors stream one at a time (progress bar over tensors); the parameters are sharded over the
mesh (default: every local device on the fsdp axis), so a model larger than one device converts
as long as it fits on all of them. The destination appears atomically (temporary name, then
rename); an existing destination is refused before anything is loaded, unless --overwrite.

The tokenizer travels with the weights: hf2orbax copies the HF directory's tokenizer files beside
the orbax checkpoint (so `ppp train policy.path=DST` finds them); orbax2hf writes the checkpoint's
tokenizer (or --tokenizer) as a transformers tokenizer with a chat template, so that `ppp serve`
and `ppp eval` take the exported directory directly.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ppp_jax.commands._common import UsageError

DIRECTIONS = ("hf2orbax", "orbax2hf", "gguf2hf")
DEFAULT_MESH = "data=1,fsdp=-1,tensor=1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("direction", choices=DIRECTIONS,
                        help="hf2orbax: Hugging Face directory -> orbax checkpoint; orbax2hf: "
                             "orbax checkpoint (ppp sft's sft_policy/, ppp train's policy/) -> "
                             "Hugging Face directory; gguf2hf: a GGUF file (llama.cpp) -> Hugging "
                             "Face directory (model.gguf_io)")
    parser.add_argument("src", help="source directory (gguf2hf: the .gguf file)")
    parser.add_argument("dst", help="destination directory to create")
    parser.add_argument("--param-dtype", choices=("float32", "bfloat16", "float16"),
                        help="hf2orbax: stored parameter dtype (default: the checkpoint's)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                        help="orbax2hf: stored tensor dtype (default: the parameters')")
    parser.add_argument("--max-shard-size", default="5GB",
                        help="orbax2hf: split into model-0000i-of-0000n.safetensors above this")
    parser.add_argument("--tokenizer", metavar="PATH",
                        help="orbax2hf: tokenizer to ship with the export (a tokenizer.json or a "
                             "tokenizer directory; default: the one beside SRC)")
    parser.add_argument("--mesh", default=DEFAULT_MESH,
                        help="named axis sizes of the device mesh used while converting; "
                             "-1 = the remaining devices")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing destination")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def parse_convert_mesh(text: str) -> dict[str, int]:
    """`data=1,fsdp=-1,tensor=1` -> {"data": 1, "fsdp": -1, "tensor": 1}.

    Raises:
      UsageError for the retired positional form (`1,-1,1`), naming its named equivalent, and
      for anything else that is not `axis=size,...`.
    """
    parts = [p.strip() for p in text.split(",")]
    if all(p.lstrip("-").isdigit() for p in parts):
        named = ",".join(f"{a}={s}" for a, s in zip(("data", "fsdp", "tensor"), parts))
        raise UsageError(f"--mesh {text}: meshes are written with named axes; write --mesh "
                         f"{named}" if len(parts) == 3 else
                         f"--mesh {text}: meshes are written with named axes, e.g. --mesh "
                         f"{DEFAULT_MESH}")
    sizes: dict[str, int] = {}
    for part in parts:
        name, _, value = part.partition("=")
        try:
            sizes[name.strip()] = int(value)
        except ValueError:
            raise UsageError(f"--mesh {text}: {part!r} must look like axis=size "
                             f"(e.g. {DEFAULT_MESH})") from None
    return sizes


def _check_destination(dst: str, overwrite: bool) -> None:
    """Refuses an existing destination before any tensor is read."""
    path = Path(dst).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")


def _tokenizer_source(args: argparse.Namespace) -> Path | None:
    """Where the export's tokenizer comes from: --tokenizer, else the source directory."""
    from ppp_jax.sampling.chat import has_tokenizer

    if args.tokenizer:
        if not has_tokenizer(args.tokenizer):
            raise FileNotFoundError(f"--tokenizer {Path(args.tokenizer).absolute()}: no "
                                    "tokenizer.json or tokenizer directory there")
        return Path(args.tokenizer)
    return Path(args.src) if has_tokenizer(args.src) else None


def run(args: argparse.Namespace) -> int:
    # Everything that can be checked without loading a tensor is checked first.
    mesh_sizes = parse_convert_mesh(args.mesh)
    _check_destination(args.dst, args.overwrite)
    if args.direction == "gguf2hf":
        from ppp_jax.model.gguf_io import GGUFError, gguf_to_hf

        start = time.perf_counter()
        try:
            out = gguf_to_hf(args.src, args.dst, overwrite=args.overwrite)
        except GGUFError as e:
            print(f"ppp convert gguf2hf: error: {e}", file=sys.stderr)
            return 1
        print(f"ppp convert gguf2hf: wrote {out} ({time.perf_counter() - start:.1f}s)")
        return 0
    if not Path(args.src).is_dir():
        raise FileNotFoundError(f"{Path(args.src).absolute()}: no such checkpoint directory")
    tokenizer = _tokenizer_source(args)

    from ppp_jax.model.checkpoint import load_checkpoint, save_checkpoint
    from ppp_jax.model.hf_io import load_hf, save_hf
    from ppp_jax.model.sharding import make_mesh
    from ppp_jax.sampling.chat import copy_tokenizer, save_serving_tokenizer

    start = time.perf_counter()
    mesh = make_mesh(mesh_sizes)
    note = ""
    if args.direction == "hf2orbax":
        model, config = load_hf(args.src, mesh=mesh, param_dtype=args.param_dtype,
                                progress=not args.quiet)
        out = save_checkpoint(model, config, args.dst, overwrite=args.overwrite,
                              extra=(lambda d: copy_tokenizer(tokenizer, d)) if tokenizer else None)
    else:
        model, config = load_checkpoint(args.src, mesh=mesh)
        fallback = []

        def add_tokenizer(directory: Path) -> None:
            fallback.append(save_serving_tokenizer(tokenizer, directory))

        out = save_hf(model, config, args.dst, dtype=args.dtype,
                      max_shard_size=args.max_shard_size, overwrite=args.overwrite,
                      progress=not args.quiet, extra=add_tokenizer if tokenizer else None)
        if fallback and fallback[0]:
            note = "; chat template: the built-in Seed-OSS one (the tokenizer had none)"
    if tokenizer is None and args.direction == "orbax2hf":
        print(f"ppp convert: warning: no tokenizer beside {Path(args.src).absolute()}; the "
              f"export has weights only (`ppp serve` and `ppp eval` need one: pass "
              f"--tokenizer PATH)", file=sys.stderr)
    elif tokenizer is not None:
        note = f"; tokenizer from {tokenizer}" + note
    print(f"ppp convert {args.direction}: wrote {out} "
          f"({config.param_count():,} parameters, {time.perf_counter() - start:.1f}s{note})")
    return 0
