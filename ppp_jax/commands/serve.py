"""`ppp serve CONFIG`: the sampling engine behind an OpenAI-compatible HTTP API.

    ppp serve configs/serve_tiny.yaml                    # tiny random model, builds it if missing
    ppp serve my_serve.yaml port=9000 engine.num_slots=32    # overrides: KEY=VALUE

Then any OpenAI client works against http://HOST:PORT/v1 (`/v1/chat/completions`,
`/v1/completions`, `/v1/models`), including tool calling (`tools`, `tool_choice` auto/none;
calls come back as `tool_calls`, reasoning as `reasoning_content`), `n` samples per prompt
(sharing the prompt's KV pages) and streaming. See `ppp_jax.sampling.server`.

Shutdown: the first SIGTERM or SIGINT stops accepting connections and lets requests in flight
finish for up to `drain_timeout_s` seconds (then they are cut off); a second signal exits at
once. Either signal while the model loads exits at once with one line. Exit status: 0 after a
clean drain; 1 when requests in flight were cut off or start-up failed (one line on stderr);
2 for a config error; 128 + the signal number (130 for Ctrl+C) when interrupted while starting.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
import time
from pathlib import Path

from ppp_jax.commands._common import add_override_arguments
from ppp_jax.config.compile_cache import CompileCacheConfig
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
      max_request_bytes: largest request body accepted; larger ones get 413 before they are
        read whole.
      drain_timeout_s: on shutdown, how long requests in flight may run before they are cut off.
      engine: engine sizes (slots, pages, context length, ...); `max_stop_tokens` is how many
        stop ids a client may send, the EOS id the server adds comes on top.
      chat_format: the checkpoint's tool-call format ("seed_oss", "hermes", "llama3",
        "llama3_pythonic"); "" = told by the
        tokenizer's special tokens.
      compile_cache: JAX's persistent compilation cache (`dir: ""` turns it off), so a second
        start loads the warmed-up programs instead of compiling them.
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
    max_request_bytes: int = 4 * 2**20
    drain_timeout_s: float = 30.0
    engine: EngineConfig = EngineConfig()
    chat_format: str = ""
    compile_cache: CompileCacheConfig = CompileCacheConfig()

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        for name in ("default_max_tokens", "max_request_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.drain_timeout_s >= 0:
            raise ValueError(f"drain_timeout_s must be >= 0, got {self.drain_timeout_s}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="serve config YAML (see configs/serve_tiny.yaml)")
    add_override_arguments(parser, example="port=8011 engine.num_slots=16")


class StartupError(Exception):
    """`ppp serve` cannot start (printed as one line, exit status 1)."""


def check_tokenizer(path: Path):
    """The checkpoint's transformers tokenizer, or StartupError when it has none or it has no
    chat template (checked before the engine is built, so no time is wasted)."""
    from ppp_jax.sampling.chat import load_tokenizer

    hint = ("tokenizer.json and tokenizer_config.json with its chat_template (copy them from the "
            "base model's checkpoint; `ppp convert orbax2hf` writes them next to the weights)")
    if not (path / "tokenizer_config.json").exists():
        raise StartupError(f"no tokenizer at {path.resolve()}: expected {hint}")
    try:
        tokenizer = load_tokenizer(path)
    except Exception as e:  # noqa: BLE001 - transformers' many ways to fail on a bad file
        raise StartupError(f"cannot load the tokenizer at {path.resolve()}: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    if not getattr(tokenizer, "chat_template", None):
        raise StartupError(f"the tokenizer at {path.resolve()} has no chat template, so "
                           f"/v1/chat/completions could not work: expected {hint}")
    return tokenizer


def build_server(cfg: ServeConfig):
    """(engine, Starlette app) for a config; the caller runs the app and closes the engine.
    Raises StartupError (before loading any weights) for a missing checkpoint, tokenizer or
    chat template."""
    from ppp_jax.sampling.engine import Engine
    from ppp_jax.sampling.server import build_app

    path = Path(cfg.checkpoint)
    if not path.exists():
        if not cfg.build_tiny_if_missing:
            raise StartupError(f"checkpoint directory {path} does not exist (set "
                               "build_tiny_if_missing: true to write a random tiny one)")
        from ppp_jax.sampling.testing import write_tiny_serving_checkpoint

        logging.info("writing a random tiny checkpoint into %s", path)
        write_tiny_serving_checkpoint(path)
    tokenizer = check_tokenizer(path)
    from ppp_jax.sampling.chat_format import FORMATS, detect_format, get_format

    if cfg.chat_format and cfg.chat_format not in FORMATS:
        raise StartupError(f"chat_format {cfg.chat_format!r} is not one of {sorted(FORMATS)}")
    try:
        chat_format = cfg.chat_format or detect_format(tokenizer)
    except ValueError as e:
        raise StartupError(str(e).replace("policy.chat_format", "chat_format")) from None
    mesh = None
    rules = {}
    if cfg.mesh:
        from ppp_jax.model.sharding import SAMPLING_RULES, make_mesh

        mesh, rules = make_mesh(dict(cfg.mesh)), {"rules": SAMPLING_RULES}
    logging.info("loading %s", path)
    # engine.max_stop_tokens counts the client's stop ids; the end-of-turn ids the server adds
    # (EOS, and the format's other turn ends: Llama 3's <|eom_id|>) get their own.
    own_ends = 1 + len(get_format(chat_format).stop_tokens)
    engine_cfg = dataclasses.replace(cfg.engine,
                                     max_stop_tokens=cfg.engine.max_stop_tokens + own_ends)
    engine = Engine.from_pretrained(path, engine_cfg, mesh=mesh, dtype=cfg.dtype, **rules)
    try:
        if cfg.warmup:
            engine.warmup()
        app = build_app(engine, tokenizer, cfg.model_name,
                        default_max_tokens=cfg.default_max_tokens,
                        max_request_bytes=cfg.max_request_bytes, chat_format=chat_format)
    except BaseException:
        engine.close()
        raise
    return engine, app


def make_uvicorn_server(app, cfg: ServeConfig):
    """A uvicorn server for `app` whose shutdown drains for at most `cfg.drain_timeout_s` and
    exits at once on a second SIGTERM or SIGINT (uvicorn alone forces only on SIGINT, and
    re-raises the signal afterwards, which skips our cleanup)."""
    import uvicorn

    class Server(uvicorn.Server):
        cut_off = False  # set when the drain timeout cancelled requests in flight

        def handle_exit(self, sig, frame):
            if self.should_exit:
                self.force_exit = True
                logging.warning("second %s: exiting now", signal.Signals(sig).name)
            else:
                self.should_exit = True
                logging.info("%s: draining requests in flight (up to %gs; signal again to exit "
                             "now)", signal.Signals(sig).name, cfg.drain_timeout_s)

        async def _wait_tasks_to_complete(self):
            try:
                await super()._wait_tasks_to_complete()
            except asyncio.CancelledError:  # the drain timeout ran out
                self.cut_off = True
                raise

    # lifespan "off": the app has no start-up/shut-down hooks, and a lifespan task left
    # waiting at a forced exit is cancelled with a logged traceback.
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level="info", lifespan="off",
                            timeout_graceful_shutdown=cfg.drain_timeout_s)
    return Server(config)


def _exit_while_starting(signum, frame):
    """SIGINT/SIGTERM while loading: one line and exit now. Exiting from the handler (rather
    than raising KeyboardInterrupt) is what makes it reliable: a KeyboardInterrupt raised inside
    a garbage-collection callback (JAX has one) is printed as "Exception ignored" and lost."""
    print(f"ppp serve: interrupted ({signal.Signals(signum).name}) while starting; nothing was "
          "served", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def run(args: argparse.Namespace) -> int:
    from ppp_jax.commands._compile_cache import use_compile_cache
    from ppp_jax.config.loader import ConfigError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, ServeConfig, args.overrides)
    except ConfigError as e:
        print(f"ppp serve: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    compile_stats = use_compile_cache(cfg.compile_cache)  # before anything is compiled
    # Until uvicorn takes both signals over, either one ends start-up with one line.
    previous = {sig: signal.signal(sig, _exit_while_starting)
                for sig in (signal.SIGINT, signal.SIGTERM)}
    from ppp_jax.model.checkpoint import CheckpointError
    from ppp_jax.model.config import ModelConfigError
    from ppp_jax.model.safetensors_io import CheckpointFormatError
    from ppp_jax.model.sharding import ShardingError

    try:
        engine, app = build_server(cfg)
    except (StartupError, CheckpointError, CheckpointFormatError, ModelConfigError,
            ShardingError, FileNotFoundError) as e:  # bad checkpoint or mesh: one line
        print(f"ppp serve: {e}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # e.g. "ready in 3.1 s; compile cache /root/.cache/ppp_jax/xla: 12 programs, 12 loaded ..."
    logging.info("ready in %.1f s; %s", time.perf_counter() - t0, compile_stats.summary())
    server = make_uvicorn_server(app, cfg)
    try:
        server.run()
    finally:
        engine.close()
    if server.force_exit or server.cut_off:
        print("ppp serve: stopped with requests in flight cut off", file=sys.stderr)
        return 1
    return 0
