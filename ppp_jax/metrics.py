"""Per-step metrics: aggregation into a flat `{name: float}` dict, writers, and a step timer.

Names are `group/name`, so TensorBoard groups them:

    rollout/*   from EpisodeRecords (ask ratio, questions by effort, lengths, finish reasons, ...)
    score/*     the three PPP scores and the reward with its components, from per-episode scores
    pref/<id>/* per-preference compliance and personalization
    train/*     whatever the train step returns (loss, clip fractions, KL, entropy, grad norm,
                sampler/trainer log-prob gap, ...), passed through as floats
    time/*      seconds per phase (rollout, simulator, train, sync) and per step
    perf/*      throughput (tokens/s)

Writers append one row per step and flush it. They are resume-safe: `start(step)` is called with
the step training resumes after (0 for a fresh run) and removes every row beyond it, so rows
written after the last checkpoint by a killed run are replaced, not duplicated.
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np

from ppp_jax.envs.records import EpisodeRecord

EFFORTS = ("low", "medium", "high")

# Per-episode score keys the aggregator understands (values may be None where undefined, e.g.
# personalization without any question). `score_records` makes such rows from UserVille's
# scorers (`ppp_jax.envs.scoring`, `ppp_jax.envs.reward`).
SCORE_KEYS = (
    "reward",  # the PPP reward R (clipped or not, as the reward function returns it)
    "reward_unclipped",  # R before clipping to [0, 1]
    "r_prod",  # R_Prod, the task-score term
    "r_proact",  # R_Proact, the effort term
    "r_pers",  # R_Pers, the preference term
    "productivity",  # task score in [0, 1]
    "proactivity",  # 1 if the session effort was low, else 0
    "personalization",  # 1 if the preference was followed; None where undefined
    "session_effort_low",  # 1 if the session effort was low (likewise medium, high)
    "session_effort_medium",
    "session_effort_high",
)


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else math.nan


def episode_metrics(
    records: Sequence[EpisodeRecord],
    scores: Sequence[Mapping[str, float | None]] | None = None,
    *,
    lengths: Sequence[tuple[int, int] | None] | None = None,
) -> dict[str, float]:
    """Aggregates a step's episodes into flat metrics.

    Args:
      records: the episodes of one step (all groups).
      scores: optional per-episode score mappings, aligned with `records` (keys from
        `SCORE_KEYS`; None values are undefined and excluded from the means). When absent,
        `score/productivity` falls back to each record's `task_score`.
      lengths: optional (policy tokens, total tokens) per record, None for a record without a
        token view, used instead of the records' token views (records sent between processes
        travel without them); default: read from `record.tokens`.

    Returns:
      A flat dict of floats; means over no values are NaN (and `*/n` counts say how many).
    """
    if scores is not None and len(scores) != len(records):
        raise ValueError(f"{len(scores)} score rows for {len(records)} episode records")
    n = len(records)
    out: dict[str, float] = {"rollout/episodes": float(n)}
    if n == 0:
        return out
    num_q = [r.num_questions for r in records]
    out["rollout/ask_ratio"] = _mean([q > 0 for q in num_q])
    out["rollout/questions_per_episode"] = _mean(num_q)
    for effort in EFFORTS:
        out[f"rollout/questions_{effort}_effort_per_episode"] = _mean(
            [sum(q.effort == effort for q in r.questions) for r in records]
        )
    out["rollout/unanswered_questions_per_episode"] = _mean(
        [sum(not q.answered for q in r.questions) for r in records]
    )
    out["rollout/turns_per_episode"] = _mean([r.num_turns for r in records])
    out["rollout/tool_calls_per_episode"] = _mean([len(r.tool_calls) for r in records])
    out["rollout/tool_errors_per_episode"] = _mean(
        [sum(c.error is not None for c in r.tool_calls) for r in records]
    )
    reasons = collections.Counter(r.finish_reason for r in records)
    for reason, count in sorted(reasons.items()):
        out[f"rollout/finish_{reason}"] = count / n

    # Lengths in tokens, from the token view of engine-backed episodes.
    if lengths is None:
        lengths = [(sum(r.tokens.loss_mask), len(r.tokens.token_ids)) if r.tokens is not None
                   else None for r in records]
    elif len(lengths) != n:
        raise ValueError(f"{len(lengths)} token lengths for {n} episode records")
    with_tokens = [x for x in lengths if x is not None]
    if with_tokens:
        resp = [a for a, _ in with_tokens]
        total = [b for _, b in with_tokens]
        out["rollout/response_tokens_mean"] = _mean(resp)
        out["rollout/response_tokens_max"] = float(max(resp))
        out["rollout/response_tokens_min"] = float(min(resp))
        out["rollout/response_tokens_sum"] = float(sum(resp))
        out["rollout/sequence_tokens_mean"] = _mean(total)
        out["rollout/sequence_tokens_max"] = float(max(total))

    # Numeric counters the episode runner left in `stats` (malformed calls, retries, ...): sums.
    counters: dict[str, float] = collections.defaultdict(float)
    for r in records:
        for k, v in r.stats.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                counters[k] += float(v)
    for k, v in sorted(counters.items()):
        out[f"rollout/stats_{k}"] = v

    # Task score by prompt kind (the paper's precise-vs-vague comparison).
    for kind in ("vague", "precise"):
        ts = [r.task_score for r in records if r.prompt_kind == kind and r.task_score is not None]
        if ts:
            out[f"rollout/task_score_{kind}"] = _mean(ts)

    # Scores and reward components.
    rows: list[Mapping[str, float | None]]
    if scores is None:
        rows = [{"productivity": r.task_score} for r in records]
    else:
        rows = scores
    for key in SCORE_KEYS:
        vals = [float(s[key]) for s in rows if s.get(key) is not None]
        if vals:
            out[f"score/{key}"] = _mean(vals)
            out[f"score/{key}_n"] = float(len(vals))
    if scores is not None and any("reward" in s for s in scores):
        rewards = [float(s["reward"]) for s in scores if s.get("reward") is not None]
        if rewards:
            out["score/reward_std"] = float(np.std(rewards))
            out["score/reward_min"] = float(min(rewards))
            out["score/reward_max"] = float(max(rewards))

    # Per-preference compliance: share of judged questions that followed the preference, and
    # share of judged trajectories (rule-based preferences) that did.
    by_pref: dict[str, list[int]] = collections.defaultdict(list)
    for i, r in enumerate(records):
        by_pref[r.preference_id].append(i)
    for pref, idx in sorted(by_pref.items()):
        judged = [q.followed for i in idx for q in records[i].questions if q.followed is not None]
        out[f"pref/{pref}/episodes"] = float(len(idx))
        if judged:
            out[f"pref/{pref}/question_compliance"] = _mean(judged)
        traj = [records[i].trajectory_followed for i in idx if records[i].trajectory_followed is not None]
        if traj:
            out[f"pref/{pref}/trajectory_compliance"] = _mean(traj)
        if scores is not None:
            pers = [scores[i]["personalization"] for i in idx if scores[i].get("personalization") is not None]
            if pers:
                out[f"pref/{pref}/personalization"] = _mean([float(p) for p in pers])
    return out


def score_records(
    records: Sequence[EpisodeRecord], reward_config: Any = None
) -> list[dict[str, float | None]]:
    """Per-episode score rows for `episode_metrics`, from UserVille's scorers.

    Productivity, proactivity and personalization come from `ppp_jax.envs.scoring.episode_scores`
    (the paper's evaluation definitions); the reward and its three components from
    `ppp_jax.envs.reward.reward_breakdown` with `reward_config` (default `RewardConfig()`).
    Episodes without a task score get no reward row values (None) instead of an error.
    """
    from ppp_jax.envs import reward as reward_lib  # imported here: envs pulls in the judges
    from ppp_jax.envs import scoring

    cfg = reward_config if reward_config is not None else reward_lib.RewardConfig()
    rows: list[dict[str, float | None]] = []
    for r in records:
        sc = scoring.episode_scores(r)
        row: dict[str, float | None] = {
            "productivity": sc.productivity,
            "proactivity": sc.proactivity,
            "personalization": sc.personalization,
            **{f"session_effort_{e}": float(sc.session_effort == e) for e in EFFORTS},
        }
        if r.task_score is not None:
            rb = reward_lib.reward_breakdown(r, cfg)
            row.update(reward=rb.total, reward_unclipped=rb.unclipped, r_prod=rb.productivity,
                       r_proact=rb.proactivity, r_pers=rb.personalization)
        rows.append(row)
    return rows


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flattens nested metric dicts of scalars (Python, numpy or jax) into `{prefix+path: float}`.

    One device->host transfer for all jax values. Non-scalar values raise ValueError naming them.
    """
    import jax

    flat: dict[str, Any] = {}

    def walk(m: Mapping[str, Any], path: str) -> None:
        for k, v in m.items():
            name = f"{path}{k}"
            if isinstance(v, Mapping):
                walk(v, name + "/")
            else:
                flat[name] = v

    walk(metrics, prefix)
    host = jax.device_get(flat)
    out = {}
    for k, v in host.items():
        a = np.asarray(v)
        if a.size != 1:
            raise ValueError(f"metric {k!r} is not a scalar (shape {a.shape})")
        out[k] = float(a.reshape(()))
    return out


def throughput(tokens: float, seconds: float, num_devices: int = 1) -> dict[str, float]:
    """Tokens per second, overall and per device."""
    if seconds <= 0:
        return {}
    return {"perf/tokens_per_s": tokens / seconds, "perf/tokens_per_s_per_device": tokens / seconds / num_devices}


class StepTimer:
    """Accumulates wall time per named phase within a step.

        timer = StepTimer()
        with timer("rollout"):
            ...
        metrics.update(timer.pop())   # {"time/rollout": s, ..., "time/step": total since last pop}

    JAX dispatches asynchronously: block on a phase's outputs inside its `with` block (e.g.
    `jax.block_until_ready`) or the time lands in whichever phase next waits on them. Phases may
    nest or repeat; repeated phases add up.
    """

    def __init__(self, clock=time.perf_counter):
        self._clock = clock
        self._acc: dict[str, float] = collections.defaultdict(float)
        self._start = clock()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = self._clock()
        try:
            yield
        finally:
            self._acc[name] += self._clock() - t0

    def add(self, name: str, seconds: float) -> None:
        """Adds time measured elsewhere (e.g. simulator time reported by the orchestrator)."""
        self._acc[name] += seconds

    def pop(self) -> dict[str, float]:
        """Returns the accumulated `time/*` metrics and restarts the step clock."""
        now = self._clock()
        out = {f"time/{k}": v for k, v in sorted(self._acc.items())}
        out["time/step"] = now - self._start
        self._acc.clear()
        self._start = now
        return out


# --------------------------------------------------------------------------------------- writers
class MetricsWriter(Protocol):
    """What the training loop writes metrics through."""

    def start(self, step: int) -> None:
        """Called once before writing: training resumes after `step` (0 = fresh run)."""

    def write(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Reads a metrics jsonl file; a final line cut off by a kill is ignored."""
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    lines = path.read_text().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # unterminated last line: a write cut short
                break
            raise ValueError(f"{path}:{i + 1}: not valid JSON") from None
    return rows


class JsonlWriter:
    """One JSON object per step (`{"step": s, name: value, ...}`), appended and flushed.

    `start(step)` rewrites the file keeping only rows with `step <= step` (atomically: a temp
    file renamed over the old one), so a resumed run continues the file seamlessly.
    """

    def __init__(self, path: str | Path, *, fsync: bool = False):
        self.path = Path(path)
        self.fsync = fsync
        self._f = None
        self.dropped_rows = 0  # rows removed by start(): written after the restored checkpoint

    def start(self, step: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = read_jsonl(self.path)
        keep = [r for r in rows if int(r["step"]) <= step]
        self.dropped_rows = len(rows) - len(keep)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w") as f:
            for r in keep:
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._f = self.path.open("a")

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._f is None:
            self.start(step - 1)  # not started explicitly: keep the rows before this step
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class TensorBoardWriter:
    """Scalars to TensorBoard via tensorboardX; on resume, events beyond the step are purged."""

    def __init__(self, logdir: str | Path):
        self.logdir = str(logdir)
        self._w = None

    def start(self, step: int) -> None:
        from tensorboardX import SummaryWriter

        # purge_step makes TensorBoard hide events with step >= purge_step written earlier.
        self._w = SummaryWriter(self.logdir, purge_step=step + 1 if step > 0 else None)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._w is None:
            self.start(step - 1)
        for k, v in metrics.items():
            if math.isfinite(v):
                self._w.add_scalar(k, v, global_step=step)
        self._w.flush()

    def close(self) -> None:
        if self._w is not None:
            self._w.close()
            self._w = None


class MultiWriter:
    """Fans each call out to several writers."""

    def __init__(self, writers: Iterable[MetricsWriter]):
        self.writers = list(writers)

    def start(self, step: int) -> None:
        for w in self.writers:
            w.start(step)

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        for w in self.writers:
            w.write(step, metrics)

    def close(self) -> None:
        for w in self.writers:
            w.close()


def make_writer(run_dir: str | Path, *, tensorboard: bool = True, primary: bool | None = None) -> MultiWriter:
    """The standard writers: `<run_dir>/metrics.jsonl` and TensorBoard events in `<run_dir>/tb`.

    Only the primary process writes (`primary` defaults to `jax.process_index() == 0`); on the
    others this returns a writer that does nothing, so every process can call the same code.
    """
    if primary is None:
        import jax

        primary = jax.process_index() == 0
    if not primary:
        return MultiWriter([])
    run_dir = Path(run_dir)
    writers: list[MetricsWriter] = [JsonlWriter(run_dir / "metrics.jsonl")]
    if tensorboard:
        writers.append(TensorBoardWriter(run_dir / "tb"))
    return MultiWriter(writers)
