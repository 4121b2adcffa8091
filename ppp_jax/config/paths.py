"""Every path a run config names: who reads it, and the check that it is there before any work.

A path in a config is either read (an input: it must exist before the command builds anything)
or written (an output: created when missing, refused when something else is in its way). A
path key a command does not read is refused at load time (`data.train_path`, another domain's
keys: `ppp_jax.config.run`), so no path is silently ignored.

Inputs (must exist before the command builds anything):
  policy.path             HF or orbax checkpoint directory: train, sft, demo, eval (engine)
  policy.tokenizer        tokenizer.json or a tokenizer directory: train, eval (engine); an
                          output (a tokenizer is trained there) for sft and demo, and for train
                          with the stdlib domain and no policy.path
  eval.checkpoint         model or training-run directory: eval (engine); --checkpoint wins
  domain.swe_rows         .jsonl/.json/.parquet file, or a Hugging Face dataset name (needs the
                          `datasets` package): every command, domain swe_func_loc
  domain.swe_clone_root   directory of local clones: every command, domain swe_func_loc
  domain.browsecomp_queries, domain.browsecomp_corpus   local data files: domain browsecomp_plus
  simulator.preference_texts  the released data files with the preference strings: every
                          command, LLM simulator (envs.preference_texts)
Outputs (created; refused when a file is in the way):
  run_dir                 <run_dir>/<name>/: every command
  domain.swe_cache_dir    repository snapshots: domain swe_func_loc
Refused at load time (no command reads it): data.train_path, another domain's keys.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ppp_jax.config.loader import ConfigError
from ppp_jax.envs.domains.rows import DATA_SUFFIXES

if TYPE_CHECKING:
    from ppp_jax.config.run import RunConfig

COMMANDS = ("train", "sft", "eval", "demo")


class MissingPathError(ConfigError, FileNotFoundError):
    """A path the config names is not there (or not of the right kind): a ConfigError, and a
    FileNotFoundError for callers that catch that."""


def looks_like_local_file(source: str) -> bool:
    """A data source written as a file (a data suffix, or an existing path) rather than a Hugging
    Face dataset name such as "princeton-nlp/SWE-bench_Verified"."""
    return source.endswith(DATA_SUFFIXES) or os.path.exists(source)


def _input(key: str, value: str, what: str, kind: str = "any") -> str | None:
    """A problem line for an input path that is missing or of the wrong kind, else None."""
    p = Path(value)
    if not p.exists():
        return f"{key}: {value!r} does not exist ({what})"
    if kind == "file" and not p.is_file():
        return f"{key}: {value!r} is not a file ({what})"
    if kind == "dir" and not p.is_dir():
        return f"{key}: {value!r} is not a directory ({what})"
    return None


def _output_dir(key: str, value: str) -> str | None:
    p = Path(value)
    if p.exists() and not p.is_dir():
        return f"{key}: {value!r} exists and is not a directory (it is where outputs are written)"
    return None


def domain_path_problems(cfg: RunConfig) -> list[str]:
    """Problems with the paths of the configured domain's section (every command reads them)."""
    d = cfg.domain
    out: list[str | None] = []
    if d.name == "swe_func_loc":
        for key in ("swe_rows", "swe_clone_root", "swe_cache_dir"):
            if not getattr(d, key):
                out.append(f"domain.{key}: empty, and domain swe_func_loc needs it (SWE-bench rows, "
                           "a directory of local clones, a snapshot directory)")
        if d.swe_rows:
            if looks_like_local_file(d.swe_rows):
                out.append(_input("domain.swe_rows", d.swe_rows,
                                  "SWE-bench rows: .jsonl, .json or .parquet", "file"))
            elif importlib.util.find_spec("datasets") is None:
                out.append(f"domain.swe_rows: {d.swe_rows!r} is not a local file, and reading a "
                           "Hugging Face dataset needs `pip install datasets` (and network); "
                           "give a local .jsonl/.json/.parquet file instead")
        if d.swe_clone_root:
            out.append(_input("domain.swe_clone_root", d.swe_clone_root,
                              "a directory of git clones named owner__name", "dir"))
        if d.swe_cache_dir:
            out.append(_output_dir("domain.swe_cache_dir", d.swe_cache_dir))
    elif d.name == "browsecomp_plus":
        for key, what in (("browsecomp_queries", "BrowseComp-Plus query rows"),
                          ("browsecomp_corpus", "BrowseComp-Plus corpus rows")):
            value = getattr(d, key)
            if not value:
                out.append(f"domain.{key}: empty, and domain browsecomp_plus needs it ({what}: a "
                           "local .jsonl, .json or .parquet file)")
            else:
                out.append(_input(f"domain.{key}", value, f"{what}: .jsonl, .json or .parquet",
                                  "file"))
        if d.browsecomp_index:
            out.append(_input("domain.browsecomp_index", d.browsecomp_index,
                              "a folder `ppp data browsecomp` wrote (manifest.json, bm25/, dense/)",
                              "dir"))
    out.append(_output_dir("run_dir", cfg.run_dir))
    return [p for p in out if p]


def input_path_problems(cfg: RunConfig, command: str, *, checkpoint_arg: str = "") -> list[str]:
    """Problems with every path `command` ("train", "sft", "eval", "demo") would read from `cfg`,
    one line each (key, path, what it should be); [] when all are in place. `checkpoint_arg` is
    `ppp eval --checkpoint`, which takes the place of `eval.checkpoint`."""
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {COMMANDS}, got {command!r}")
    out: list[str | None] = list(domain_path_problems(cfg))
    engine = not (command == "eval" and cfg.eval.backend == "openai")
    p = cfg.policy
    if engine and p.path:
        out.append(_input("policy.path", p.path, "a Hugging Face checkpoint directory or a "
                          "`ppp convert hf2orbax` / `ppp train` policy directory"))
    # sft and demo train a tokenizer into policy.tokenizer when it is missing, and so does
    # train for the embedded stdlib domain without a checkpoint (`ppp_jax.demo.build_stage`)
    trains_tokenizer = command in ("sft", "demo") or (
        command == "train" and not p.path and cfg.domain.name == "stdlib_loc")
    if engine and p.tokenizer and not trains_tokenizer:
        out.append(_input("policy.tokenizer", p.tokenizer,
                          "a tokenizer.json file or a Hugging Face tokenizer directory"))
    if command == "eval" and engine:
        if checkpoint_arg:
            out.append(_input("--checkpoint", checkpoint_arg,
                              "a model directory (`ppp train` writes <run>/policy, `ppp sft` "
                              "<run>/sft_policy, `ppp convert hf2orbax` one from a Hugging Face "
                              "checkpoint) or a `ppp train` run directory"))
        elif cfg.eval.checkpoint:
            out.append(_input("eval.checkpoint", cfg.eval.checkpoint,
                              "a model directory (`ppp train` writes <run>/policy, `ppp sft` "
                              "<run>/sft_policy, `ppp convert hf2orbax` one from a Hugging Face "
                              "checkpoint) or a `ppp train` run directory"))
    if cfg.simulator.backend == "llm":
        for i, f in enumerate(cfg.simulator.preference_texts):
            out.append(_input(f"simulator.preference_texts[{i}]", f, "a released data file "
                              "(.parquet/.jsonl/.json) whose rows carry extra_info.preference",
                              "file"))
    return [x for x in out if x]


def check_input_paths(cfg: RunConfig, command: str, *, checkpoint_arg: str = "") -> None:
    """Raises MissingPathError with the first problem of `input_path_problems` (and how many more
    there are, with their keys) on one line; returns quietly when every path is in place."""
    problems = input_path_problems(cfg, command, checkpoint_arg=checkpoint_arg)
    if problems:
        more = ""
        if len(problems) > 1:
            keys = [x.split(":", 1)[0] for x in problems[1:]]
            more = f" (and {len(problems) - 1} more: {', '.join(keys)})"
        raise MissingPathError(problems[0] + more)


def check_domain_paths(cfg: RunConfig) -> None:
    """`check_input_paths` for the domain's own paths only (any command that builds tasks)."""
    problems = domain_path_problems(cfg)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise MissingPathError(problems[0] + more)
