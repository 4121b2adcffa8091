"""The `ppp` command: one entry point, one subcommand per job.

Subcommands live in their own modules and are imported only when chosen, so `ppp --help` is fast
and a subcommand's heavy imports (jax, torch, transformers) never slow the others. Each command
module exposes `add_arguments(parser)` and `run(args) -> int`.

One grammar for every command: `ppp COMMAND CONFIG [KEY=VALUE ...] [--option ...]`, options
before or after the overrides. Exit codes are the same everywhere: 0 done, 1 a crash (a bug: the
traceback is printed), 2 bad input (one line says what is wrong and where), 3 stopped before the
end (rerun the same command to resume), 130 interrupted by Ctrl+C.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import textwrap

EXIT_OK, EXIT_CRASH, EXIT_USER_ERROR, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: its module and what `--help` (and the README's table) says about it."""

    module: str
    summary: str
    needs: str
    writes: str
    typical_time: str
    exit_codes: str = ""  # command-specific codes, besides the common ones
    takes_overrides: bool = True


# In the order of a workflow: try it, bring weights in, warm-start, train, evaluate, serve; then
# the planning tool for large slices.
COMMANDS: dict[str, Command] = {
    "demo": Command(
        "ppp_jax.commands.demo",
        "run the whole pipeline on a tiny config (what `make run` does): build, SFT, eval, PPP RL, "
        "eval, report",
        needs="a run config (configs/tiny_cpu.yaml); nothing else (offline)",
        writes="runs/<name>/: tokenizer.json, sft_policy/, ppp/, eval_before.json, "
               "eval_after.json, report.md, summary.json, PNG plots",
        typical_time="4-7 min on a 2-core CPU (tiny_cpu); reruns reuse finished stages",
        exit_codes="3 a stage was stopped by a signal (rerun to resume)"),
    "convert": Command(
        "ppp_jax.commands.convert",
        "convert checkpoints: Hugging Face <-> orbax (tokenizer and chat template travel along)",
        needs="hf2orbax: a Hugging Face directory (config.json, safetensors, tokenizer); "
              "orbax2hf: a model checkpoint (`ppp sft`'s sft_policy/, `ppp train`'s policy/)",
        writes="DST (created atomically; an existing DST is refused unless --overwrite)",
        typical_time="seconds (tiny); minutes for 36B (one tensor at a time)",
        takes_overrides=False),
    "data": Command(
        "ppp_jax.commands.data",
        "prepare a benchmark for training and evaluation: `ppp data swe` (SWE-bench / SWE-Gym rows "
        "+ clones) or `ppp data browsecomp` (queries + corpus): checks, vague prompts (LLM or "
        "rule vaguenizer), indexes, train/test split",
        needs="a data config (configs/data_*.yaml) naming local row files (or Hugging Face "
              "datasets when online) and, for swe, a folder of clones; an OpenAI-compatible "
              "endpoint for vaguenizer.backend: llm",
        writes="<output>/ (rows, train.jsonl, test.jsonl, dropped.json, manifest.json; "
               "browsecomp: corpus.jsonl, bm25/, dense/), all at once; "
               "<output>.vague_cache.jsonl (the LLM rewrites, for resuming)",
        typical_time="seconds without the LLM (the tests' repository); the LLM vaguenizer: one "
                     "request per row (27 s each with SmolLM2-135M on 2 CPU cores); the dense "
                     "index: 7 documents/s with MiniLM on 2 shared CPU cores (256 tokens each)",
        exit_codes="1 the data cannot be used (malformed row, missing clone, too many failed "
                   "rewrites, existing output): nothing written, rerun resumes"),
    "sft": Command(
        "ppp_jax.commands.sft",
        "supervised warm start on scripted episodes (the first step before `ppp train`)",
        needs="a run config; the tokenizer is trained into <run>/tokenizer.json if missing",
        writes="<run>/sft/ (metrics, checkpoints; resumable), <run>/sft_policy/ (model checkpoint "
               "+ tokenizer, which `ppp train` on the same config starts from)",
        typical_time="3-7 min (tiny_cpu: 120 steps; 6.6 min measured on a busy 2-core CPU)",
        exit_codes="3 stopped by a signal (rerun to resume)"),
    "train": Command(
        "ppp_jax.commands.train",
        "PPP reinforcement learning on a run config (resumable)",
        needs="a run config; starting weights from policy.path, else <run>/sft_policy/ "
              "(`ppp sft`), else random (said on start); a tokenizer (policy.tokenizer, beside "
              "the weights, or <run>/tokenizer.json)",
        writes="<run>/: metrics.jsonl, tb/, checkpoints/ (resume), policy/ (model checkpoint + "
               "tokenizer, for `ppp eval` and `ppp convert orbax2hf`)",
        typical_time="2-3 min for tiny_cpu's 16 steps; hours on a slice",
        exit_codes="3 stopped by a signal (rerun to resume)"),
    "eval": Command(
        "ppp_jax.commands.eval",
        "Table-2 evaluation of a policy (Markdown + JSON)",
        needs="a run config; weights (--checkpoint, eval.checkpoint, <run>/policy, "
              "<run>/checkpoints or policy.path) and their tokenizer, or eval.backend: openai",
        writes="<run>/<name>.json and <run>/<name>.md (--name, default eval)",
        typical_time="1-2 min (tiny_cpu, 10 tasks); progress every 30 s when not on a terminal"),
    "serve": Command(
        "ppp_jax.commands.serve",
        "serve a checkpoint over an OpenAI-compatible HTTP API (chat + completions, streaming)",
        needs="a serve config (configs/serve_tiny.yaml) naming a Hugging Face directory with "
              "weights, tokenizer and chat template (`ppp convert orbax2hf` writes one)",
        writes="nothing (listens on host:port until stopped)",
        typical_time="starts in about a minute (tiny: compiles every prefill bucket first)"),
    "compile": Command(
        "ppp_jax.commands.compile",
        "AOT-compile a PPP iteration (train step, pi_old pass, engine) for a TPU topology; "
        "memory per phase and FLOPs per chip",
        needs="a run config and libtpu (the test extra); no TPU and no weights",
        writes="stdout report; --json PATH",
        typical_time="seconds (tiny); 2-6 min per step for 36B",
        exit_codes="1 some step, or a phase of the iteration, does not fit in HBM (the message "
                   "says by how much)"),
}

COMMON_EXIT_CODES = ("0 done; 1 refused or failed: a run folder, checkpoint or data file that "
                     "cannot be used (one line says why), or a crash (a bug: traceback printed); "
                     "2 bad input: config, override, path or argument (one line names what and "
                     "where); 130 interrupted (Ctrl+C)")

# Exceptions that mean "the input is wrong" (config, checkpoint, path, data row): one line and
# exit 2. Named by module so that no module is imported just to be checked; an exception whose
# module was never imported cannot have been raised.
USER_ERRORS = (
    ("builtins", "FileNotFoundError"),
    ("builtins", "FileExistsError"),
    ("builtins", "NotADirectoryError"),
    ("ppp_jax.commands._common", "UsageError"),
    ("ppp_jax.config.loader", "ConfigError"),
    ("ppp_jax.model.checkpoint", "CheckpointError"),
    ("ppp_jax.model.config", "ModelConfigError"),
    ("ppp_jax.model.safetensors_io", "CheckpointFormatError"),
    ("ppp_jax.model.sharding", "ShardingError"),
    ("ppp_jax.scale.chips", "AotError"),
    ("ppp_jax.demo", "StaleRunError"),
    ("ppp_jax.train.checkpointing", "CheckpointError"),
    ("ppp_jax.train.data", "MalformedRecordError"),
    ("ppp_jax.envs.simulator", "SimulatorUnavailable"),
    ("ppp_jax.envs.llm_client", "LLMRequestError"),
)


def is_user_error(exc: BaseException) -> bool:
    """True when `exc` is one of `USER_ERRORS` (bad input, not a bug in ppp_jax)."""
    for module, name in USER_ERRORS:
        mod = sys.modules.get(module)
        cls = getattr(mod, name, None) if mod is not None else None
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def version() -> str:
    """The installed distribution's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("ppp-jax")
    except PackageNotFoundError:
        return "unknown (not installed)"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's and epilog's line breaks and appends each option's default when
    it says something (not None, False or empty)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" not in text and action.option_strings
                and default not in (None, False, "", [], argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text


def epilog(cmd: Command) -> str:
    """The `--help` epilog: prerequisites, outputs, typical time and exit codes."""
    codes = COMMON_EXIT_CODES + (f"; {cmd.exit_codes}" if cmd.exit_codes else "")
    fields = (("needs", cmd.needs), ("writes", cmd.writes), ("typical time", cmd.typical_time),
              ("exit codes", codes))
    return "\n".join(textwrap.fill(f"{label}: {text}", width=100, subsequent_indent="    ")
                     for label, text in fields)


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ppp", description=__doc__.splitlines()[0], formatter_class=HelpFormatter,
        epilog="workflow: ppp sft CONFIG, then ppp train CONFIG (starts from the SFT policy), "
               "ppp eval CONFIG, ppp convert orbax2hf <run>/policy DIR, ppp serve SERVE_CONFIG "
               "checkpoint=DIR. `ppp COMMAND --help` says what each needs and writes.\n"
               f"exit codes: {COMMON_EXIT_CODES}")
    parser.add_argument("--version", action="version", version=f"ppp {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        sub.add_parser(name, help=cmd.summary, add_help=False)
    return parser


def command_parser(name: str) -> argparse.ArgumentParser:
    """The argument parser of `ppp NAME` (imports the command's module)."""
    cmd = COMMANDS[name]
    module = importlib.import_module(cmd.module)
    parser = argparse.ArgumentParser(prog=f"ppp {name}", description=cmd.summary,
                                     epilog=epilog(cmd), formatter_class=HelpFormatter)
    module.add_arguments(parser)
    return parser


def _refuse_dash_o(name: str, rest: list[str]) -> str | None:
    """The error line for the retired `-o KEY=VALUE` spelling, or None."""
    for arg in rest:
        if arg == "--":
            return None
        if arg in ("-o", "--override") or arg.startswith(("--override=", "-o=")) or (
                arg.startswith("-o") and "=" in arg and not arg.startswith("--")):
            return (f"ppp {name}: error: -o/--override is gone; write overrides directly after "
                    f"the config, e.g. `ppp {name} CONFIG port=9000 engine.num_slots=32`")
    return None


# PCI device ids of Google TPU chips (v3, v4, v5p, v5e, v6e, TPU7x and one unnamed), vendor
# 0x1ae0: the same list JAX's backend selection checks. Other Google PCI devices (gVNIC, local
# NVMe) share the vendor id, so the device id must be checked.
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = frozenset({"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"})


def tpu_present(sys_root: str = "/") -> bool:
    """True when this machine has a TPU chip, or might: a TPU PCI device, /dev/accel* or a VFIO
    group (v5p/v6e VMs expose chips through VFIO). Reads /sys and /dev only; imports no JAX."""
    import glob

    root = sys_root.rstrip("/")
    for vendor_file in glob.glob(f"{root}/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor_file) as f:
                if f.read().strip() != _GOOGLE_PCI_VENDOR:
                    continue
            with open(os.path.join(os.path.dirname(vendor_file), "device")) as f:
                if f.read().strip() in _TPU_PCI_DEVICES:
                    return True
        except OSError:
            continue
    vfio_groups = [p for p in glob.glob(f"{root}/dev/vfio/*") if not p.endswith("/vfio")]
    return bool(glob.glob(f"{root}/dev/accel*") or vfio_groups)


def default_jax_platforms(environ: dict[str, str] | None = None, sys_root: str = "/") -> str | None:
    """What JAX_PLATFORMS should default to in this process, or None to leave JAX's choice.

    With libtpu installed (the test extra installs it for AOT compiles) JAX probes the TPU
    backend even on a machine without a TPU, and libtpu prints initialization errors
    (TPU_WORKER_HOSTNAMES, the multi-process lockfile) to stderr. Without a TPU chip that backend
    cannot be used anyway, so the probe is skipped: "cpu", or "cuda,cpu" when a CUDA plugin and an
    NVIDIA device are present. A user's own JAX_PLATFORMS always wins; on a TPU VM, or without
    libtpu, nothing changes. Must run before jax is imported (JAX reads the variable then).
    """
    import importlib.util

    env = os.environ if environ is None else environ
    if env.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
        return None
    if tpu_present(sys_root):
        return None
    cuda = any(importlib.util.find_spec(m) is not None
               for m in ("jax_cuda12_plugin", "jax_cuda13_plugin"))
    root = sys_root.rstrip("/")
    nvidia = any(os.path.exists(f"{root}{d}") for d in ("/dev/nvidia0", "/dev/nvidiactl"))
    return "cuda,cpu" if cuda and nvidia else "cpu"


def main(argv: list[str] | None = None) -> int:
    """`ppp ...`; returns the exit code (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _top_parser()
    if not argv or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help", "--version"):
            parser.print_usage(sys.stderr)
            print(f"ppp: error: unknown command {argv[0]!r}; choose from "
                  f"{', '.join(COMMANDS)}", file=sys.stderr)
            return EXIT_USER_ERROR
        if argv and argv[0] == "--version":
            print(f"ppp {version()}")
            return EXIT_OK
        parser.print_help()
        return EXIT_OK
    name, rest = argv[0], argv[1:]
    if COMMANDS[name].takes_overrides and (why := _refuse_dash_o(name, rest)):
        print(why, file=sys.stderr)
        return EXIT_USER_ERROR
    platforms = default_jax_platforms()
    if platforms:
        os.environ["JAX_PLATFORMS"] = platforms
    cmd_parser = command_parser(name)
    try:
        # Options may come before or after the KEY=VALUE overrides.
        args = cmd_parser.parse_intermixed_args(rest)
    except SystemExit as e:  # argparse: usage error (2) or --help (0)
        return int(e.code or 0)
    module = importlib.import_module(COMMANDS[name].module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"ppp {name}: interrupted; run the same command again to resume where it can",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if not is_user_error(e):
            raise
        print(f"ppp {name}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR


def one_line(exc: BaseException) -> str:
    """An exception as one line: its message with line breaks folded (FileNotFoundError from
    the OS as 'No such file or directory: PATH')."""
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
