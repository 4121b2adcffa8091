"""The `simulator` section of a run config and the user simulator it builds: the embedded one, or
an LLM over any OpenAI-compatible endpoint."""

from __future__ import annotations

import dataclasses
from typing import Literal

from ppp_jax.envs.llm_client import LLMClientConfig
from ppp_jax.envs.simulator import CAP_REPLY, DEFAULT_MAX_QUESTIONS, AmateurHidden, UserSimulator
from ppp_jax.envs.simulator_embedded import EmbeddedSimulatorConfig, EmbeddedUserSimulator
from ppp_jax.envs.simulator_llm import LLMSimulatorConfig, LLMUserSimulator


@dataclasses.dataclass(frozen=True)
class SimulatorConfig:
    """Which simulator backend a run uses, flat so a run's YAML stays short.

    `make_simulator` turns it into the backend's own config (EmbeddedSimulatorConfig /
    LLMSimulatorConfig); build those directly for the less common knobs.
    """

    backend: Literal["embedded", "llm"] = "embedded"
    max_questions: int = DEFAULT_MAX_QUESTIONS
    # LLM backend only; the endpoint's fields take `LLMClientConfig`'s defaults:
    model: str = LLMClientConfig.model
    base_url: str | None = LLMClientConfig.base_url
    api_key_env: str = LLMClientConfig.api_key_env
    timeout_s: float = LLMClientConfig.timeout_s
    max_retries: int = LLMClientConfig.max_retries
    max_concurrency: int = 32
    show_tags_to_agent: bool = False  # the agent sees the [Cost N]/[Reward k] tags (released)
    cap_reply: str = CAP_REPLY  # the refusal past max_questions (released: RELEASED_CAP_REPLY)
    amateur_hidden: AmateurHidden = "all"  # "swe": the gold stays visible in search (released)
    # the released data files (.parquet/.jsonl/.json) whose rows carry extra_info.preference: the
    # LLM user is then told the released preference and rule strings instead of ours
    # (envs.preference_texts); empty = ours
    preference_texts: tuple[str, ...] = ()
    compliance_judge: Literal["llm", "rule", "both"] = "llm"


def make_simulator(cfg: SimulatorConfig) -> UserSimulator:
    """Builds the configured simulator (embedded, or LLM over an OpenAI-compatible endpoint)."""
    if cfg.backend == "embedded":
        return EmbeddedUserSimulator(EmbeddedSimulatorConfig(
            max_questions=cfg.max_questions, show_tags_to_agent=cfg.show_tags_to_agent,
            cap_reply=cfg.cap_reply, amateur_hidden=cfg.amateur_hidden))
    if cfg.backend == "llm":
        client = LLMClientConfig(
            model=cfg.model,
            base_url=cfg.base_url,
            api_key_env=cfg.api_key_env,
            timeout_s=cfg.timeout_s,
            max_retries=cfg.max_retries,
            max_concurrency=cfg.max_concurrency,
        )
        from ppp_jax.envs.preference_texts import read_preference_texts

        texts = read_preference_texts(cfg.preference_texts) if cfg.preference_texts else None
        return LLMUserSimulator(
            LLMSimulatorConfig(
                client=client,
                max_questions=cfg.max_questions,
                show_tags_to_agent=cfg.show_tags_to_agent,
                cap_reply=cfg.cap_reply,
                amateur_hidden=cfg.amateur_hidden,
                compliance_judge=cfg.compliance_judge,
            ),
            texts=texts,
        )
    raise ValueError(f"unknown simulator backend {cfg.backend!r}; expected 'embedded' or 'llm'")
