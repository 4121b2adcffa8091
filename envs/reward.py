"""The PPP reward R = R_prod + w_proact * R_proact + w_pers * R_pers, as a pure function.

Two variants (`RewardConfig.variant`):

`paper` (default; paper section 5.1):
  R_prod   = task score s.
  R_proact = on a **vague** prompt: +0.05 if the episode asked >= 1 question and every question
             was low effort, -0.1 per medium-effort question, -0.5 per high-effort question. A
             question past the user's cap counts as medium (the user refused it).
             On a **precise** prompt the agent already holds everything the user could tell it
             from the prompt, so every question is unnecessary (the paper's medium effort,
             section 4.3): each costs at least medium (-0.1; high stays -0.5) and there is no
             low-effort bonus.
  R_pers   = the preference's Table-5 penalty (envs.preferences.penalty), +0.05 if the preference
             was followed, >= 1 question was asked and the prompt was vague; 0 for preferences
             with no judge.
  The ">= 1 question" condition on both bonuses is our reading (the paper says "all queries" and
  "fully complies"; the released code requires a question for both). Granting the bonuses only on
  vague prompts and charging every precise-prompt question follows the released code (reference
  section 7.2: precise SWE costs -0.2 * level per question, search adds -0.1 * level; both
  bonuses vague-only), which is what teaches "ask only when needed"; without it a low-effort
  question on a precise prompt would earn +0.1 with no cost.

Malformed simulator replies (`Question.malformed`) are left out of both variants' effort terms
and of per-question compliance (see envs.scoring); they still count as asked questions for the
preference penalties (`num_asks`).

`released` (the released code's `UserReward`, reference section 7.2). With q questions, L_k
answers at raw level k (`Question.level`; if missing, the effort's default level: SWE low 1 /
medium 3 / high 4, search 1 / 2 / 3), Lsum = sum k * L_k:
  SWE vague:     -0.1 * (Lsum - q), +0.05 if L_1 > 0 and Lsum == q
  SWE precise:   -0.2 * Lsum
  search vague:  -(0.05 * L_2 + 0.9 * L_3), +0.05 if L_1 > 0 (any, not all)
  search precise: -(0.05 * L_2 + 0.9 * L_3) - 0.1 * Lsum
  both, vague:   -0.1 if q == 0 and s < 1
  R_pers = penalty + 0.05 if vague and q >= 1 and penalty == 0; only if the preference has a judge.
  Questions past the cap carry no level (as in the released code), so they count in q but not in
  Lsum: in SWE-vague each adds +0.1 (the released code's loophole, reproduced on purpose).

Total = s + w_proact * R_proact + w_pers * R_pers, clipped to [0, 1] when `clip` (the GRPO
advantage uses the clipped value). Weights of 0 give the paper's "w/o Proact." / "w/o Pers."
ablations. The domain decides SWE vs search: its `task_family`, which the episode runner records
on the EpisodeRecord (`record.task_family`). A record without one (built by hand, or by older
code) falls back to the domain's name: one containing any of `search_domain_markers` uses the
search constants.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from ppp_jax.envs.preferences import get_preference
from ppp_jax.envs.records import EpisodeRecord
from ppp_jax.envs.scoring import (  # noqa: F401 -- the released constants, re-exported
    CORRECT_THRESHOLD,
    RELEASED_LOW_BONUS,
    RELEASED_NO_ASK_WRONG,
    RELEASED_SEARCH_L2_COST,
    RELEASED_SEARCH_L3_COST,
    RELEASED_SEARCH_PRECISE_PER_LEVEL,
    RELEASED_SWE_PRECISE_PER_LEVEL,
    RELEASED_SWE_VAGUE_PER_LEVEL,
    SEARCH_DOMAIN_MARKERS,
    _task_score,
    compliance,
    record_family,
    released_cost_reward,
    released_levels,
    scored_questions,
    task_family,
)

# Paper constants.
PAPER_LOW_BONUS = 0.05
PAPER_MEDIUM_COST = 0.1
PAPER_HIGH_COST = 0.5
PREFERENCE_BONUS = 0.05


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """How the PPP reward is computed."""

    variant: Literal["paper", "released"] = "paper"
    proactivity_weight: float = 1.0  # 0 = "w/o Proact." ablation
    personalization_weight: float = 1.0  # 0 = "w/o Pers." ablation
    clip: bool = True  # clip the total to [0, 1] (the paper's advantage input)
    # Fallback for records without a `task_family` (hand-built or older records): a domain whose
    # name contains any of these uses the search constants (released variant).
    search_domain_markers: tuple[str, ...] = SEARCH_DOMAIN_MARKERS
    correct_threshold: float = CORRECT_THRESHOLD  # a task score below it is a wrong answer

    def __post_init__(self):
        if self.variant not in ("paper", "released"):
            raise ValueError(f"variant must be 'paper' or 'released', got {self.variant!r}")


@dataclasses.dataclass(frozen=True)
class RewardBreakdown:
    """The three (unweighted) components, the weighted sum, and the final (clipped) reward."""

    productivity: float
    proactivity: float
    personalization: float
    unclipped: float
    total: float


def _paper_proactivity(record: EpisodeRecord) -> float:
    qs = scored_questions(record)
    vague = record.prompt_kind == "vague"
    # On a precise prompt every question is unnecessary: at least medium effort.
    efforts = [q.effort if vague or q.effort == "high" else "medium" for q in qs]
    n_med = sum(1 for e in efforts if e == "medium")
    n_high = sum(1 for e in efforts if e == "high")
    bonus = PAPER_LOW_BONUS if efforts and all(e == "low" for e in efforts) else 0.0
    return bonus - PAPER_MEDIUM_COST * n_med - PAPER_HIGH_COST * n_high


def _paper_personalization(record: EpisodeRecord) -> float:
    comp = compliance(record)
    if comp.penalty is None:
        return 0.0
    vague = record.prompt_kind == "vague"
    bonus = PREFERENCE_BONUS if (vague and comp.followed and scored_questions(record)) else 0.0
    return comp.penalty + bonus


def _released_personalization(record: EpisodeRecord) -> float:
    comp = compliance(record)
    if comp.penalty is None:
        return 0.0
    vague = record.prompt_kind == "vague"
    bonus = PREFERENCE_BONUS if (vague and scored_questions(record) and comp.penalty == 0.0) else 0.0
    return comp.penalty + bonus


def reward_breakdown(record: EpisodeRecord, cfg: RewardConfig = RewardConfig()) -> RewardBreakdown:
    """The PPP reward of one scored episode and its three components (see module docstring).

    Raises ValueError if the record has no task score, UnknownPreferenceError for an unknown
    preference id.
    """
    get_preference(record.preference_id)
    s = _task_score(record)
    if cfg.variant == "paper":
        proact = _paper_proactivity(record)
        pers = _paper_personalization(record)
    else:
        family = record_family(record, cfg.search_domain_markers)
        proact = released_cost_reward(record, family, s, cfg.correct_threshold)
        pers = _released_personalization(record)
    total = s + cfg.proactivity_weight * proact + cfg.personalization_weight * pers
    final = min(max(total, 0.0), 1.0) if cfg.clip else total
    return RewardBreakdown(s, proact, pers, total, final)


def ppp_reward(record: EpisodeRecord, cfg: RewardConfig = RewardConfig()) -> float:
    """The scalar PPP reward of one episode (clipped to [0, 1] unless `cfg.clip` is False)."""
    return reward_breakdown(record, cfg).total
