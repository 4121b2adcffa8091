"""`ppp convert`: Hugging Face safetensors <-> ppp_jax orbax checkpoints.

    ppp convert hf2orbax SRC_HF_DIR DST_ORBAX_DIR [--param-dtype bfloat16] [--mesh 1,-1,1]
    ppp convert orbax2hf SRC_ORBAX_DIR DST_HF_DIR [--dtype bfloat16] [--max-shard-size 5GB]

Tensors stream one at a time (progress bar over tensors); the parameters are sharded over the
mesh (default: every local device on the fsdp axis), so a model larger than one device converts
as long as it fits on all of them. The destination appears atomically (temporary name, then
rename); an existing destination is refused unless --overwrite.
"""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="direction", metavar="DIRECTION", required=True)
    a = sub.add_parser("hf2orbax", help="Hugging Face directory -> orbax checkpoint")
    a.add_argument("src", help="HF directory: config.json + model.safetensors (or index + shards)")
    a.add_argument("dst", help="orbax checkpoint directory to create")
    a.add_argument("--param-dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="stored parameter dtype (default: the checkpoint's)")
    b = sub.add_parser("orbax2hf", help="orbax checkpoint -> Hugging Face directory")
    b.add_argument("src", help="orbax checkpoint directory (model_config.json + params/)")
    b.add_argument("dst", help="HF directory to create")
    b.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="stored tensor dtype (default: the parameters')")
    b.add_argument("--max-shard-size", default="5GB",
                   help="split into model-0000i-of-0000n.safetensors above this size (default 5GB)")
    for p in (a, b):
        p.add_argument("--mesh", default="1,-1,1",
                       help="data,fsdp,tensor sizes of the device mesh used while converting; "
                            "-1 = remaining devices (default 1,-1,1)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing destination")
        p.add_argument("--quiet", action="store_true", help="no progress bar")


def _mesh(text: str):
    from ppp_jax.model.sharding import make_mesh

    try:
        sizes = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise SystemExit(f"ppp convert: --mesh {text!r} must be three integers like 1,-1,1") from None
    if len(sizes) != 3:
        raise SystemExit(f"ppp convert: --mesh {text!r} must have 3 sizes (data,fsdp,tensor)")
    return make_mesh(sizes)


def run(args: argparse.Namespace) -> int:
    from ppp_jax.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from ppp_jax.model.config import ModelConfigError
    from ppp_jax.model.hf_io import load_hf, save_hf
    from ppp_jax.model.safetensors_io import CheckpointFormatError
    from ppp_jax.model.sharding import ShardingError

    start = time.perf_counter()
    try:
        mesh = _mesh(args.mesh)
        if args.direction == "hf2orbax":
            model, config = load_hf(args.src, mesh=mesh, param_dtype=args.param_dtype,
                                    progress=not args.quiet)
            out = save_checkpoint(model, config, args.dst, overwrite=args.overwrite)
        else:
            model, config = load_checkpoint(args.src, mesh=mesh)
            out = save_hf(model, config, args.dst, dtype=args.dtype,
                          max_shard_size=args.max_shard_size, overwrite=args.overwrite,
                          progress=not args.quiet)
    except (CheckpointError, CheckpointFormatError, ModelConfigError, ShardingError,
            FileExistsError, FileNotFoundError) as e:
        print(f"ppp convert: {e}", file=sys.stderr)
        return 1
    print(f"ppp convert {args.direction}: wrote {out} "
          f"({config.param_count():,} parameters, {time.perf_counter() - start:.1f}s)")
    return 0
