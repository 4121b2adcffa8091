"""`ppp eval CONFIG [key=value ...] [--checkpoint PATH] [--name NAME]`: the Table-2 evaluation.

Evaluates a policy with the paper's protocol (`ppp_jax.eval.evaluate`): the config's `eval` section
picks the tasks (held-out split), preferences (seen / held-out / all), prompt kinds and sampling.
The policy is, with `eval.backend: engine`, our model through the sampling engine, its weights
from (first that exists) `--checkpoint`, `eval.checkpoint`, `<run>/policy`, the latest training
checkpoint in `<run>/checkpoints`, or `policy.path`; with `eval.backend: openai`, any
OpenAI-compatible chat model (`eval.openai_model`, `eval.openai_base_url`).
Writes `<run>/<name>.json` and `<run>/<name>.md` (name defaults to "eval").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ppp_jax.commands._common import add_config_arguments, load, log_compile_stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", default="",
                        help="weights to evaluate: a model checkpoint (HF or orbax model dir) or a "
                             "training run directory with checkpoints/")
    parser.add_argument("--name", default="eval", help="output file stem under the run directory")


def _weights(cfg, override: str) -> tuple[str, Path | None]:
    """(description, path) of the weights to evaluate; path None = the model as built.

    Raises:
      FileNotFoundError when --checkpoint or eval.checkpoint names a path that does not exist,
      saying what writes one.
    """
    out = cfg.output_dir
    for cand, name in ((override, "--checkpoint"), (cfg.eval.checkpoint, "eval.checkpoint")):
        if cand:
            p = Path(cand)
            if not p.exists():
                raise FileNotFoundError(
                    f"{name} {p.absolute()} does not exist; model checkpoints are written by "
                    f"`ppp sft` (<run>/sft_policy), `ppp train` (<run>/policy) and `ppp convert`, "
                    f"and a training run directory (with checkpoints/) by `ppp train`")
            if (p / "checkpoints").is_dir():
                return "training checkpoint", p
            return "model checkpoint", p
    if (out / "policy" / "model_config.json").exists():
        return "model checkpoint", out / "policy"
    for run in (out, out / "ppp"):  # `ppp train` runs, and the demo's PPP stage
        if (run / "checkpoints").is_dir():
            return "training checkpoint", run
    if cfg.policy.path:
        return "model checkpoint", Path(cfg.policy.path)
    return "random init", None


def run_setup(cfg, domain) -> dict:
    """What the report records about the run's parts: the domain, its retriever and answer judge
    (the domain's optional `describe_setup` hook, with the judge's counters), and the user
    simulator's backend and model."""
    sim = cfg.simulator
    setup = {"domain": cfg.domain.name,
             "simulator": {"backend": sim.backend,
                           **({"model": sim.model, "base_url": sim.base_url}
                              if sim.backend == "llm" else {})}}
    describe = getattr(domain, "describe_setup", None)  # an optional domain hook
    if describe is not None:
        setup.update(describe())
    return setup


def setup_markdown(setup: dict) -> str:
    """The report's "Setup" section: one line per part."""
    lines = ["", "## Setup", "", f"- domain: {setup['domain']}"]
    sim = setup["simulator"]
    lines.append(f"- user simulator: {sim['backend']}"
                 + (f" ({sim['model']} at {sim['base_url'] or 'api.openai.com'})"
                    if sim["backend"] == "llm" else ""))
    if "retriever" in setup:
        detail = setup.get("retriever_detail") or {}
        extra = ", ".join(f"{k}={v}" for k, v in detail.items() if k != "kind" and v is not None)
        lines.append(f"- retriever: {setup['retriever']}" + (f" ({extra})" if extra else ""))
    if "judge" in setup:
        stats = ", ".join(f"{k} {v}" for k, v in (setup.get("judge_stats") or {}).items())
        lines.append(f"- answer judge: {setup['judge']}"
                     + (f", re-judge {setup['rejudge']}" if setup.get("rejudge") else "")
                     + (f" ({stats})" if stats else ""))
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    cfg = load(args, "ppp eval")
    if cfg is None:
        return 2
    from ppp_jax.config.loader import to_dict
    from ppp_jax.config.profiles import profile_summary

    print(f"ppp eval: {profile_summary(cfg.profile, to_dict(cfg))}", flush=True)
    if cfg.eval.backend != "openai":
        try:  # before anything is built: a wrong path is said at once
            _weights(cfg, args.checkpoint)
        except FileNotFoundError as e:
            print(f"ppp eval: {e}", file=sys.stderr)
            return 1
    from ppp_jax.envs.simulator_backends import make_simulator
    from ppp_jax.eval import evaluate
    from ppp_jax.sampling.chat import load_tokenizer
    from ppp_jax.train.builders import (
        agent_domain,
        build_model,
        build_tasks,
        make_engine,
        make_policy,
    )
    from ppp_jax.train.trainer import restore_params

    from ppp_jax.commands._policy import tokenizer_candidates
    from ppp_jax.sampling.chat import find_tokenizer

    tokenizer_source = None
    if cfg.eval.backend != "openai":
        # Weights and tokenizer are found (or refused) before anything is built.
        kind, path = _weights(cfg, args.checkpoint)
        beside = (path if kind == "model checkpoint" else
                  path / "policy" if path is not None else None)
        tokenizer_source = find_tokenizer(tokenizer_candidates(cfg, beside))
    try:
        tasks, inner = build_tasks(cfg)
    except (FileNotFoundError, ValueError) as e:  # a missing data file, a bad row: one line
        print(f"ppp eval: {e}", file=sys.stderr)
        return 1
    tasks = [t for t in tasks if t.split == cfg.eval.split] or tasks
    if cfg.eval.num_tasks:
        tasks = tasks[: cfg.eval.num_tasks]
    domain = agent_domain(cfg, inner)
    simulator = make_simulator(cfg.simulator)
    engine = None
    if cfg.eval.backend == "openai":
        from ppp_jax.envs.llm_client import LLMClient, LLMClientConfig
        from ppp_jax.envs.policy import OpenAIPolicy

        client = LLMClient(LLMClientConfig(model=cfg.eval.openai_model,
                                           base_url=cfg.eval.openai_base_url,
                                           api_key_env=cfg.eval.openai_api_key_env,
                                           temperature=cfg.eval.temperature))
        policy = OpenAIPolicy(client)
        what = f"OpenAI-compatible model {cfg.eval.openai_model}"
    else:
        tokenizer = load_tokenizer(tokenizer_source)
        from ppp_jax.train.checkpointing import CheckpointError

        if kind == "model checkpoint":
            model = build_model(cfg, tokenizer, path=path)
        else:
            model = build_model(cfg, tokenizer)
            if kind == "training checkpoint":
                from flax import nnx

                try:
                    params, step = restore_params(path, nnx.state(model, nnx.Param))
                except CheckpointError as e:
                    print(f"ppp eval: {e}", file=sys.stderr)
                    return 1
                nnx.update(model, params)
                kind = f"training checkpoint step {step}"
        what = f"{kind} {path or ''}".strip()
        engine = make_engine(cfg, model)
        policy = make_policy(cfg, engine, tokenizer, temperature=cfg.eval.temperature)
    try:
        result = evaluate.evaluate(policy, domain, simulator, tasks, cfg.eval,
                                   episode=cfg.rollout.episode, concurrency=cfg.rollout.concurrency,
                                   progress=not args.no_progress, metrics=cfg.metrics)
    finally:
        if engine is not None:
            engine.close()
        log_compile_stats()
    result["policy"] = what
    result["setup"] = run_setup(cfg, inner)
    result["profile"] = cfg.profile
    result["profile_summary"] = profile_summary(cfg.profile, to_dict(cfg))
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    text = evaluate.to_markdown(result, f"Evaluation of {what}") + setup_markdown(result["setup"])
    if not result.get("n_episodes"):
        c = result.get("counters", {})
        why = (f"no episode was kept: {c.get('episodes_run', 0)} run, {c.get('retried', 0)} re-run, "
               f"{c.get('dropped_errors', 0)} dropped after errors (simulator malformed "
               f"{c.get('simulator_malformed', 0)}, score errors {c.get('score_errors', 0)}); the "
               "table is empty, nothing was scored")
        text += f"\n**{why}**\n"
        print(f"ppp eval: warning: {why}", file=sys.stderr)
    (out / f"{args.name}.md").write_text(text)
    print(text)
    print(f"ppp eval: wrote {out / (args.name + '.json')} and {out / (args.name + '.md')}")
    return 0
