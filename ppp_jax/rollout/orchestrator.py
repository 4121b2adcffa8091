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
      -> token batch (`ppp_jax.rl.batch.assemble_batch`): only sampled tokens carry loss mask 1;
         with `rl.mask_overlong`, an episode cut off by the token budget (finish_reason
         "token_limit") carries none (it still counts in its group's advantages)

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
import logging
import math
import time
from typing import Any, Mapping, Sequence

import numpy as np

from ppp_jax.config.rl import RLConfig
from ppp_jax.envs.domains.base import PromptKind, Task, TaskDomain
from ppp_jax.envs.episode import EpisodeConfig, run_episode
from ppp_jax.envs.records import EpisodeRecord
from ppp_jax.envs.reward import RewardConfig, reward_breakdown
from ppp_jax.envs.scoring import MetricsConfig
from ppp_jax.envs.simulator import UserSimulator
from ppp_jax.rl import dapo
from ppp_jax.rl.advantages import compute_advantages
from ppp_jax.rl.batch import assemble_batch
from ppp_jax.rollout.agent_domain import for_user
from ppp_jax.rollout.policies import SeededEnginePolicy, derive_seed
from ppp_jax.rollout.results import RolloutBatch, RolloutCounters
from ppp_jax.rollout.summaries import rollout_metrics, score_row
from ppp_jax.rollout.timing import TimedSimulator

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EpisodeRequest:
    """One prompt to roll out `n` times: task, user preference, prompt kind, group key."""

    task: Task
    preference_id: str
    prompt_kind: PromptKind
    group: str
    n: int = 1


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


def _count_simulator(record: EpisodeRecord, counters: RolloutCounters) -> None:
    """Adds the episode's simulator and scorer counts to `counters` (every episode run)."""
    s = record.stats
    for key in ("simulator_questions", "simulator_malformed", "simulator_format_retries",
                "simulator_request_retries", "simulator_errors"):
        setattr(counters, key, getattr(counters, key) + int(s.get(key) or 0))
    counters.score_errors += int(bool(s.get("score_error")))


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
                _count_simulator(rec, counters)
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


def overlong_loss_weights(records: Sequence[EpisodeRecord], mask_overlong: bool) -> np.ndarray:
    """Per-episode loss weights, float32 [N]: 0 for an episode the token budget cut off
    (finish_reason "token_limit") when `mask_overlong`, else 1."""
    return np.asarray([0.0 if (mask_overlong and r.finish_reason == "token_limit") else 1.0
                       for r in records], np.float32)


class RolloutOrchestrator:
    """Runs a step's episodes and turns them into a token batch (see the module docstring).

    Args:
      domain: the agent-side domain (usually a `PreferenceDomain`).
      policy: the policy (usually a `SeededEnginePolicy`; its `base_seed` is set per step).
      simulator: the user simulator.
      rl: the algorithm config (group size, advantage estimator, DAPO).
      reward: the PPP reward config.
      metrics: which definition each per-episode metric follows.
      episode: per-episode limits.
      concurrency / max_retries: see `RolloutConfig`.
      row_len / pad_to_multiple / rows_multiple / pack / drop_too_long: token-batch layout.
      pad_token_id: id used for padding.
    """

    def __init__(self, domain: TaskDomain, policy: Any, simulator: UserSimulator, *, rl: RLConfig,
                 reward: RewardConfig, episode: EpisodeConfig,
                 metrics: MetricsConfig = MetricsConfig(), concurrency: int = 64,
                 max_retries: int = 2, row_len: int | None = None, pad_to_multiple: int = 512,
                 rows_multiple: int = 1, pack: bool = False, drop_too_long: bool = True,
                 pad_token_id: int = 0):
        self.domain = domain
        self.policy = policy
        self.simulator = TimedSimulator(simulator)
        self.rl = rl
        self.reward = reward
        self.metrics = metrics
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
        """The groups of episodes for `items` (`ppp_jax.train.data.PromptItem`s), one list per item."""
        if isinstance(self.policy, SeededEnginePolicy):  # the step's seed, for every episode
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
        self.simulator.reset()
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
        scores = [score_row(r, self.reward, self.metrics) for r in records]
        rewards = self.rewards_of(records)
        adv = compute_advantages(rewards, groups, self.rl.advantage) if records else rewards
        weights = overlong_loss_weights(records, self.rl.mask_overlong)
        counters.overlong_masked += int(len(weights) - weights.sum())
        batch = None
        if records:
            batch = assemble_batch([r.tokens for r in records], adv, row_len=self.row_len,
                                   pad_to_multiple=self.pad_to_multiple,
                                   rows_multiple=self.rows_multiple, pack=self.pack,
                                   pad_token_id=self.pad_token_id, loss_weights=weights)
        m = rollout_metrics(records, scores, rewards, adv, groups, counters=counters.metrics(),
                            extra=extra, rollout_s=rollout_s,
                            simulator_seconds=self.simulator.seconds,
                            simulator_calls=self.simulator.calls)
        return RolloutBatch(records, groups, scores, rewards, adv, batch, m, counters, dict(extra),
                            rollout_s, self.simulator.seconds, self.simulator.calls)
