"""The `make run` pipeline: PPP's effect in miniature, on CPU, offline, with the real system.

Stages (each writes its result under `runs/<name>/`; a finished stage is skipped on a rerun and an
interrupted one resumes from its checkpoint):

  1. build   the embedded stdlib function-localization tasks (`envs.domains.stdlib_loc`), scripted
             "untrained instruct model" episodes on the train tasks (real runner, real embedded
             simulator), a byte-level BPE tokenizer with the Seed-OSS special tokens trained on
             their text, and a tiny Seed-OSS-architecture policy (`model/`, random init);
  2. sft     supervised warm start on the scripted episodes through the RL train step
             (`ppp_jax.train.sft`), loss on assistant tokens only;
  3. before  evaluation of the warm-started policy (`ppp_jax.eval.evaluate`): held-out tasks, the 8
             held-out preferences, vague and precise prompts, through the sampling engine;
  4. ppp     PPP RL (`ppp_jax.train.trainer`): grain data, the engine, the orchestrator, the embedded
             simulator and rule judges, GRPO, orbax checkpoints, metrics.jsonl / TensorBoard;
  5. after   the same evaluation of the trained policy;
  6. report  `report.md`, `summary.json` and PNG plots (`ppp_jax.eval.report`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from ppp_jax.config import loader as cfgmod
from ppp_jax.config.run import RunConfig

log = logging.getLogger(__name__)

# The Seed-OSS special tokens the tokenizer must keep atomic (ids 0, 1, 2 = bos, pad, eos).
SPECIAL_TOKENS = ("<seed:bos>", "<seed:pad>", "<seed:eos>", "<seed:think>", "</seed:think>",
                  "<seed:cot_budget_reflect>", "</seed:cot_budget_reflect>",
                  "<seed:tool_call>", "</seed:tool_call>")

# A source path or a `path.py:Qual.name` location (the stdlib domain's answer form).
LOCATION_PATTERN = r"(?:[\w-]+/)*[\w-]+\.py(?::\w+(?:\.\w+)*)?"


def train_tokenizer(texts: list[str], vocab_size: int, locations: Sequence[str] = ()):
    """A byte-level BPE (`tokenizers`) with the Seed-OSS special tokens, trained on `texts`.

    Merges may cross spaces, so the repeated chat and tool-documentation boilerplate becomes a
    few tokens and the tiny policy's sequences stay short. The one split: source paths and
    locations (`LOCATION_PATTERN`) are pre-tokens of their own, so a location is the same token
    sequence in a prompt, in the user's reply and in the `finish` answer, whatever surrounds it;
    copying it is then a token-for-token copy. Any text round-trips (byte-level).
    `locations` become one added token each (ids after the trained vocabulary, in the given
    order), matched as whole words wherever they occur.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LOCATION_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, max_token_length=24)
    tok.train_from_iterator(texts, trainer)
    if locations:
        from tokenizers import AddedToken

        tok.add_tokens([AddedToken(loc, single_word=True, normalized=False) for loc in locations])
    return tok


def location_vocabulary(tasks: Sequence[Any]) -> list[str]:
    """The gold locations of all `tasks` (every split), sorted: the demo's location tokens."""
    return sorted({g for t in tasks for g in t.gold})


# Bumped whenever a cached stage's output changes for the same config (task text, tokenizer
# training, scripted episodes), so run folders made by an older version are not silently reused.
STAGE_FORMAT = 2
# The config sections the cached stages (tokenizer, warm start) are made from.
STAGE_SECTIONS = ("domain", "model", "policy", "sft", "demo")
INPUTS_FILE = "stage_inputs.json"


class StaleRunError(ValueError):
    """`runs/<name>` holds stages made from other inputs than this run's."""


def stage_inputs(cfg: RunConfig, tasks) -> dict[str, Any]:
    """What the cached build and warm-start stages depend on: the format version, the relevant
    config sections and a hash of the tasks (their ids, prompts and gold locations)."""
    import hashlib

    h = hashlib.sha256()
    for t in tasks:
        h.update(json.dumps([t.task_id, t.precise_prompt, t.vague_prompt, list(t.gold)]).encode())
    full = cfgmod.to_dict(cfg)
    return {"format": STAGE_FORMAT, "tasks": h.hexdigest()[:16],
            **{k: full[k] for k in STAGE_SECTIONS}, "rl.freeze": full["rl"]["freeze"]}


def check_stage_inputs(cfg: RunConfig, tasks) -> None:
    """Records the stage inputs in `<run>/stage_inputs.json`, or checks them against the record.

    Raises:
      StaleRunError naming what differs when the run folder was made from other inputs (another
      config, another Python's standard library, or an older version of this code).
    """
    out = cfg.output_dir
    record = out / INPUTS_FILE
    now = json.loads(json.dumps(stage_inputs(cfg, tasks)))
    cached = [p.name for p in (out / "tokenizer.json", out / "sft_policy") if p.exists()]
    if record.exists():
        then = json.loads(record.read_text())
        changed = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
        if changed:
            raise StaleRunError(
                f"{out} was made from other inputs (changed: {', '.join(changed)}); delete it or "
                f"run with another name=... to start over")
    elif cached and not cfg.policy.tokenizer:
        raise StaleRunError(
            f"{out} holds {', '.join(cached)} from an older version of the demo (no {INPUTS_FILE});"
            f" delete it or run with another name=... to start over")
    else:
        _write_json(record, now)


class Interrupted(RuntimeError):
    """A stage was stopped by a signal before it finished; rerunning resumes it."""


def _say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


@dataclasses.dataclass
class Built:
    """What the build stage makes (see the module docstring)."""

    tasks: list
    domain: Any
    simulator: Any
    records: list
    tokenizer: Any
    views: list  # the scripted episodes as token views
    drills: list = dataclasses.field(default_factory=list)  # `sft.copy_drills` token views

    @property
    def by_id(self) -> dict[str, Any]:
        return {t.task_id: t for t in self.tasks}


def build_stage(cfg: RunConfig) -> Built:
    """Tasks, agent-side domain, simulator, scripted warm-start episodes, tokenizer, token views.

    The tokenizer is trained once into `<run>/tokenizer.json` (or read from `policy.tokenizer`
    when that file exists) and reused on reruns.
    """
    from ppp_jax.sampling.chat import ChatTokenizer
    from ppp_jax.envs.simulator_backends import make_simulator
    from ppp_jax.train import sft
    from ppp_jax.sampling.chat import load_tokenizer
    from ppp_jax.train.builders import (agent_domain, build_tasks, chat_format_of,
                                        generation_prefix_of, vocab_size_of)

    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    tasks, inner = build_tasks(cfg)
    check_stage_inputs(cfg, tasks)
    domain = agent_domain(cfg, inner)
    simulator = make_simulator(cfg.simulator)
    by_id = {t.task_id: t for t in tasks}
    train_tasks = [t for t in tasks if t.split == "train"]
    _say(f"{len(tasks)} stdlib tasks ({len(train_tasks)} train, {len(tasks) - len(train_tasks)} held out)")
    s = cfg.sft
    behaviour = sft.BehaviourConfig(s.ask_vague, s.ask_precise, s.follow_preference,
                                    s.effort_mix, s.seed)
    tok_path = tokenizer_path(cfg)
    # A pretrained policy brings its tokenizer and chat format; the tiny one gets a tokenizer
    # trained here, in the Seed-OSS format.
    pretrained = bool(cfg.policy.path)
    tokenizer = load_tokenizer(tok_path) if pretrained else None
    chat_format = chat_format_of(cfg, tokenizer) if pretrained else "seed_oss"
    records = sft.generate_scripted_episodes(
        train_tasks, domain, simulator, num_episodes=s.num_episodes, behaviour=behaviour,
        include_heldout_styles=s.include_heldout_styles, episode=cfg.rollout.episode,
        chat_format=chat_format,
        guess=(location_vocabulary(train_tasks) if s.unknown_answer == "random_location"
               else sft.GUESS))
    _say(f"{len(records)} scripted warm-start episodes")
    if not pretrained and not tok_path.exists():
        texts = list(sft.episode_texts(records, domain, by_id,
                                       interface=cfg.rollout.episode.interface))
        texts += [t.precise_prompt for t in tasks] + [t.vague_prompt for t in tasks]
        tok = train_tokenizer(texts, cfg.demo.tokenizer_vocab,
                              location_vocabulary(tasks) if cfg.demo.location_tokens else ())
        tok_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = tok_path.with_name(tok_path.name + ".tmp")
        tok.save(str(tmp))
        tmp.replace(tok_path)
    if tokenizer is None:
        tokenizer = load_tokenizer(tok_path)
    chat = ChatTokenizer(tokenizer, chat_format)
    prefix = generation_prefix_of(cfg, tokenizer)
    views = sft.token_views(records, domain, by_id, chat, interface=cfg.rollout.episode.interface,
                            generation_prefix=prefix)
    drills = sft.copy_drills(records, chat, s.copy_drills, s.seed, prefix) if s.copy_drills else []
    _say(f"tokenizer {tok_path}: {vocab_size_of(tokenizer)} ids; warm-start episodes "
         f"{sum(len(v.token_ids) for v in views) / max(len(views), 1):.0f} tokens on average"
         + (f", {len(drills)} copy drills" if drills else ""))
    return Built(tasks, domain, simulator, records, tokenizer, views, drills)


def tokenizer_path(cfg: RunConfig) -> Path:
    """`policy.tokenizer` if set, else the pretrained `policy.path`'s, else `<run>/tokenizer.json`
    (trained by the build stage)."""
    if cfg.policy.tokenizer:
        return Path(cfg.policy.tokenizer)
    return Path(cfg.policy.path) if cfg.policy.path else cfg.output_dir / "tokenizer.json"


def location_token_ids(built: Built, option: str):
    """int [N]: the tokenizer's location tokens (`demo.location_tokens`), sorted; ValueError
    naming `option` unless every task location is one token (a BPE vocabulary holds a few of
    them by chance: weighting or swapping only those would quietly be another experiment)."""
    import numpy as np

    vocab = built.tokenizer.get_vocab()
    locations = location_vocabulary(built.tasks)
    missing = [loc for loc in locations if loc not in vocab]
    if missing or len(locations) < 2:
        raise ValueError(f"{option} needs location tokens in the tokenizer "
                         f"(demo.location_tokens: true, and a tokenizer trained with it); "
                         f"{len(missing)} of the {len(locations)} task locations are not one "
                         f"token{f', e.g. {missing[0]!r}' if missing else ''}")
    return np.array(sorted(vocab[loc] for loc in locations))


def location_swap(cfg: RunConfig, built: Built):
    """The warm start's augmentation (`sft.location_swap`), or None: with that probability a
    drawn episode has its locations replaced by random location tokens (`sft.swap_locations`)."""
    from ppp_jax.train import sft

    prob = cfg.sft.location_swap
    if prob <= 0:
        return None
    ids = location_token_ids(built, "sft.location_swap")

    def augment(view, rng):
        return sft.swap_locations(view, ids, rng) if rng.random() < prob else view

    return augment


def sft_stage(cfg: RunConfig, built: Built, model: Any, *, progress: bool = True) -> Any:
    """Warm-starts `model` in place and writes `<run>/sft_policy` (a model checkpoint): first the
    copy stage on the drills alone when `sft.copy_steps` > 0 (`<run>/sft_copy`), then the
    scripted episodes with the drills (`<run>/sft`); each stage resumes from its checkpoints,
    and a finished warm start is loaded instead of redone."""
    from flax import nnx

    from ppp_jax.model.checkpoint import save_checkpoint
    from ppp_jax.train import sft

    s = cfg.sft
    done = cfg.output_dir / "sft_policy"
    if (done / "model_config.json").exists():
        from ppp_jax.model.api import load_pretrained

        nnx.update(model, nnx.state(load_pretrained(done), nnx.Param))
        _say(f"warm start found at {done}; reusing it")
        return model
    weighted = (location_token_ids(built, "sft.location_weight")
                if s.location_weight != 1.0 else None)
    common = dict(learning_rate=s.learning_rate, warmup_steps=s.warmup_steps,
                  weight_decay=s.weight_decay, seed=s.seed, progress=progress,
                  rows_multiple=s.rows_multiple, save_every=20, freeze=cfg.rl.freeze,
                  augment=location_swap(cfg, built), weighted_ids=weighted,
                  weight=s.location_weight)
    if s.copy_steps:
        # The copy stage: the drills alone, in short rows, before the episodes (docs/demo.md).
        if not built.drills:
            raise ValueError("sft.copy_steps needs copy drills (sft.copy_drills > 0)")
        drills = _fitting(built.drills, s.copy_row_len, "copy drill", "sft.copy_row_len")
        params, steps = sft.train_sft(model, drills, run_dir=cfg.output_dir / "sft_copy",
                                      num_steps=s.copy_steps, batch_size=s.copy_batch_size,
                                      row_len=s.copy_row_len, **common)
        nnx.update(model, params)
        if steps < s.copy_steps:
            raise Interrupted(f"copy stage stopped at step {steps} of {s.copy_steps}; "
                              "run again to resume")
        _say(f"copy stage: {steps} steps on {len(drills)} drills")
    keep = _fitting(built.views + built.drills, s.row_len, "warm-start example", "sft.row_len")
    params, steps = sft.train_sft(model, keep, run_dir=cfg.output_dir / "sft", num_steps=s.num_steps,
                                  batch_size=s.batch_size, row_len=s.row_len, **common)
    nnx.update(model, params)
    if steps < s.num_steps:
        raise Interrupted(f"warm start stopped at step {steps} of {s.num_steps}; run again to resume")
    save_checkpoint(params, model.config, done, overwrite=True)
    rows = [json.loads(x) for x in (cfg.output_dir / "sft" / "metrics.jsonl").read_text().splitlines()]
    if rows:
        _say(f"warm start: {len(rows)} steps, NLL/token {rows[0]['train/nll']:.3f} -> "
             f"{rows[-1]['train/nll']:.3f}")
    return model


def _fitting(views: list, row_len: int, what: str, option: str) -> list:
    """The views of at most `row_len` positions; says how many were left out, and raises
    ValueError naming `option` when none fits."""
    keep = [v for v in views if len(v.token_ids) - 1 <= row_len]
    if not keep:
        raise ValueError(f"every {what} is longer than {option} = {row_len} tokens "
                         f"(the shortest has {min(len(v.token_ids) for v in views) - 1})")
    if len(keep) < len(views):
        _say(f"{len(views) - len(keep)} {what}s longer than {row_len} tokens left out")
    return keep


def run_demo(cfg: RunConfig, *, progress: bool = True) -> dict[str, Any]:
    """Runs the whole pipeline (see the module docstring); returns the summary dict."""
    from ppp_jax.eval import report
    from ppp_jax.train.builders import Parts, build_model, make_engine
    from ppp_jax.train.trainer import PPPTrainer

    t_start = time.perf_counter()
    out = cfg.output_dir
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    built = build_stage(cfg)
    timings["build_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model = build_model(cfg, built.tokenizer)
    c = model.config
    _say(f"policy: Seed-OSS architecture, {c.param_count():,} parameters "
         f"(D={c.hidden_size}, L={c.num_layers}, V={c.vocab_size})")
    if cfg.sft.num_steps and not cfg.demo.skip_sft:
        sft_stage(cfg, built, model, progress=progress)
    timings["sft_s"] = time.perf_counter() - t0

    engine = make_engine(cfg, model)
    try:
        parts = Parts(built.tokenizer, model, built.tasks, built.domain, built.simulator)
        test = [t for t in built.tasks if t.split == "test"]
        eval_tasks = test[: cfg.eval.num_tasks] if cfg.eval.num_tasks else test
        t0 = time.perf_counter()
        before = _cached_eval(out / "eval_before.json", cfg, engine, built, eval_tasks, progress,
                              "before", {"ppp_steps": 0, "eval": cfgmod.to_dict(cfg.eval)})
        timings["eval_before_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        trainer = PPPTrainer(cfg, parts, engine=engine, run_dir=out / "ppp")
        _say(f"PPP RL: {cfg.trainer.num_steps} steps x {cfg.data.batch_size} prompts x "
             f"G={cfg.rl.advantage.group_size} episodes")
        final = trainer.train(progress=progress)
        timings["ppp_s"] = time.perf_counter() - t0
        if final.step < cfg.trainer.num_steps:
            raise Interrupted(f"PPP training stopped at step {final.step} of "
                              f"{cfg.trainer.num_steps}; run again to resume")

        t0 = time.perf_counter()
        after = _cached_eval(out / "eval_after.json", cfg, engine, built, eval_tasks, progress,
                             "after", {"ppp_steps": final.step, "eval": cfgmod.to_dict(cfg.eval)})
        timings["eval_after_s"] = time.perf_counter() - t0
    finally:
        engine.close()

    timings["total_s"] = time.perf_counter() - t_start
    summary = report.write_report(out, cfg, before, after, out / "ppp" / "metrics.jsonl",
                                  sft_metrics=out / "sft" / "metrics.jsonl", timings=timings,
                                  model_info={"parameters": c.param_count(),
                                              "hidden_size": c.hidden_size,
                                              "num_layers": c.num_layers,
                                              "vocab_size": c.vocab_size})
    _say(f"report: {out / 'report.md'} ({timings['total_s']:.0f} s in this invocation)")
    return summary


def _cached_eval(path: Path, cfg: RunConfig, engine: Any, built: Built, tasks: list,
                 progress: bool, label: str, tag: dict[str, Any]) -> dict[str, Any]:
    """Runs the evaluation unless `path` holds its result for the same `tag` (resumed runs)."""
    from ppp_jax.eval import evaluate
    from ppp_jax.train.builders import make_policy

    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("tag") == tag:
            _say(f"evaluation '{label}' found at {path}; reusing it")
            return cached
    policy = make_policy(cfg, engine, built.tokenizer, temperature=cfg.eval.temperature)
    result = evaluate.evaluate(policy, built.domain, built.simulator, tasks, cfg.eval,
                               episode=cfg.rollout.episode, concurrency=cfg.rollout.concurrency,
                               progress=progress, desc=f"eval {label}")
    result["tag"] = tag
    _write_json(path, result)
    _say(f"evaluation '{label}': " + evaluate.one_line(result))
    return result
