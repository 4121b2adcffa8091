"""`ppp data {swe,browsecomp} CONFIG [KEY=VALUE ...]`: benchmark files -> a prepared data set.

    ppp data swe configs/data_swe_gym.yaml output=data/swe_gym vaguenizer.backend=rule
    ppp data browsecomp configs/data_browsecomp_plus.yaml

`swe` (`envs.domains.swe_prepare`): SWE-bench / SWE-Gym rows and clones -> rows that pass the
snapshot and gold-function checks, vague prompts, the train/test split. `browsecomp`
(`envs.domains.browsecomp_prepare`): queries + corpus -> vague queries, the BM25 index, the dense
index (memory-mapped at load), the split. Both write `<output>/manifest.json` (counts, sha256 of
every file, this config, the vaguenizer's model and prompt) and `dropped.json` (every dropped row
by reason), all at once or nothing. The LLM vaguenizer's rewrites are cached beside the output, so
a rerun (after a crash, Ctrl+C or a refusal) asks the endpoint only for rows it has not answered.

Exit codes: 0 done; 1 the data cannot be used (a malformed row, a missing clone, too many failed
rewrites, an existing output without overwrite=true: one line says which); 2 config error;
130 interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from ppp_jax.commands._common import add_override_arguments, configure_logging
from ppp_jax.envs.domains.browsecomp_prepare import BrowseCompSource, DenseSpec
from ppp_jax.envs.domains.swe_prepare import SweSource
from ppp_jax.envs.prepare import SplitSpec, VaguenizerSpec

KINDS = ("swe", "browsecomp")


@dataclasses.dataclass(frozen=True)
class DataPrepConfig:
    """What `ppp data` prepares.

    output: the prepared folder to write (refused when it exists, unless `overwrite`).
    overwrite: replace an existing prepared folder (only once the new one is complete).
    swe: the SWE rows and clones (`ppp data swe`; `envs.domains.swe_prepare.SweSource`).
    browsecomp: the queries and corpus (`ppp data browsecomp`;
      `envs.domains.browsecomp_prepare.BrowseCompSource`).
    dense: the dense index's embedding model and batching (`browsecomp` only).
    vaguenizer: how vague prompts are made (`envs.prepare.VaguenizerSpec`).
    split: the train/test split (`envs.prepare.SplitSpec`).
    """

    output: str = ""
    overwrite: bool = False
    swe: SweSource = SweSource()
    browsecomp: BrowseCompSource = BrowseCompSource()
    dense: DenseSpec = DenseSpec()
    vaguenizer: VaguenizerSpec = VaguenizerSpec()
    split: SplitSpec = SplitSpec()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KINDS, help="which benchmark to prepare")
    parser.add_argument("config", help="data config YAML (configs/data_*.yaml)")
    add_override_arguments(parser, example="output=data/mine vaguenizer.backend=rule")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--verbose", action="store_true", help="log ppp_jax's INFO messages")


def load_data_config(path: str, overrides: list[str]) -> DataPrepConfig:
    from ppp_jax.config.loader import load_config

    return load_config(path, DataPrepConfig, overrides)


def run(args: argparse.Namespace) -> int:
    from ppp_jax.config.loader import ConfigError, to_dict
    from ppp_jax.envs.domains.rows import DataError
    from ppp_jax.envs.llm_client import LLMRequestError

    configure_logging(args.verbose)
    prog = f"ppp data {args.kind}"
    try:
        cfg = load_data_config(args.config, list(args.overrides))
        if not cfg.output:
            raise ConfigError("output: empty; name the prepared folder to write "
                              "(e.g. output=data/swe_gym)", ("output",))
    except (ConfigError, ValueError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    config = {"kind": args.kind, "file": args.config, "overrides": list(args.overrides),
              "resolved": to_dict(cfg)}
    from ppp_jax.train.progress import ProgressBar

    def bar(total: int, desc: str) -> ProgressBar:
        return ProgressBar(total, desc=desc, enabled=not args.no_progress, postfix=())

    try:
        if args.kind == "swe":
            from ppp_jax.envs.domains.swe_prepare import prepare_swe

            manifest = prepare_swe(cfg.swe, cfg.vaguenizer, cfg.split, cfg.output,
                                   overwrite=cfg.overwrite, bar=bar, config=config)
        else:
            from ppp_jax.envs.domains.browsecomp_prepare import prepare_browsecomp

            manifest = prepare_browsecomp(cfg.browsecomp, cfg.dense, cfg.vaguenizer, cfg.split,
                                          cfg.output, overwrite=cfg.overwrite, bar=bar,
                                          config=config)
    except (DataError, FileExistsError, FileNotFoundError, LLMRequestError) as e:
        from ppp_jax.cli import one_line

        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 1
    c = manifest["counts"]
    v = manifest["vaguenizer"]["stats"]
    logging.getLogger("ppp_jax").info("vaguenizer stats: %s", v)
    print(f"{prog}: wrote {cfg.output}: {c['kept']} of {c['rows']} rows kept "
          f"({c['train']} train, {c['test']} test), {c['dropped']} dropped"
          + (f" ({', '.join(f'{r}: {n}' for r, n in c['dropped_by_reason'].items())})"
             if c["dropped"] else "")
          + f"; vague prompts: {manifest['vaguenizer']['sources']}, endpoint asked "
            f"{v['asked']} time(s), {v['cache_hits']} cache hit(s)")
    return 0
