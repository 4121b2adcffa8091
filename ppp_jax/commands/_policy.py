"""The hand-offs between commands: which weights a command starts from and where their tokenizer
is, said in one line, so that `ppp sft` -> `ppp train` -> `ppp convert` -> `ppp serve`/`ppp eval`
chain without the user copying files.

    <run>/tokenizer.json   written by the build stage (`ppp sft`, `ppp demo`, or `ppp train` on
                           the stdlib domain when there is none)
    <run>/sft_policy/      `ppp sft`: the warm-started model checkpoint + its tokenizer
    <run>/policy/          `ppp train`: the trained model checkpoint + its tokenizer
"""

from __future__ import annotations

from pathlib import Path

SFT_POLICY = "sft_policy"
WRITERS = {
    "tokenizer.json": "written by `ppp sft` or `ppp demo` on the same config",
    SFT_POLICY: "written by `ppp sft`",
}


def has_model(path: Path) -> bool:
    """True for a ppp_jax model checkpoint (orbax) or a Hugging Face model directory."""
    return (path / "model_config.json").is_file() or (path / "config.json").is_file()


def starting_policy(cfg):
    """(config, line): the config with `policy.path` set to the weights a training run starts
    from, and one line saying which. `policy.path` wins; when it is empty, the run's own SFT warm
    start (`<run>/sft_policy`, what `ppp sft` on the same config writes) is used; else the model
    is randomly initialized, which the line says, with how to warm-start instead."""
    from ppp_jax.config.loader import replace

    ckpts = cfg.output_dir / "checkpoints"
    resume = (f"; a checkpoint in {ckpts.absolute()} takes precedence (resume)"
              if ckpts.is_dir() and any(ckpts.iterdir()) else "")
    if cfg.policy.path:
        return cfg, f"starting from {Path(cfg.policy.path).absolute()} (policy.path){resume}"
    sft = cfg.output_dir / SFT_POLICY
    if has_model(sft):
        return (replace(cfg, policy=replace(cfg.policy, path=str(sft))),
                f"starting from the SFT warm start {sft.absolute()} (written by `ppp sft`)"
                f"{resume}")
    return cfg, (f"starting from RANDOM weights: policy.path is empty and there is no "
                 f"{sft.absolute()} (run `ppp sft CONFIG` first for a warm start, or set "
                 f"policy.path=DIR){resume}")


def tokenizer_candidates(cfg, *weights: Path | str | None) -> list[tuple[Path | str | None, str]]:
    """Where a run's tokenizer may be, in order: `policy.tokenizer`, beside each of `weights`,
    `<run>/tokenizer.json`, `policy.path` (for `ppp_jax.sampling.chat.find_tokenizer`)."""
    if cfg.policy.tokenizer:
        return [(cfg.policy.tokenizer, "policy.tokenizer")]
    out: list[tuple[Path | str | None, str]] = [
        (w, "beside the weights") for w in weights if w]
    out.append((cfg.output_dir / "tokenizer.json", WRITERS["tokenizer.json"]))
    if cfg.policy.path:
        out.append((cfg.policy.path, "policy.path"))
    return out
