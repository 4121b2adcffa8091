"""The `ppp` command: one entry point, one subcommand per job.

Subcommands live in their own modules and are imported only when chosen, so `ppp --help` is fast
and a subcommand's heavy imports (jax, torch, transformers) never slow the others. Each command
module exposes `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Later issues add rows here.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("ppp_jax.commands.demo", "run the main end-to-end job on a tiny config (what `make run` does)"),
    "convert": ("ppp_jax.commands.convert", "convert checkpoints: Hugging Face <-> orbax"),
    "train": ("ppp_jax.commands.train", "PPP reinforcement learning on a run config (resumable)"),
    "eval": ("ppp_jax.commands.eval", "Table-2 evaluation of a policy (Markdown + JSON)"),
    "sft": ("ppp_jax.commands.sft", "supervised warm start on scripted episodes"),
    "compile": ("ppp_jax.commands.compile", "AOT-compile the train step and engine for a TPU topology; memory/FLOPs per chip"),
    "serve": ("ppp_jax.commands.serve", "serve a checkpoint over an OpenAI-compatible HTTP API (chat + completions, streaming)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="ppp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_help(sys.stderr)
            print(f"\nppp: unknown command {argv[0]!r}; choose from {sorted(COMMANDS)}", file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    cmd_parser = argparse.ArgumentParser(prog=f"ppp {name}", description=COMMANDS[name][1])
    module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
