"""`ppp serve CONFIG`: the sampling engine behind an OpenAI-compatible HTTP API.

    ppp serve configs/serve_tiny.yaml                    # tiny random model, builds it if missing
    ppp serve my_serve.yaml port=9000 engine.num_slots=32    # overrides: KEY=VALUE

Then any OpenAI client works against http://HOST:PORT/v1 (`/v1/chat/completions`,
`/v1/completions`, `/v1/models`), including tool calling (`tools`, `tool_choice` auto/none;
calls come back as `tool_calls`, reasoning as `reasoning_content`), `n` samples per prompt
(sharing the prompt's KV pages) and streaming. See `ppp_jax.sampling.server`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from ppp_jax.commands._common import add_override_arguments
from ppp_jax.config.loader import load_config
from ppp_jax.sampling.config import EngineConfig


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """What `ppp serve` runs.

    Attributes:
      checkpoint: directory with config.json, safetensors weights and the tokenizer (with its chat
        template); a ppp_jax orbax checkpoint works too if the tokenizer files sit beside it.
      model_name: the id clients must send as "model".
      host, port: where to listen.
      dtype: compute dtype (null: the checkpoint's).
      mesh: optional mesh sizes, e.g. {tensor: 8}; weights use the sampling sharding rules and
        the KV pool puts kv heads on "tensor".
      build_tiny_if_missing: write a random tiny model + tokenizer into `checkpoint` when it does
        not exist (for demos and smoke tests only).
      default_max_tokens: completion budget when a request gives none.
      warmup: compile every prefill bucket and the decode program before listening.
      engine: engine sizes (slots, pages, context length, ...).
    """

    checkpoint: str
    model_name: str = "ppp-jax"
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str | None = None
    mesh: dict[str, int] | None = None
    build_tiny_if_missing: bool = False
    default_max_tokens: int = 256
    warmup: bool = True
    engine: EngineConfig = EngineConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="serve config YAML (see configs/serve_tiny.yaml)")
    add_override_arguments(parser)


def build_server(cfg: ServeConfig):
    """(engine, Starlette app) for a config; the caller runs the app and closes the engine."""
    from ppp_jax.sampling.chat import load_tokenizer
    from ppp_jax.sampling.engine import Engine
    from ppp_jax.sampling.server import build_app

    path = Path(cfg.checkpoint)
    if not path.exists():
        if not cfg.build_tiny_if_missing:
            raise SystemExit(f"ppp serve: checkpoint directory {path} does not exist")
        from ppp_jax.sampling.testing import write_tiny_serving_checkpoint

        logging.info("writing a random tiny checkpoint into %s", path)
        write_tiny_serving_checkpoint(path)
    mesh = None
    rules = {}
    if cfg.mesh:
        from ppp_jax.model.sharding import SAMPLING_RULES, make_mesh

        mesh, rules = make_mesh(dict(cfg.mesh)), {"rules": SAMPLING_RULES}
    engine = Engine.from_pretrained(path, cfg.engine, mesh=mesh, dtype=cfg.dtype, **rules)
    if cfg.warmup:
        engine.warmup()
    app = build_app(engine, load_tokenizer(path), cfg.model_name,
                    default_max_tokens=cfg.default_max_tokens)
    return engine, app


def run(args: argparse.Namespace) -> int:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, ServeConfig, args.overrides)
    engine, app = build_server(cfg)
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info")
    finally:
        engine.close()
    return 0
