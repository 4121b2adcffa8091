"""Builders of a run's parts from its config: tokenizer, model, tasks, the agent's domain, the
simulator, the engine and the rollout policy."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from flax import nnx

from ppp_jax.config.paths import MissingPathError, check_domain_paths, input_path_problems
from ppp_jax.config.run import RunConfig
from ppp_jax.envs.domains.base import Task
from ppp_jax.envs.domains.registry import get_domain
from ppp_jax.envs.policy import EngineSampling
from ppp_jax.envs.simulator import UserSimulator
from ppp_jax.envs.simulator_backends import make_simulator
from ppp_jax.model import sharding as shd
from ppp_jax.rollout.agent_domain import PreferenceDomain
from ppp_jax.rollout.policies import ReplicaEnginePolicy, SeededEnginePolicy
from ppp_jax.sampling.chat import load_tokenizer
from ppp_jax.train.engine_replicas import EngineReplicas


def vocab_size_of(tokenizer: Any) -> int:
    """Number of ids the tokenizer can produce."""
    if hasattr(tokenizer, "get_vocab_size"):
        return int(tokenizer.get_vocab_size(with_added_tokens=True))
    return int(len(tokenizer))


def build_model(cfg: RunConfig, tokenizer: Any, path: str | Path | None = None,
                mesh: Any = None) -> nnx.Module:
    """The policy: loaded from `path` / `cfg.policy.path`, else randomly initialized from
    `cfg.model` (vocab size from the tokenizer when `policy.vocab_from_tokenizer`).

    The parameters are created directly on `mesh` (default: `cfg.sharding.mesh`) with the
    logical-axis rules of `cfg.sharding`: a checkpoint is read shard by shard, and a random
    init on a multi-device mesh runs jitted with sharded outputs, so no device ever holds the
    whole model. On a one-device mesh the random init stays eager (bit-identical to before;
    the jitted init differs in the last ulp of some values)."""
    from ppp_jax.model.api import load_pretrained
    from ppp_jax.model.transformer import SeedOssForCausalLM

    path = path or cfg.policy.path
    drop = cfg.policy.dropout
    if mesh is None:
        mesh = shd.make_mesh(cfg.sharding.mesh)
    rules = cfg.sharding.rules
    if path:
        m = cfg.model
        return load_pretrained(path, mesh=mesh, rules=rules, param_dtype=m.param_dtype,
                               dtype=m.dtype, remat=m.remat, attention_impl=m.attention_impl,
                               dot_chunk=m.dot_chunk, attention_dropout=drop,
                               residual_dropout=drop)
    mc = cfg.model.build().replace(attention_dropout=drop, residual_dropout=drop)
    if cfg.policy.vocab_from_tokenizer:
        mc = mc.replace(vocab_size=-(-vocab_size_of(tokenizer) // 8) * 8)

    def init() -> SeedOssForCausalLM:
        return SeedOssForCausalLM(mc, rngs=nnx.Rngs(cfg.policy.init_seed))

    if mesh.devices.size > 1:
        return shd.create_sharded(init, mesh, rules)
    return shd.shard_model(init(), mesh, rules)


def build_tasks(cfg: RunConfig) -> tuple[list[Task], Any]:
    """(tasks, underlying domain) of `cfg.domain`: the domain registered under `cfg.domain.name`
    (`ppp_jax.envs.domains.registry`) builds them from its own config section.

    Raises:
      MissingPathError (a ConfigError and a FileNotFoundError) naming the key of a missing data
        file or directory, before reading anything;
      DataError (`ppp_jax.envs.domains.base`) naming `file:line: field: reason` for bad rows.
    """
    check_domain_paths(cfg)
    spec = get_domain(cfg.domain.name)
    tasks, domain = spec.build(spec.section_from(cfg.domain))
    return list(tasks), domain


def agent_domain(cfg: RunConfig, inner: Any) -> PreferenceDomain:
    """The domain as the agent sees it (tools, system prompt, the user's preference)."""
    d = cfg.domain
    return PreferenceDomain(inner, tools=d.tools, system_prompt=d.system_prompt,
                            show_preference=d.show_preference,
                            preference_first=d.preference_first)


def task_rows(tasks: Sequence[Task]) -> list[dict[str, Any]]:
    """Tasks as data-pipeline records (`ppp_jax.train.data.TaskRecord` rows)."""
    return [{"task_id": t.task_id, "domain": t.domain, "precise_prompt": t.precise_prompt,
             "vague_prompt": t.vague_prompt, "hidden_info": t.hidden_info, "gold": list(t.gold),
             "split": t.split} for t in tasks]


@dataclasses.dataclass
class Parts:
    """Everything a run is made of, built once (`build_parts`) or supplied by a caller."""

    tokenizer: Any
    model: nnx.Module
    tasks: list[Task]
    domain: PreferenceDomain
    simulator: UserSimulator


def build_parts(cfg: RunConfig, *, tokenizer: Any = None, model: nnx.Module | None = None,
                simulator: UserSimulator | None = None) -> Parts:
    """Builds the run's tokenizer, policy, tasks, agent-side domain and simulator.

    Every input path is checked first, and the tasks are built before the policy, so a missing
    file or a bad data row is reported before any weights are loaded."""
    if model is None:
        # the paths `ppp train` reads (a given tokenizer or model stands for its path)
        problems = [x for x in input_path_problems(cfg, "train")
                    if not (tokenizer is not None and x.startswith("policy.tokenizer"))]
        if problems:
            raise MissingPathError(problems[0])
    tasks, inner = build_tasks(cfg)
    if tokenizer is None:
        path = cfg.policy.tokenizer or cfg.policy.path
        if not path:
            raise ValueError("policy.tokenizer (or policy.path) must name a tokenizer")
        tokenizer = load_tokenizer(path)
    if model is None:
        model = build_model(cfg, tokenizer)
    return Parts(tokenizer, model, tasks, agent_domain(cfg, inner),
                 simulator if simulator is not None else make_simulator(cfg.simulator))


def make_engine(cfg: RunConfig, model: nnx.Module) -> Any:
    from ppp_jax.sampling.engine import Engine

    return Engine(model, cfg.engine.replica_config())


def chat_format_of(cfg: RunConfig, tokenizer: Any) -> str:
    """`policy.chat_format`, or the format the tokenizer's special tokens identify (a
    ConfigError naming policy.chat_format when they identify none)."""
    from ppp_jax.config.loader import ConfigError
    from ppp_jax.sampling.chat_format import detect_format

    if cfg.policy.chat_format:
        return cfg.policy.chat_format
    try:
        return detect_format(tokenizer)
    except ValueError as e:
        raise ConfigError(f"policy.chat_format: {e}", ["policy.chat_format"]) from None


def generation_prefix_of(cfg: RunConfig, tokenizer: Any) -> str:
    """`policy.generation_prefix` resolved: "auto" = what the tokenizer's chat template writes
    after the format's generation prompt, "none" = "", else the configured text (a ConfigError
    naming policy.generation_prefix when the template's generation prompt is not the format's)."""
    from ppp_jax.config.loader import ConfigError
    from ppp_jax.sampling.chat_format import GenerationPromptMismatch, template_generation_prefix

    prefix = cfg.policy.generation_prefix
    if prefix == "none":
        return ""
    if prefix != "auto":
        return prefix
    if not isinstance(getattr(tokenizer, "chat_template", None), str):
        return ""  # a tokenizer without a template (trained here): nothing to inspect
    try:
        return template_generation_prefix(tokenizer, chat_format_of(cfg, tokenizer))
    except GenerationPromptMismatch as e:
        raise ConfigError(f"policy.generation_prefix: auto: {e}",
                          ["policy.generation_prefix", "policy.chat_format"]) from None


def make_policy(cfg: RunConfig, engine: Any, tokenizer: Any, temperature: float | None = None
                ) -> SeededEnginePolicy:
    """The rollout policy over `engine`: a `SeededEnginePolicy`, or for `EngineReplicas` a
    `ReplicaEnginePolicy` that sends each episode to one replica; chats in `chat_format_of`,
    each turn opened with `generation_prefix_of`."""
    from ppp_jax.sampling.chat import ChatTokenizer

    r = cfg.rollout
    t = r.temperature if temperature is None else temperature
    sampling = EngineSampling(t, r.top_p, r.top_k)
    chat = ChatTokenizer(tokenizer, chat_format_of(cfg, tokenizer))
    prefix = generation_prefix_of(cfg, tokenizer)
    if isinstance(engine, EngineReplicas):
        return ReplicaEnginePolicy(engine.engines, chat, sampling, cfg.seed, prefix)
    return SeededEnginePolicy(engine, chat, sampling, cfg.seed, prefix)
