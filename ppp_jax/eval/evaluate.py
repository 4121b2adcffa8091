"""Evaluation with the paper's Table-2 protocol, for any policy (`ppp eval`).

Protocol (reference section 9.1): vague prompts, each task paired with every evaluated preference,
scores averaged over all episodes (hence over the preferences); plus the same tasks with precise
prompts (the paper's Figure 6 comparison). Reported per prompt kind:

  productivity     mean task score (F1 for function localization)
  proactivity      share of episodes whose session effort is low
  personalization  share of preference-judged episodes that followed the preference
  ask_ratio        share of episodes with at least one question
  low_effort_share share of all questions that were low effort (the paper's Figure 7 quantity)
  questions_per_episode, and the question counts per effort level

and, for vague prompts, personalization (and the other scores) per preference, with means over
the seen (training) and held-out preferences. `avg` is the mean of the vague productivity,
proactivity and personalization, the per-domain part of Table 2's "Avg".

The policy is anything the episode runner accepts: our checkpoint through the sampling engine
(`ppp_jax.rollout.policies.SeededEnginePolicy`) or an OpenAI-compatible model (`envs.policy.OpenAIPolicy`).
"""

from __future__ import annotations

import asyncio
import collections
import math
from typing import Any, Sequence

import numpy as np

from ppp_jax.config.run import EvalSection
from ppp_jax.envs import scoring
from ppp_jax.envs.domains.base import Task
from ppp_jax.envs.episode import EpisodeConfig
from ppp_jax.envs.preferences import HELDOUT_IDS, TRAIN_IDS, get_preference
from ppp_jax.envs.records import EpisodeRecord
from ppp_jax.rollout.orchestrator import EpisodeRequest, run_requests
from ppp_jax.rollout.policies import SeededEnginePolicy
from ppp_jax.rollout.results import RolloutCounters
from ppp_jax.train.progress import ProgressBar

SCORE_KEYS = ("ask_ratio", "productivity", "proactivity", "personalization", "low_effort_share")


def eval_preferences(cfg: EvalSection) -> tuple[str, ...]:
    """The preference ids an evaluation config names."""
    if cfg.preference_ids:
        for p in cfg.preference_ids:
            get_preference(p)  # raises naming the valid ids
        return tuple(cfg.preference_ids)
    return {"train": TRAIN_IDS, "heldout": HELDOUT_IDS, "all": TRAIN_IDS + HELDOUT_IDS}[cfg.preferences]


def eval_requests(tasks: Sequence[Task], cfg: EvalSection) -> list[EpisodeRequest]:
    """Task × preference × prompt kind requests, `episodes_per_prompt` samples each."""
    prefs = eval_preferences(cfg)
    reqs = []
    for kind in cfg.prompt_kinds:
        kind_prefs = prefs if (kind == "vague" or cfg.precise_preferences == "same") else ("no_preference",)
        for task in tasks:
            for pref in kind_prefs:
                reqs.append(EpisodeRequest(task, pref, kind, f"{task.task_id}|{pref}|{kind}|0",
                                           cfg.episodes_per_prompt))
    return reqs


def _nan_to_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def summarize(records: Sequence[EpisodeRecord],
              metrics: scoring.MetricsConfig = scoring.MetricsConfig()) -> dict[str, Any]:
    """The scores of a set of episodes (see the module docstring; `metrics` picks the paper's or
    the released code's definitions); None where undefined."""
    if not records:
        return {"n": 0, **{k: None for k in SCORE_KEYS}}
    s = scoring.aggregate(records, personalization_rule=metrics.personalization,
                          proactivity_rule=metrics.proactivity)
    nq = sum(s.effort_counts.values())
    return {
        "n": s.n,
        "ask_ratio": _nan_to_none(s.ask_ratio),
        "productivity": _nan_to_none(s.productivity),
        "proactivity": _nan_to_none(s.proactivity),
        "personalization": _nan_to_none(s.personalization),
        "n_personalization": s.n_personalization,
        "low_effort_share": s.effort_counts["low"] / nq if nq else None,
        "questions_per_episode": _nan_to_none(s.questions_per_episode),
        "questions_by_effort": dict(s.effort_counts),
        "unanswered_questions": s.num_unanswered,
        "finished": float(np.mean([r.finish_reason == "finish" for r in records])),
        **_graded(records),
    }


def _graded(records: Sequence[EpisodeRecord]) -> dict[str, Any]:
    """For domains whose score comes with details (SWE-Full's grade): the resolved rate, the
    mean FAIL_TO_PASS share and the count of each reason a patch was not resolved."""
    details = [r.stats.get("score_details") for r in records]
    graded = [d for d in details if isinstance(d, dict) and "resolved" in d]
    if not graded:
        return {}
    reasons = collections.Counter((d.get("reason") or "").split(":")[0] for d in graded
                                  if not d["resolved"])
    return {"graded": len(graded), "resolved": float(np.mean([bool(d["resolved"]) for d in graded])),
            "fail_to_pass_share": _mean([d.get("fail_to_pass_share") for d in graded]),
            "unresolved_reasons": dict(reasons.most_common())}


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return float(np.mean(vals)) if vals else None


def result_of(records: Sequence[EpisodeRecord], counters: RolloutCounters | None = None,
              settings: dict[str, Any] | None = None,
              metrics: scoring.MetricsConfig = scoring.MetricsConfig()) -> dict[str, Any]:
    """The evaluation result (JSON-able) of a set of episodes."""
    out: dict[str, Any] = {"n_episodes": len(records), "settings": settings or {}}
    for kind in ("vague", "precise"):
        rs = [r for r in records if r.prompt_kind == kind]
        if rs:
            out[kind] = summarize(rs, metrics)
    vague = [r for r in records if r.prompt_kind == "vague"]
    per_pref: dict[str, Any] = {}
    for pref in sorted({r.preference_id for r in vague}, key=lambda p: get_preference(p).index):
        p = get_preference(pref)
        per_pref[pref] = {"split": "seen" if p.split == "train" else "held-out", "name": p.display_name,
                          **summarize([r for r in vague if r.preference_id == pref], metrics)}
    out["per_preference"] = per_pref
    for split, label in (("seen", "seen"), ("held-out", "heldout")):
        rows = [v for v in per_pref.values() if v["split"] == split]
        if rows:
            out[label] = {k: _mean([r[k] for r in rows]) for k in SCORE_KEYS}
    if "vague" in out:
        v = out["vague"]
        out["avg"] = _mean([v["productivity"], v["proactivity"], v["personalization"]])
    if counters is not None:
        out["counters"] = {k: int(x) for k, x in vars(counters).items()}
    return out


def evaluate(policy: Any, domain: Any, simulator: Any, tasks: Sequence[Task], cfg: EvalSection, *,
             episode: EpisodeConfig = EpisodeConfig(), concurrency: int = 64, progress: bool = True,
             desc: str = "eval",
             metrics: scoring.MetricsConfig = scoring.MetricsConfig()) -> dict[str, Any]:
    """Runs the protocol and returns the result dict (`result_of`).

    Sampling seeds derive from `cfg.seed`, so an evaluation is repeatable for a fixed policy.
    """
    reqs = eval_requests(tasks, cfg)
    if not reqs:
        raise ValueError("the evaluation has no episodes: no tasks, preferences or prompt kinds")
    if isinstance(policy, SeededEnginePolicy):
        policy.base_seed = cfg.seed
    counters = RolloutCounters()
    bar = ProgressBar(sum(r.n for r in reqs), desc=desc, enabled=progress,
                      postfix=(("ask", "ask"),))
    try:
        groups = asyncio.run(run_requests(reqs, domain, policy, simulator, episode=episode,
                                          concurrency=concurrency, max_retries=1, seed=cfg.seed,
                                          counters=counters, on_episode=lambda: bar.update(1)))
    finally:
        bar.close()
    records = [r for g in groups for r in g]
    settings = {"split": cfg.split, "tasks": len(tasks), "preferences": list(eval_preferences(cfg)),
                "prompt_kinds": list(cfg.prompt_kinds), "episodes_per_prompt": cfg.episodes_per_prompt,
                "temperature": cfg.temperature, "seed": cfg.seed,
                "metrics": {"proactivity": metrics.proactivity,
                            "personalization": metrics.personalization}}
    return result_of(records, counters, settings, metrics)


# ------------------------------------------------------------------------------------------------
# Presentation
# ------------------------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def one_line(result: dict[str, Any]) -> str:
    parts = []
    for kind in ("vague", "precise"):
        if kind in result:
            r = result[kind]
            parts.append(f"{kind}: ask {_pct(r['ask_ratio'])}%, prod {_pct(r['productivity'])}, "
                         f"proact {_pct(r['proactivity'])}, pers {_pct(r['personalization'])}")
    return "; ".join(parts)


def to_markdown(result: dict[str, Any], title: str = "Evaluation") -> str:
    """A Table-2-style Markdown report of one evaluation (scores in %)."""
    lines = [f"## {title}", ""]
    lines += ["| prompts | episodes | Productivity | Proactivity | Personalization | Ask ratio | "
              "Low-effort share | Questions / episode |", "|---|---|---|---|---|---|---|---|"]
    for kind in ("vague", "precise"):
        if kind in result:
            r = result[kind]
            q = r.get("questions_per_episode")
            lines.append(f"| {kind} | {r['n']} | {_pct(r['productivity'])} | {_pct(r['proactivity'])} | "
                         f"{_pct(r['personalization'])} | {_pct(r['ask_ratio'])} | "
                         f"{_pct(r['low_effort_share'])} | {'–' if q is None else f'{q:.2f}'} |")
    if result.get("avg") is not None:
        lines += ["", f"Avg (vague productivity, proactivity, personalization): {_pct(result['avg'])}"]
    graded = [(kind, result[kind]) for kind in ("vague", "precise")
              if kind in result and "resolved" in result[kind]]
    if graded:  # SWE-Full: productivity is the resolved rate
        lines += ["", "Graded by the instances' tests (productivity = resolved rate):", "",
                  "| prompts | graded | Resolved | FAIL_TO_PASS passing (mean share) | "
                  "not resolved, by reason |", "|---|---|---|---|---|"]
        for kind, r in graded:
            why = ", ".join(f"{k or 'unknown'}: {n}" for k, n in r["unresolved_reasons"].items())
            lines.append(f"| {kind} | {r['graded']} | {_pct(r['resolved'])} | "
                         f"{_pct(r['fail_to_pass_share'])} | {why or '–'} |")
    if result.get("per_preference"):
        lines += ["", "Vague prompts, per preference:", "",
                  "| preference | split | episodes | Personalization | Proactivity | Productivity | Ask ratio |",
                  "|---|---|---|---|---|---|---|"]
        # in the preferences' order: a result read back from JSON has its keys sorted by name
        rows = sorted(result["per_preference"].items(), key=lambda kv: get_preference(kv[0]).index)
        for pid, r in rows:
            lines.append(f"| {r['name']} | {r['split']} | {r['n']} | {_pct(r['personalization'])} | "
                         f"{_pct(r['proactivity'])} | {_pct(r['productivity'])} | {_pct(r['ask_ratio'])} |")
        for label in ("seen", "heldout"):
            if label in result:
                r = result[label]
                lines.append(f"| **mean, {label}** | | | {_pct(r['personalization'])} | "
                             f"{_pct(r['proactivity'])} | {_pct(r['productivity'])} | {_pct(r['ask_ratio'])} |")
    return "\n".join(lines) + "\n"
