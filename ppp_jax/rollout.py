"""The rollout orchestrator: prompts -> G episodes each -> scores, PPP rewards, advantages, tokens.

One PPP step's host side (SPEC "The data flow of one PPP training step"):

    items (PromptItem: task × preference × prompt kind)
      -> G episodes per item, all concurrent (`envs.episode.run_episode`), so their agent turns
         feed the engine's continuous batch; tools and the simulator run in threads
      -> episodes hit by simulator/policy/scoring errors or malformed simulator replies are
         re-run (fresh seed) up to `max_episode_retries` times, then dropped; both counted.
         Task scores outside [0, 1] are clamped (counted). Episodes without policy tokens or too
         long for a row are dropped; a group left empty, or with one episode when G >= 2, is
         dropped (counted: the singleton rule of the advantages is for G = 1 only)
      -> scores (`envs.scoring.episode_scores`) and the PPP reward (`envs.reward.reward_breakdown`)
      -> DAPO overlong shaping (optional, on the unclipped reward; one [0, 1] clip afterwards
         when `reward.clip` or `advantage.clip_reward_01`)
      -> GRPO / Dr.GRPO / RLOO advantages over each item's group
      -> token batch (`ppp_jax.batch.assemble_batch`): only sampled tokens carry loss mask 1

Determinism: each episode's sampling seed is a hash of (step seed, item uid, sample index,
attempt), never a counter, so results do not depend on the order in which concurrent episodes
happen to start. Records come back in item order, samples in index order. With several engine
replicas (`ReplicaEnginePolicy`) the replica of an episode is a hash of its group, likewise.

`PreferenceDomain` wraps a task domain for the agent's side: it can restrict the tools, replace
the system prompt, and append the user's preference (its own description) to the first user
message. The simulator still sees the task's untouched precise prompt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import math
import time
from typing import Any, Mapping, Sequence

import numpy as np

from ppp_jax import dapo
from ppp_jax.advantages import compute_advantages
from ppp_jax.batch import TokenBatch, assemble_batch
from ppp_jax.envs import scoring
from ppp_jax.envs.domains.base import FINISH, PromptKind, Task, TaskDomain
from ppp_jax.envs.episode import EpisodeConfig, run_episode
from ppp_jax.envs.policy import EngineSampling, EnginePolicy, EngineSession
from ppp_jax.envs.preferences import get_preference
from ppp_jax.envs.records import EpisodeRecord
from ppp_jax.envs.reward import RewardConfig, reward_breakdown
from ppp_jax.envs.simulator import UserSimulator
from ppp_jax.metrics import episode_metrics
from ppp_jax.rl_config import RLConfig

log = logging.getLogger(__name__)

PREFERENCE_NOTE = ("About the user: this is how they describe what they want from you when you "
                   "ask them something (\"you\" is the user): {instruction}")


# ------------------------------------------------------------------------------------------------
# What the agent sees
# ------------------------------------------------------------------------------------------------


class PreferenceDomain:
    """A task domain as the agent sees it in PPP (see the module docstring).

    Args:
      domain: the underlying domain (tools, scoring).
      tools: names of the domain tools to keep (finish always kept); empty = all.
      system_prompt: replacement system prompt; "" = the domain's.
      show_preference: append `PREFERENCE_NOTE` for the task's `metadata["preference_id"]`.
    """

    def __init__(self, domain: TaskDomain, *, tools: Sequence[str] = (), system_prompt: str = "",
                 show_preference: bool = True):
        self.inner = domain
        self.name = domain.name
        self.task_family = domain.task_family
        self.tools = tuple(tools)
        self._system_prompt = system_prompt
        self.show_preference = show_preference

    def system_prompt(self, task: Task) -> str:
        return self._system_prompt or self.inner.system_prompt(task)

    def first_message(self, task: Task, kind: PromptKind) -> str:
        text = self.inner.first_message(task, kind)
        pref = task.metadata.get("preference_id")
        if self.show_preference and pref:
            text += "\n\n" + PREFERENCE_NOTE.format(instruction=get_preference(pref).instruction)
        return text

    def tool_schemas(self, task: Task) -> list[dict[str, Any]]:
        schemas = self.inner.tool_schemas(task)
        if not self.tools:
            return schemas
        keep = set(self.tools) | {FINISH}
        return [s for s in schemas if s["function"]["name"] in keep]

    async def run_tool(self, task: Task, name: str, args: Mapping[str, Any],
                       state: dict[str, Any]) -> str:
        if self.tools and name not in set(self.tools) | {FINISH}:
            return f"ERROR: unknown tool '{name}'."
        return await self.inner.run_tool(task, name, args, state)

    async def score(self, task: Task, answer: str | None) -> float:
        return await self.inner.score(task, answer)


def for_user(task: Task, preference_id: str) -> Task:
    """The task with the user's preference id in its metadata (read by `PreferenceDomain`)."""
    return dataclasses.replace(task, metadata={**dict(task.metadata), "preference_id": preference_id})


class TimedSimulator:
    """Wraps a user simulator and adds up the time its answers take (summed over concurrent
    calls, so it can exceed the wall time of the rollout)."""

    def __init__(self, inner: UserSimulator):
        self.inner = inner
        self.seconds = 0.0
        self.calls = 0

    async def answer(self, ctx: Any, question: str) -> Any:
        t0 = time.perf_counter()
        try:
            return await self.inner.answer(ctx, question)
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1


# ------------------------------------------------------------------------------------------------
# Seeds
# ------------------------------------------------------------------------------------------------


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from any printable parts (stable across processes and runs)."""
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


class SeededEnginePolicy(EnginePolicy):
    """`EnginePolicy` whose per-episode sampling seed is `derive_seed(base, episode_id)`.

    The base policy numbers sessions in the order they start; under concurrency and retries that
    order is not a function of the data, so seeds are derived from the episode id instead.
    """

    def __init__(self, engine: Any, tokenizer: Any, sampling: EngineSampling = EngineSampling(),
                 base_seed: int = 0):
        super().__init__(engine, tokenizer, sampling)
        self.base_seed = base_seed

    def start(self, episode_id: str) -> EngineSession:
        seed = derive_seed(self.base_seed, episode_id)
        return EngineSession(self, f"{episode_id}@{seed}", seed)


def episode_group_key(episode_id: str) -> str:
    """The part of an episode id that all of its group's episodes share.

    `run_requests` names episodes "{seed}|{group}|{sample}|{attempt}"; this drops the last two
    fields, so the G samples of a group and their retries map to the same key. An id of another
    shape is its own key.
    """
    head, sep, _ = episode_id.rpartition("|")
    head, sep2, _ = head.rpartition("|")
    return head if sep and sep2 and head else episode_id


def replica_for(key: str, num_replicas: int) -> int:
    """The engine replica, in [0, num_replicas), that serves `key`: a stable hash (the same in
    every process and run), so a run is reproducible for a fixed replica count."""
    if num_replicas < 1:
        raise ValueError(f"replica_for: num_replicas={num_replicas} must be >= 1")
    return derive_seed("replica", key) % num_replicas


class _OnReplica:
    """What an `EngineSession` reads from its policy (chat, sampling, generation_prefix), taken
    from `parent`, with `engine` one replica: the session then generates and ends its KV
    session on that replica only."""

    def __init__(self, parent: EnginePolicy, engine: Any):
        self._parent = parent
        self.engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parent, name)


class ReplicaEnginePolicy(SeededEnginePolicy):
    """`SeededEnginePolicy` over several engine replicas (`rollout.engine_layout: sampling`).

    Each episode runs on one replica, chosen by `replica_for(episode_group_key(episode_id))`:
    all samples of a GRPO group (and their retries) land on the same replica, where they share
    the cached prefix of their common first prompt, and the choice does not depend on the order
    in which concurrent episodes start. Seeds are `SeededEnginePolicy`'s (from the episode id),
    so a sample's tokens do not depend on which replica runs it beyond the replica's numerics.
    The price of hashing groups is load balance: with few groups per replica some replicas get
    more groups than others (the slowest one sets the rollout time).

    Args:
      engines: the replicas (each with `generate` and `end_session`, like `Engine`).
      tokenizer / sampling / base_seed: as `SeededEnginePolicy`.

    `sessions_per_replica[i]` counts the episodes (attempts included) started on replica i.
    `engine` is the first replica (for code that reads one engine's config).
    """

    def __init__(self, engines: Sequence[Any], tokenizer: Any,
                 sampling: EngineSampling = EngineSampling(), base_seed: int = 0):
        if not engines:
            raise ValueError("ReplicaEnginePolicy needs at least one engine")
        super().__init__(engines[0], tokenizer, sampling, base_seed)
        self.engines = list(engines)
        self._views = [_OnReplica(self, e) for e in self.engines]
        self.sessions_per_replica = [0] * len(self.engines)

    def replica_of(self, episode_id: str) -> int:
        """Index of the replica that runs `episode_id`."""
        return replica_for(episode_group_key(episode_id), len(self.engines))

    def start(self, episode_id: str) -> EngineSession:
        seed = derive_seed(self.base_seed, episode_id)
        i = self.replica_of(episode_id)
        self.sessions_per_replica[i] += 1
        return EngineSession(self._views[i], f"{episode_id}@{seed}", seed)


# ------------------------------------------------------------------------------------------------
# Episodes
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EpisodeRequest:
    """One prompt to roll out `n` times: task, user preference, prompt kind, group key."""

    task: Task
    preference_id: str
    prompt_kind: PromptKind
    group: str
    n: int = 1


@dataclasses.dataclass
class RolloutCounters:
    """Episodes retried or dropped, and why; nothing is dropped without a count here."""

    episodes_run: int = 0
    retried: int = 0
    dropped_errors: int = 0
    crashed: int = 0
    dropped_too_long: int = 0
    dropped_no_tokens: int = 0
    task_score_clamped: int = 0
    groups_dropped_empty: int = 0
    groups_dropped_small: int = 0
    dropped_small_group: int = 0

    def metrics(self) -> dict[str, float]:
        return {f"rollout/{k}": float(v) for k, v in dataclasses.asdict(self).items()}


class RolloutRoundEmpty(RuntimeError):
    """A generation round kept no group at all (every episode failed, e.g. an API outage)."""


AFFECTED_KEYS = ("simulator_errors", "simulator_malformed", "policy_errors", "score_error")


def _affected(record: EpisodeRecord) -> bool:
    """An episode whose outcome was changed by an infrastructure failure (not the agent's fault):
    simulator errors or malformed simulator replies, policy errors, a failed scorer, or a task
    score that is missing or not a number."""
    s = record.stats
    if any(s.get(k, 0) for k in AFFECTED_KEYS):
        return True
    return record.task_score is None or not math.isfinite(record.task_score)


def _clamp_task_score(record: EpisodeRecord, counters: RolloutCounters) -> EpisodeRecord:
    """The record with a finite task score outside [0, 1] clamped into it (counted)."""
    s = record.task_score
    if s is None or not math.isfinite(s) or 0.0 <= s <= 1.0:
        return record
    counters.task_score_clamped += 1
    log.warning("episode %s: task score %r outside [0, 1], clamped", record.task_id, s)
    return dataclasses.replace(record, task_score=min(max(float(s), 0.0), 1.0))


async def run_requests(requests: Sequence[EpisodeRequest], domain: TaskDomain, policy: Any,
                       simulator: UserSimulator, *, episode: EpisodeConfig, concurrency: int,
                       max_retries: int, seed: int, counters: RolloutCounters | None = None,
                       on_episode: Any = None) -> list[list[EpisodeRecord]]:
    """Runs every request's n episodes concurrently; per request, the kept records in sample order.

    An episode with simulator/policy/scoring errors is re-run with a new id (hence seed) up to
    `max_retries` times; if it still fails it is dropped. `counters` receives the counts;
    `on_episode()` is called as each episode ends (progress bars).
    """
    counters = counters if counters is not None else RolloutCounters()
    sem = asyncio.Semaphore(max(1, concurrency))

    async def one(req: EpisodeRequest, k: int) -> EpisodeRecord | None:
        task = for_user(req.task, req.preference_id)
        for attempt in range(max_retries + 1):
            eid = f"{seed}|{req.group}|{k}|{attempt}"
            async with sem:
                try:
                    rec = await run_episode(domain, task, policy, simulator,
                                            preference_id=req.preference_id,
                                            prompt_kind=req.prompt_kind, config=episode,
                                            episode_id=eid)
                except Exception as e:  # noqa: BLE001 -- a crashed episode must not stop the step
                    log.warning("episode %s crashed: %s: %s", eid, type(e).__name__, e)
                    counters.crashed += 1
                    rec = None
            counters.episodes_run += 1
            if rec is not None:
                rec = _clamp_task_score(rec, counters)
            if on_episode is not None:
                on_episode()
            if rec is not None and not _affected(rec):
                return rec
            if attempt < max_retries:
                counters.retried += 1
                log.info("retrying episode %s after %s", eid, "a crash" if rec is None else
                         {**{k2: rec.stats.get(k2) for k2 in AFFECTED_KEYS},
                          "task_score": rec.task_score})
        counters.dropped_errors += 1
        return None

    jobs = [[one(r, k) for k in range(r.n)] for r in requests]
    flat = await asyncio.gather(*(j for js in jobs for j in js))
    out, i = [], 0
    for r in requests:
        out.append([x for x in flat[i:i + r.n] if x is not None])
        i += r.n
    return out


# ------------------------------------------------------------------------------------------------
# Scoring, rewards, advantages
# ------------------------------------------------------------------------------------------------


def score_row(record: EpisodeRecord, reward_cfg: RewardConfig) -> dict[str, float | None]:
    """Per-episode scores and the reward with its components (keys of `metrics.SCORE_KEYS`)."""
    s = scoring.episode_scores(record, reward_cfg.correct_threshold)
    r = reward_breakdown(record, reward_cfg)
    return {"reward": r.total, "r_prod": r.productivity, "r_proact": r.proactivity,
            "r_pers": r.personalization, "productivity": s.productivity,
            "proactivity": s.proactivity, "personalization": s.personalization}


def kind_metrics(records: Sequence[EpisodeRecord]) -> dict[str, float]:
    """Ask ratio and low-effort share per prompt kind (the paper's Figure 6 / 7 quantities)."""
    out: dict[str, float] = {}
    for kind in ("vague", "precise"):
        rs = [r for r in records if r.prompt_kind == kind]
        if not rs:
            continue
        qs = [q for r in rs for q in r.questions]
        out[f"rollout/ask_ratio_{kind}"] = float(np.mean([r.num_questions > 0 for r in rs]))
        if qs:
            out[f"rollout/low_effort_share_{kind}"] = float(np.mean([q.effort == "low" for q in qs]))
    qs = [q for r in records for q in r.questions]
    if qs:
        out["rollout/low_effort_share"] = float(np.mean([q.effort == "low" for q in qs]))
    return out


@dataclasses.dataclass
class RolloutBatch:
    """What one step's rollouts produced.

    records: kept episodes, grouped order (group 0's samples, group 1's, ...).
    groups: group key of each record.
    scores: per-record score rows (`score_row`).
    rewards: the rewards the advantages saw (after overlong shaping), float64 [N].
    advantages: float64 [N].
    batch: the token batch (numpy fields), or None when no episode was kept.
    metrics: rollout/score/pref metrics of the step.
    """

    records: list[EpisodeRecord]
    groups: list[str]
    scores: list[dict[str, float | None]]
    rewards: np.ndarray
    advantages: np.ndarray
    batch: TokenBatch | None
    metrics: dict[str, float]
    counters: RolloutCounters = dataclasses.field(default_factory=RolloutCounters)
    extra: dict[str, float] = dataclasses.field(default_factory=dict)
    rollout_s: float = 0.0
    simulator_seconds: float = 0.0
    simulator_calls: int = 0


def rollout_metrics(records: Sequence[EpisodeRecord], scores: Sequence[Mapping[str, Any]],
                    rewards: np.ndarray, advantages: np.ndarray, groups: Sequence[str], *,
                    counters: Mapping[str, float], extra: Mapping[str, float], rollout_s: float,
                    simulator_seconds: float, simulator_calls: int,
                    lengths: Sequence[tuple[int, int] | None] | None = None) -> dict[str, float]:
    """A step's rollout metrics from its kept episodes (grouped order) and counters.

    `lengths` (response, total tokens per record) stands in for the records' token views when
    those were stripped (`summarize`); see `ppp_jax.metrics.episode_metrics`.
    """
    m = episode_metrics(records, scores, lengths=lengths)
    m.update(kind_metrics(records))
    m.update(counters)
    m.update(extra)
    m["time/rollout"] = rollout_s
    m["time/simulator_calls"] = simulator_seconds
    m["rollout/simulator_calls"] = float(simulator_calls)
    m["rollout/advantage_abs_mean"] = float(np.mean(np.abs(advantages))) if len(advantages) else 0.0
    m["rollout/zero_spread_groups"] = float(_zero_spread(rewards, groups))
    return m


# ------------------------------------------------------------------------------------------------
# Several processes: each rolls out its own prompts; metrics are computed over all of them
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RolloutSummary:
    """One process's rollout, small enough to send to every other process: the kept records
    without messages, token views and tool observations (`lengths` keeps the token counts), and
    everything else `rollout_metrics` reads."""

    records: list[EpisodeRecord]
    lengths: list[tuple[int, int] | None]
    scores: list[dict[str, float | None]]
    rewards: np.ndarray
    advantages: np.ndarray
    groups: list[str]
    counters: dict[str, float]
    extra: dict[str, float]
    rollout_s: float
    simulator_seconds: float
    simulator_calls: int
    batch_tokens: float  # non-padding positions of this process's token batch


def _slim(record: EpisodeRecord) -> EpisodeRecord:
    calls = tuple(dataclasses.replace(c, observation="") for c in record.tool_calls)
    return dataclasses.replace(record, messages=(), tokens=None, tool_calls=calls)


def summarize(ro: RolloutBatch) -> RolloutSummary:
    """The `RolloutSummary` of one process's `RolloutBatch`."""
    lengths = [(sum(r.tokens.loss_mask), len(r.tokens.token_ids)) if r.tokens is not None else None
               for r in ro.records]
    tokens = float(np.sum(ro.batch.segment_ids > 0)) if ro.batch is not None else 0.0
    return RolloutSummary([_slim(r) for r in ro.records], lengths, list(ro.scores), ro.rewards,
                          ro.advantages, list(ro.groups), ro.counters.metrics(), dict(ro.extra),
                          ro.rollout_s, ro.simulator_seconds, ro.simulator_calls, tokens)


def merge_summaries(parts: Sequence[RolloutSummary]) -> dict[str, float]:
    """The step's metrics over every process's episodes, in process order (the data pipeline
    gives process i the i-th block of the global batch, so this is the single-process order and
    the means are those one process would log). Counters and simulator calls/time add up; the
    rollout time is the slowest process's. `rollout/process_episodes_run_{min,max}` show how
    evenly the episodes were spread."""
    if not parts:
        raise ValueError("merge_summaries needs at least one process's summary")
    counters: dict[str, float] = {}
    for p in parts:
        for k, v in p.counters.items():
            counters[k] = counters.get(k, 0.0) + v
    extra: dict[str, float] = {}
    for p in parts:
        for k, v in p.extra.items():
            extra[k] = extra.get(k, 0.0) + v
    m = rollout_metrics(
        [r for p in parts for r in p.records], [s for p in parts for s in p.scores],
        np.concatenate([p.rewards for p in parts]), np.concatenate([p.advantages for p in parts]),
        [g for p in parts for g in p.groups], counters=counters, extra=extra,
        rollout_s=max(p.rollout_s for p in parts),
        simulator_seconds=sum(p.simulator_seconds for p in parts),
        simulator_calls=sum(p.simulator_calls for p in parts),
        lengths=[x for p in parts for x in p.lengths])
    runs = [p.counters.get("rollout/episodes_run", 0.0) for p in parts]
    m["rollout/process_episodes_run_min"] = float(min(runs))
    m["rollout/process_episodes_run_max"] = float(max(runs))
    return m


class RolloutOrchestrator:
    """Runs a step's episodes and turns them into a token batch (see the module docstring).

    Args:
      domain: the agent-side domain (usually a `PreferenceDomain`).
      policy: the policy (usually a `SeededEnginePolicy`; its `base_seed` is set per step).
      simulator: the user simulator.
      rl: the algorithm config (group size, advantage estimator, DAPO).
      reward: the PPP reward config.
      episode: per-episode limits.
      concurrency / max_retries: see `RolloutConfig`.
      row_len / pad_to_multiple / rows_multiple / pack / drop_too_long: token-batch layout.
      pad_token_id: id used for padding.
    """

    def __init__(self, domain: TaskDomain, policy: Any, simulator: UserSimulator, *, rl: RLConfig,
                 reward: RewardConfig, episode: EpisodeConfig, concurrency: int = 64,
                 max_retries: int = 2, row_len: int | None = None, pad_to_multiple: int = 512,
                 rows_multiple: int = 1, pack: bool = False, drop_too_long: bool = True,
                 pad_token_id: int = 0):
        self.domain = domain
        self.policy = policy
        self.simulator = TimedSimulator(simulator)
        self.rl = rl
        self.reward = reward
        self.episode = episode
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.row_len = row_len
        self.pad_to_multiple = pad_to_multiple
        self.rows_multiple = rows_multiple
        self.pack = pack
        self.drop_too_long = drop_too_long
        self.pad_token_id = pad_token_id

    def _requests(self, items: Sequence[Any], tasks: Mapping[str, Task]) -> list[EpisodeRequest]:
        g = self.rl.advantage.group_size
        reqs = []
        for item in items:
            task = tasks.get(item.task.task_id)
            if task is None:
                raise KeyError(f"prompt {item.uid!r} names task {item.task.task_id!r}, which the "
                               "domain does not have")
            reqs.append(EpisodeRequest(task, item.preference_id, item.prompt_kind, item.uid, g))
        return reqs

    async def generate(self, items: Sequence[Any], tasks: Mapping[str, Task], seed: int,
                       counters: RolloutCounters) -> list[list[EpisodeRecord]]:
        """The groups of episodes for `items` (`ppp_jax.data.PromptItem`s), one list per item."""
        if hasattr(self.policy, "base_seed"):
            self.policy.base_seed = seed
        return await run_requests(self._requests(items, tasks), self.domain, self.policy,
                                  self.simulator, episode=self.episode,
                                  concurrency=self.concurrency, max_retries=self.max_retries,
                                  seed=seed, counters=counters)

    def rewards_of(self, records: Sequence[EpisodeRecord]) -> np.ndarray:
        """The rewards the advantages see, float64 [N]: the unclipped PPP reward plus DAPO's
        overlong penalty (when on), clipped to [0, 1] once afterwards when either clip is on
        (`reward.clip` or `advantage.clip_reward_01`). The penalty acts on the unclipped value
        (1.1 - 0.5 -> 0.6, not clip(1.1) - 0.5 = 0.5); a result <= 0 is still clipped to 0."""
        if not records:
            return np.zeros((0,), np.float64)
        dcfg = self.rl.dapo
        raw = [reward_breakdown(r, self.reward).unclipped for r in records]
        lengths = [dapo.policy_token_count(r.tokens.loss_mask) if r.tokens else 0 for r in records]
        r = dapo.shape_rewards(raw, lengths, dcfg)
        if self.reward.clip or self.rl.advantage.clip_reward_01:
            r = np.clip(r, 0.0, 1.0)
        return r

    def collect(self, items: Sequence[Any], tasks: Mapping[str, Task], seed: int, *,
                more_items: Any = None) -> RolloutBatch:
        """Rolls out `items` and builds the step's batch (blocking; runs its own event loop).

        more_items(round) -> further items, used by DAPO dynamic sampling to refill the batch
        when groups with zero reward spread are dropped.
        """
        t0 = time.perf_counter()
        counters = RolloutCounters()
        self.simulator.seconds, self.simulator.calls = 0.0, 0
        dcfg = self.rl.dapo
        min_group = 2 if self.rl.advantage.group_size >= 2 else 1

        def usable(group: list[EpisodeRecord]) -> list[EpisodeRecord]:
            kept = []
            for rec in group:
                if rec.tokens is None or sum(rec.tokens.loss_mask) == 0:
                    counters.dropped_no_tokens += 1
                elif (self.row_len is not None and len(rec.tokens.token_ids) - 1 > self.row_len
                      and self.drop_too_long):
                    counters.dropped_too_long += 1
                else:
                    kept.append(rec)
            return kept

        def sample(round_index: int) -> list[tuple[Any, list[EpisodeRecord]]]:
            batch_items = items if round_index == 0 else more_items(round_index)
            groups = asyncio.run(self.generate(batch_items, tasks,
                                               derive_seed(seed, "round", round_index), counters))
            out = []
            for it, g in zip(batch_items, groups):
                g = usable(g)
                if not g:
                    counters.groups_dropped_empty += 1
                elif len(g) < min_group:
                    # A group shrunk to one episode by drops: verl's singleton rule (mu=0,
                    # sigma=1) is for groups of size 1 by design, so such a group is dropped.
                    counters.groups_dropped_small += 1
                    counters.dropped_small_group += len(g)
                else:
                    out.append((it, g))
            if not out:
                raise RolloutRoundEmpty(
                    f"generation round {round_index}: none of {len(batch_items)} groups kept a "
                    f"usable episode ({counters.dropped_errors} episodes dropped for errors, "
                    f"{counters.crashed} crashes so far)")
            return out

        if dcfg.dynamic_sampling:
            if more_items is None:
                raise ValueError("dapo.dynamic_sampling needs more_items to refill the batch")
            result = dapo.dynamic_sample(sample, lambda ig: self.rewards_of(ig[1]), len(items),
                                         max_gen_batches=dcfg.max_gen_batches)
            pairs, extra = result.groups, result.metrics
        else:
            try:
                pairs = sample(0)
            except RolloutRoundEmpty as e:
                log.warning("%s", e)
                pairs = []
            extra = {}
        rollout_s = time.perf_counter() - t0

        records, groups = [], []
        for item, group in pairs:
            records.extend(group)
            groups.extend([item.uid] * len(group))
        scores = [score_row(r, self.reward) for r in records]
        rewards = self.rewards_of(records)
        adv = compute_advantages(rewards, groups, self.rl.advantage) if records else rewards
        batch = None
        if records:
            batch = assemble_batch([r.tokens for r in records], adv, row_len=self.row_len,
                                   pad_to_multiple=self.pad_to_multiple,
                                   rows_multiple=self.rows_multiple, pack=self.pack,
                                   pad_token_id=self.pad_token_id)
        m = rollout_metrics(records, scores, rewards, adv, groups, counters=counters.metrics(),
                            extra=extra, rollout_s=rollout_s,
                            simulator_seconds=self.simulator.seconds,
                            simulator_calls=self.simulator.calls)
        return RolloutBatch(records, groups, scores, rewards, adv, batch, m, counters, dict(extra),
                            rollout_s, self.simulator.seconds, self.simulator.calls)


def _zero_spread(rewards: np.ndarray, groups: Sequence[str]) -> int:
    by: dict[str, list[float]] = {}
    for r, g in zip(rewards, groups):
        by.setdefault(g, []).append(float(r))
    return sum(1 for v in by.values() if len(v) > 1 and max(v) - min(v) <= 0.0)
