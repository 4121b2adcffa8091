"""The typed run config: one YAML file per run, loaded into this tree of frozen dataclasses.

    cfg = load_run_config("configs/tiny_cpu.yaml", ["trainer.num_steps=3"])

Sections shared with `ppp compile` (`ppp_jax.config.compile.CompileConfig`), so one YAML serves both:

    model      which architecture (preset + numerics knobs; `ppp_jax.config.compile.ModelSpec`)
    sharding   the device mesh and logical-axis rules (`ppp_jax.model.sharding.ShardingConfig`)
    compile    shapes for ahead-of-time compilation (read by `ppp compile` only)
    engine     the rollout engine: one replica's shape (slots, KV pages, prefill buckets; read by
               `ppp train`, `ppp eval` and `ppp compile`) and where replicas live (`dtype`,
               `mesh`: `ppp compile`, and `ppp train` with `rollout.engine_layout: sampling`)
    rl         the algorithm: advantages, loss, DAPO, optimizer (`ppp_jax.config.rl.RLConfig`)

Sections of the trainer, the evaluator and the demo:

    policy     where the weights and tokenizer come from (HF / orbax checkpoint, or random init)
    domain     which task domain, its tools, and what the agent is told about the user
    data       the grain pipeline (`ppp_jax.config.data.DataConfig`: batch = prompts per step)
    simulator  the user simulator (`ppp_jax.envs.simulator_backends.SimulatorConfig`)
    reward     the PPP reward (`ppp_jax.envs.reward.RewardConfig`)
    metrics    which definition each evaluation metric follows (`ppp_jax.envs.scoring.MetricsConfig`)
    rollout    sampling settings, episode limits, concurrency, retries, token-batch layout
    trainer    steps, checkpoint cadence, logging
    eval       the Table-2 evaluation protocol
    sft        the supervised warm start
    demo       the `make run` pipeline's sizes (tokenizer, task counts)
    distributed  multi-host: coordinator, process count and id (`ppp_jax.scale.distributed`; unset
               fields come from PPP_*/JAX_* environment variables)
    compile_cache  where compiled XLA programs are kept between runs
               (`ppp_jax.config.compile_cache.CompileCacheConfig`; "" = off)

The group size G lives in one place only: `rl.advantage.group_size`. The top-level `profile`
(`paper` | `released`) fills a set of the keys above at load time (`ppp_jax.config.profiles`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Sequence

from ppp_jax.config import loader as cfgmod
from ppp_jax.config.checkpoint import CheckpointConfig
from ppp_jax.config.compile_cache import CompileCacheConfig
from ppp_jax.config.compile import CompileSpec, EngineSpec, ModelSpec
from ppp_jax.config.data import DataConfig
from ppp_jax.config.distributed import DistributedConfig
from ppp_jax.config.profiles import Profile, resolve_profile
from ppp_jax.config.rl import RLConfig
from ppp_jax.config.rules import (
    DROPOUT,
    GT_ZERO,
    NON_NEGATIVE,
    POSITIVE,
    PREFERENCE,
    PROBABILITY,
    SEED,
    Range,
    Url,
    register_rules,
)
from ppp_jax.envs.domains.browsecomp import BrowseCompSection
from ppp_jax.envs.domains.registry import get_domain, registered_domains
from ppp_jax.envs.domains.stdlib_loc import StdlibLocConfig, StdlibLocSection
from ppp_jax.envs.domains.swe_full import SweFullSection
from ppp_jax.envs.domains.swe_func_loc import SweFuncLocSection
from ppp_jax.envs.episode import EpisodeConfig
from ppp_jax.envs.reward import RewardConfig
from ppp_jax.envs.scoring import MetricsConfig
from ppp_jax.envs.simulator_backends import SimulatorConfig
from ppp_jax.model.sharding import MeshConfig, ShardingConfig

PreferenceSet = Literal["train", "heldout", "all"]


@dataclasses.dataclass(frozen=True)
class PolicySection:
    """Where the policy's weights and tokenizer come from.

    path: a Hugging Face checkpoint directory or a ppp_jax orbax checkpoint (`ppp convert`);
      "" = random initialization of `model` (the demo, tests).
    tokenizer: a `tokenizer.json` file or a Hugging Face tokenizer directory; "" = `path`.
    init_seed: seed of the random initialization.
    vocab_from_tokenizer: with random init, set the model's vocab size to the tokenizer's
      (rounded up to a multiple of 8), overriding `model.sizes.vocab_size`.
    dropout: attention and residual dropout of the policy, overriding the checkpoint's config
      (RL wants 0: the sampler runs without dropout and the PPO ratio must compare that policy).
    chat_format: how the policy writes chats and tool calls (`ppp_jax.sampling.chat_format`):
      "seed_oss", "hermes" (Qwen2.5 / Qwen3), "llama3" (Llama 3.1 / 3.2 / 3.3, JSON calls),
      "llama3_pythonic" (Llama 3.2 1B / 3B's `[f(a=1)]` call lists); "" = told by the
      tokenizer's special tokens (and, for a Llama 3 variant, its chat template).
    generation_prefix: text written after the generation prompt of every policy turn, before
      the policy samples (mask 0: not trained; part of the turn's text for parsing). "auto" =
      what the checkpoint's chat template writes there beyond the format's generation prompt
      (`<think>\n` for Qwen3 2507 thinking checkpoints; nothing for Seed-OSS, Qwen2.5, hybrid
      Qwen3, Llama 3 and tokenizers without a template); "none" = nothing; any other text is
      used as it is (e.g. Seed-OSS's thinking-budget-0 pre-fill).
    """

    path: str = ""
    tokenizer: str = ""
    init_seed: int = 0
    vocab_from_tokenizer: bool = True
    dropout: float = 0.0
    chat_format: Literal["", "seed_oss", "hermes", "llama3", "llama3_pythonic"] = ""
    generation_prefix: str = "auto"


@dataclasses.dataclass(frozen=True)
class DomainSection(BrowseCompSection, SweFullSection, SweFuncLocSection, StdlibLocSection):
    """The task domain: one flat YAML section, `name` plus the keys of every registered domain.

    name: a registered domain (`ppp_jax.envs.domains.registry`): "stdlib_loc" (embedded,
      offline), "swe_func_loc" (needs task rows and repo clones), "swe_full" (the same data; the
      agent edits a sandboxed copy and the instance's tests grade it) or "browsecomp_plus" (deep
      research over a local corpus with a BM25 retriever; needs the browsecomp_* files). An
      unknown name is rejected with the list of registered ones.
    Each domain's own keys live in its section dataclass, this class's bases: `stdlib`,
      `tool_style` (`envs.domains.stdlib_loc.StdlibLocSection`); `swe_rows`, `swe_split`,
      `swe_clone_root`, `swe_cache_dir`, `tool_style` (`envs.domains.swe_func_loc.
      SweFuncLocSection`); the same data keys plus `swe_full_*` (`envs.domains.swe_full.
      SweFullSection`); `browsecomp_queries`, `browsecomp_corpus`, `browsecomp_split`
      (`envs.domains.browsecomp.BrowseCompSection`). The domain's registered builder reads only
      its own section (`ppp_jax.train.builders.build_tasks`).
    tools: keep only these domain tools (finish is always kept; ask_user is added by the runner);
      empty = all of the domain's tools.
    system_prompt: replaces the domain's system prompt when non-empty.
    show_preference: tell the agent how this user wants to be asked (the preference's own
      description, in the first user message); the paper's agents must see it to adapt to
      unseen preferences (reference section 2).
    preference_first: put that description before the task text instead of after it (the tiny
      demo: a prompt that ends with the task's own last sentence; docs/demo.md).
    """

    name: str = "stdlib_loc"
    tools: tuple[str, ...] = ()
    system_prompt: str = ""
    show_preference: bool = True
    preference_first: bool = False

    def __post_init__(self):
        # an unknown name lists the registered domains (blamed on `domain.name`, so an override
        # that set it is named); the domain's own section is checked too
        try:
            spec = get_domain(self.name)
        except ValueError as e:
            raise cfgmod.FieldError("name", str(e)) from None
        spec.section_from(self)
        # A key of another domain's section would be silently ignored: refuse it instead.
        own = {f.name for f in dataclasses.fields(spec.section)}
        # shell_whitelist: set by `profile` for every domain; read by those with a read-only bash
        shared = {"name", "tools", "system_prompt", "show_preference", "preference_first",
                  "shell_whitelist"}
        for f in dataclasses.fields(DomainSection):
            if f.name in own or f.name in shared or getattr(self, f.name) == f.default:
                continue
            readers = [n for n in registered_domains()
                       if f.name in {g.name for g in dataclasses.fields(get_domain(n).section)}]
            raise cfgmod.FieldError(
                f.name, f"set, but domain {self.name!r} does not read it (read by "
                f"{' and '.join(readers)}); remove it or set domain.name to its domain")


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """How the orchestrator runs episodes and builds the token batch.

    temperature / top_p / top_k: the engine's sampling (released code: T = 1, top-p = 1); the
      loss's temperature `rl.loss.temperature` must equal `temperature`.
    episode: per-episode limits (turns, context tokens, per-turn tokens, timeouts).
    concurrency: episodes in flight at once (they share the engine's continuous batch).
    max_episode_retries: an episode hit by a simulator or policy error is run again (fresh seed)
      up to this many times, then dropped; both are counted in the metrics.
    row_len: T of the token batch; null = longest episode rounded up to `pad_to_multiple`.
      A fixed value keeps one compiled train step for the whole run.
    pad_to_multiple: rounding of T when row_len is null.
    pack: first-fit packing of several episodes per row.
    rows_multiple: the batch's row count is rounded up to a multiple of this (and of
      `rl.num_micro_batches`), so a few shapes serve the whole run.
    truncate_long: an episode longer than row_len is dropped (counted) instead of failing the step.
    engine_layout: where the rollout engine's weights live. "training" (default): one engine on
      the training mesh in the training dtype (FSDP-sharded weights, gathered at every decoded
      token; right for small models and tests). "sampling": the layout `ppp compile` compiles
      from the `engine:` section: this process's local devices, in order, split into replicas of
      `engine.mesh`'s tensor size, each its own engine with the weights in `engine.dtype` laid
      out by `SAMPLING_RULES` (heads, kv heads, mlp and vocab over tensor); each GRPO group runs
      on one replica (`ppp_jax.rollout.policies.ReplicaEnginePolicy`). See `engine_layout`.
    release_engine_memory: around each update the engines drop their K/V pools and weight
      copies (`Engine.release_memory`) and get them back with the new weights after it, so the
      update has the devices' memory to itself; cached sessions do not survive an update anyway.
      Costs a pool re-allocation per step. On where rollout and training do not fit together
      (the 36B configs); off (default) where memory is plentiful.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    episode: EpisodeConfig = EpisodeConfig()
    concurrency: int = 64
    max_episode_retries: int = 2
    row_len: int | None = None
    pad_to_multiple: int = 512
    pack: bool = False
    rows_multiple: int = 1
    truncate_long: bool = True
    engine_layout: Literal["training", "sampling"] = "training"
    release_engine_memory: bool = False


@dataclasses.dataclass(frozen=True)
class TrainerSection:
    """The outer loop.

    num_steps: optimizer steps of the whole run (the paper: 200).
    save_every / keep / async_save: checkpoint cadence (released script: every 10 steps).
    tensorboard: also write TensorBoard events beside metrics.jsonl.
    progress: progress bars.
    """

    num_steps: int = 200
    save_every: int = 10
    keep: int | None = 3
    async_save: bool = True
    tensorboard: bool = True
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """The Table-2 protocol: vague prompts averaged over preferences, plus precise prompts.

    split: which tasks ("test" = held-out tasks).
    num_tasks: first N tasks of the split (0 = all).
    preferences: "heldout" (the 8 unseen), "train" (the 12 seen), "all" (20), or ids via
      `preference_ids`.
    preference_ids: explicit preference ids (overrides `preferences` when non-empty).
    prompt_kinds: which prompt kinds to run.
    precise_preferences: preferences paired with precise prompts ("same" = as vague; else
      "no_preference" only, which is cheaper).
    episodes_per_prompt: samples per (task, preference, kind).
    temperature: sampling temperature at evaluation (the released code: 1.0).
    seed: base seed of the evaluation's sampling.
    backend: "engine" (our policy through the sampling engine) or "openai" (any
      OpenAI-compatible chat endpoint with tool calling).
    openai_model / openai_base_url / openai_api_key_env: for backend "openai".
    checkpoint: which weights to evaluate with backend "engine": "" = the run's latest training
      checkpoint if there is one, else `policy.path`; or a path (HF / orbax / training checkpoint
      directory).
    """

    split: Literal["train", "test"] = "test"
    num_tasks: int = 0
    preferences: PreferenceSet = "all"
    preference_ids: tuple[str, ...] = ()
    prompt_kinds: tuple[Literal["vague", "precise"], ...] = ("vague", "precise")
    precise_preferences: Literal["same", "no_preference"] = "same"
    episodes_per_prompt: int = 1
    temperature: float = 1.0
    seed: int = 1234
    backend: Literal["engine", "openai"] = "engine"
    openai_model: str = "gpt-5-nano"
    openai_base_url: str | None = None
    openai_api_key_env: str = "OPENAI_API_KEY"
    checkpoint: str = ""


@dataclasses.dataclass(frozen=True)
class SFTSection:
    """The supervised warm start (`ppp sft`): scripted episodes -> the same train step.

    num_episodes: scripted episodes generated (real runner, real simulator).
    num_steps / batch_size: SFT updates and sequences per update.
    row_len / rows_multiple: T of the packed SFT batch (longer episodes are left out, counted)
      and the rounding of its row count (a few compiled shapes).
    learning_rate / warmup_steps / weight_decay: AdamW for the warm start.
    ask_vague / ask_precise: probability that the scripted agent asks on a vague / precise prompt.
    follow_preference: probability that a scripted question follows the user's preference.
    effort_mix: probabilities of a cheap (low), unanswerable (medium) and expensive (high) question.
    include_heldout_styles: the scripted agent also writes in the 8 held-out preferences' styles
      (an instruct model knows Italian or JSON; RL never sees those preferences).
    unknown_answer: the scripted agent's answer when no location was named: `constant` (the
      fixed `unknown.py:unknown`) or `random_location` (a location of the train tasks drawn per
      episode: a plausible guess, as an instruct model makes).
    copy_drills: short copy conversations added to the warm-start examples (`sft.copy_drills`):
      a line naming a location as the user turn, `finish` with it as the answer.
    location_swap: probability that a warm-start episode is drawn with every location it names
      replaced, consistently, by a random one of the tokenizer's location tokens
      (`demo.location_tokens`), so that the answer can only be copied from the conversation.
    copy_steps / copy_batch_size / copy_row_len: a copy stage before the warm start: this many
      steps on the copy drills alone (`copy_batch_size` drills a step, packed into rows of
      `copy_row_len` tokens); 0 = none. The drills also stay in the warm start's examples.
    location_weight: weight of a location token's NLL in the warm start's token mean (needs
      `demo.location_tokens`; 1 = unweighted). The one answer token that must be copied is
      otherwise learned far more slowly than the call's template around it (docs/demo.md).
    seed: seed of the scripted behaviour and the batch order.
    """

    num_episodes: int = 600
    num_steps: int = 150
    batch_size: int = 16
    row_len: int = 512
    rows_multiple: int = 8
    learning_rate: float = 2e-3
    warmup_steps: int = 10
    weight_decay: float = 0.0
    ask_vague: float = 0.5
    ask_precise: float = 0.1
    follow_preference: float = 0.5
    effort_mix: tuple[float, float, float] = (0.45, 0.2, 0.35)
    include_heldout_styles: bool = True
    unknown_answer: Literal["constant", "random_location"] = "constant"
    copy_drills: int = 0
    location_swap: float = 0.0
    copy_steps: int = 0
    copy_batch_size: int = 64
    copy_row_len: int = 128
    location_weight: float = 1.0
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class DemoSection:
    """Sizes of the `make run` pipeline (tokenizer and the tiny policy's data).

    location_tokens: the trained tokenizer gets one token per location of the domain's tasks
      (every split: the library's places a bug can be, as a code model's vocabulary knows the
      library's names), so copying a location is copying one token.
    """

    tokenizer_vocab: int = 1024
    location_tokens: bool = False
    num_train_tasks: int = 0  # 0 = all train-split tasks
    skip_sft: bool = False


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole run (see the module docstring)."""

    name: str = "run"
    seed: int = 0
    run_dir: str = "runs"
    # fidelity profile: fills a set of settings at load time (`ppp_jax.config.profiles`)
    profile: Profile = "paper"
    # shared with `ppp compile`
    model: ModelSpec = ModelSpec()
    sharding: ShardingConfig = ShardingConfig(mesh=MeshConfig(shape=(1, -1, 1)))
    compile: CompileSpec = CompileSpec()
    engine: EngineSpec = EngineSpec()
    rl: RLConfig = RLConfig()
    # trainer / evaluation / demo
    policy: PolicySection = PolicySection()
    domain: DomainSection = DomainSection()
    data: DataConfig = DataConfig()
    simulator: SimulatorConfig = SimulatorConfig()
    reward: RewardConfig = RewardConfig()
    metrics: MetricsConfig = MetricsConfig()
    rollout: RolloutConfig = RolloutConfig()
    trainer: TrainerSection = TrainerSection()
    eval: EvalSection = EvalSection()
    sft: SFTSection = SFTSection()
    demo: DemoSection = DemoSection()
    # multi-host: unset fields come from PPP_*/JAX_* environment variables (ppp_jax.scale.distributed)
    distributed: DistributedConfig = DistributedConfig()
    # JAX's persistent compilation cache, applied by every command before its first compile
    compile_cache: CompileCacheConfig = CompileCacheConfig()

    def __post_init__(self):
        if self.data.train_path:
            raise cfgmod.FieldError(
                "data.train_path",
                f"set to {self.data.train_path!r}, but `ppp train`, `ppp sft` and `ppp eval` take "
                "their tasks from the `domain` section (stdlib_loc: built in; swe_func_loc: "
                "domain.swe_rows; browsecomp_plus: domain.browsecomp_queries and "
                "domain.browsecomp_corpus), never from a data file; remove data.train_path")
        if abs(self.rl.loss.temperature - self.rollout.temperature) > 1e-9 and self.rollout.temperature > 0:
            raise ValueError(
                f"rl.loss.temperature ({self.rl.loss.temperature}) must equal rollout.temperature "
                f"({self.rollout.temperature}): the trainer's log-probs must be those of the sampler")

    @property
    def output_dir(self) -> Path:
        """`<run_dir>/<name>`: metrics, checkpoints, evaluations and the report."""
        return Path(self.run_dir) / self.name

    @property
    def checkpoint(self) -> CheckpointConfig:
        return CheckpointConfig(directory=str(self.output_dir / "checkpoints"),
                                save_every=self.trainer.save_every, keep=self.trainer.keep,
                                async_save=self.trainer.async_save)


@dataclasses.dataclass(frozen=True)
class EngineLayout:
    """The trainer's rollout-engine layout, resolved from the config (`engine_layout`).

    tensor: 0 = one engine on the training mesh in the training dtype; N > 0 = replicas of N
      local devices each.
    dtype: the replicas' param and compute dtype ("" with tensor 0).
    """

    tensor: int = 0
    dtype: str = ""


def engine_layout(cfg: RunConfig) -> EngineLayout:
    """`rollout.engine_layout` made concrete: "training" -> EngineLayout(0, ""); "sampling" ->
    the tensor size of `engine.mesh` and `engine.dtype`, the layout `ppp compile` compiles."""
    if cfg.rollout.engine_layout == "training":
        return EngineLayout()
    from ppp_jax.model.config import DTYPES

    if cfg.engine.dtype not in DTYPES:
        raise ValueError(f"engine.dtype={cfg.engine.dtype!r} is not one of {list(DTYPES)} "
                         "(rollout.engine_layout: sampling puts the engine weights in it)")
    mesh = cfg.engine.mesh
    tensor = mesh.shape[mesh.axes.index("tensor")]
    if tensor < 1:
        # `ppp compile` resolves -1 over the whole slice, a process sees only its own devices
        raise ValueError(f"engine.mesh {dict(zip(mesh.axes, mesh.shape))}: with "
                         "rollout.engine_layout: sampling the tensor size must be a number, not -1")
    return EngineLayout(tensor=tensor, dtype=cfg.engine.dtype)


def load_run_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Reads a YAML run config with `key.sub=value` overrides; raises `ConfigError` naming the
    offending key."""
    try:
        return cfgmod.load_config(path, RunConfig, list(overrides), resolve=resolve_profile)
    except cfgmod.ConfigError as e:
        if "unknown key(s) ['sampler'" in str(e):  # configs written before the two engine sections were merged
            raise cfgmod.ConfigError(
                f"{e}\nThe `sampler` section is now part of `engine`: move its keys (num_slots, "
                "page_size, num_pages, max_seq_len, ...) into `engine`, which describes one "
                "engine replica.") from None
        raise


register_rules(RunConfig, {"seed": SEED})
register_rules(PolicySection, {"init_seed": SEED, "dropout": DROPOUT})
register_rules(RolloutConfig, {
    "temperature": NON_NEGATIVE, "top_p": Range(0, 1, low_open=True), "top_k": NON_NEGATIVE,
    "concurrency": POSITIVE, "max_episode_retries": NON_NEGATIVE, "row_len": POSITIVE,
    "pad_to_multiple": POSITIVE, "rows_multiple": POSITIVE})
register_rules(TrainerSection, {"num_steps": POSITIVE, "save_every": POSITIVE, "keep": POSITIVE})
register_rules(EvalSection, {
    "num_tasks": NON_NEGATIVE, "episodes_per_prompt": POSITIVE, "temperature": NON_NEGATIVE,
    "seed": SEED, "preference_ids": PREFERENCE, "openai_base_url": Url()})
register_rules(SFTSection, {
    "num_episodes": POSITIVE, "num_steps": POSITIVE, "batch_size": POSITIVE, "row_len": POSITIVE,
    "rows_multiple": POSITIVE, "learning_rate": NON_NEGATIVE, "warmup_steps": NON_NEGATIVE,
    "weight_decay": NON_NEGATIVE, "ask_vague": PROBABILITY, "ask_precise": PROBABILITY,
    "location_swap": PROBABILITY, "copy_drills": NON_NEGATIVE, "location_weight": GT_ZERO,
    "copy_steps": NON_NEGATIVE, "copy_batch_size": POSITIVE, "copy_row_len": POSITIVE,
    "follow_preference": PROBABILITY, "effort_mix": PROBABILITY, "seed": SEED})
register_rules(DemoSection, {"tokenizer_vocab": Range(256), "num_train_tasks": NON_NEGATIVE})
# the envs layer's schemas cannot import the config layer: their rules are given here
register_rules(StdlibLocConfig, {
    "num_tasks": POSITIVE, "seed": SEED, "per_file": POSITIVE, "test_fraction": PROBABILITY,
    "min_doc_words": NON_NEGATIVE, "min_body_statements": NON_NEGATIVE,
    "max_doc_words": POSITIVE})
register_rules(SweFullSection, {
    "swe_full_command_timeout_s": GT_ZERO, "swe_full_max_command_timeout_s": GT_ZERO,
    "swe_full_grade_timeout_s": GT_ZERO, "swe_full_memory_gb": GT_ZERO})
register_rules(SimulatorConfig, {
    "max_questions": NON_NEGATIVE, "base_url": Url(), "timeout_s": GT_ZERO,
    "max_retries": NON_NEGATIVE, "max_concurrency": POSITIVE})
register_rules(RewardConfig, {"proactivity_weight": NON_NEGATIVE,
                              "personalization_weight": NON_NEGATIVE,
                              "correct_threshold": PROBABILITY})
register_rules(EpisodeConfig, {
    "max_turns": POSITIVE, "max_context_tokens": POSITIVE, "turn_max_new_tokens": POSITIVE,
    "min_turn_tokens": NON_NEGATIVE, "tool_timeout_s": GT_ZERO, "simulator_timeout_s": GT_ZERO})
