"""Tests for metric aggregation, writers, the step timer and the progress bar."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from ppp_jax.envs.reward import RewardConfig
from ppp_jax.rollout.episode_metrics import episode_metrics
from ppp_jax.rollout.summaries import score_row
from ppp_jax.train.metrics import (JsonlWriter, StepTimer, flatten, make_writer, read_jsonl,
                                   throughput)
from ppp_jax.envs.records import EpisodeRecord, Question, ToolCall, TokenView
from ppp_jax.train.progress import ProgressBar


def _tokens(prompt: int, response: int) -> TokenView:
    n = prompt + response
    return TokenView(tuple(range(n)), (0,) * prompt + (1,) * response, (0.0,) * n)


def _records():
    return [
        # Two questions (low, high), one followed, one not; 5 response tokens.
        EpisodeRecord("t1", "toy", "concise_question", "vague",
                      questions=(Question("q", "a", "low", followed=True),
                                 Question("q", "a", "high", followed=False)),
                      tool_calls=(ToolCall("grep", {}, 0, error="bad"), ToolCall("finish", {}, 1)),
                      task_score=1.0, num_turns=3, tokens=_tokens(4, 5), stats={"retries": 2}),
        # No question; precise prompt; 3 response tokens; hit the turn limit.
        EpisodeRecord("t1", "toy", "no_preference", "precise", task_score=0.5, num_turns=1,
                      finish_reason="turn_limit", tokens=_tokens(2, 3), stats={"retries": 1}),
        # One medium question, unanswered; no token view (API-backed episode).
        EpisodeRecord("t2", "toy", "concise_question", "vague",
                      questions=(Question("q", "", "medium", followed=None, answered=False),),
                      task_score=0.0, num_turns=2, trajectory_followed=True),
    ]


def test_episode_metrics_by_hand():
    m = episode_metrics(_records())
    assert m["rollout/episodes"] == 3
    assert m["rollout/ask_ratio"] == pytest.approx(2 / 3)
    assert m["rollout/questions_per_episode"] == pytest.approx(1.0)
    assert m["rollout/questions_low_effort_per_episode"] == pytest.approx(1 / 3)
    assert m["rollout/questions_medium_effort_per_episode"] == pytest.approx(1 / 3)
    assert m["rollout/questions_high_effort_per_episode"] == pytest.approx(1 / 3)
    assert m["rollout/unanswered_questions_per_episode"] == pytest.approx(1 / 3)
    assert m["rollout/turns_per_episode"] == pytest.approx(2.0)
    assert m["rollout/tool_errors_per_episode"] == pytest.approx(1 / 3)
    assert m["rollout/finish_finish"] == pytest.approx(2 / 3)
    assert m["rollout/finish_turn_limit"] == pytest.approx(1 / 3)
    # Lengths only over the two episodes with a token view: responses 5 and 3.
    assert (m["rollout/response_tokens_mean"], m["rollout/response_tokens_max"],
            m["rollout/response_tokens_min"], m["rollout/sequence_tokens_max"]) == (4.0, 5.0, 3.0, 9.0)
    assert m["rollout/stats_retries"] == 3.0
    assert m["rollout/task_score_vague"] == pytest.approx(0.5)
    assert m["rollout/task_score_precise"] == pytest.approx(0.5)
    # Without score rows, productivity falls back to the task scores: (1 + 0.5 + 0) / 3.
    assert m["score/productivity"] == pytest.approx(0.5) and m["score/productivity_n"] == 3
    assert "score/reward" not in m
    # Per preference: concise_question has judged questions [True, False] and one trajectory verdict.
    assert m["pref/concise_question/episodes"] == 2
    assert m["pref/concise_question/question_compliance"] == pytest.approx(0.5)
    assert m["pref/concise_question/trajectory_compliance"] == 1.0
    assert "pref/no_preference/question_compliance" not in m
    assert all(isinstance(v, float) for v in m.values())


def test_score_rows_and_undefined_values():
    rows = [
        {"reward": 1.0, "r_prod": 1.0, "r_proact": 0.05, "r_pers": -0.1, "personalization": 0.0},
        {"reward": 0.5, "r_prod": 0.5, "r_proact": 0.0, "r_pers": 0.0, "personalization": None},
        {"reward": 0.0, "r_prod": 0.0, "r_proact": -0.5, "r_pers": 0.0, "personalization": 1.0},
    ]
    m = episode_metrics(_records(), rows)
    assert m["score/reward"] == pytest.approx(0.5)
    assert m["score/reward_std"] == pytest.approx(np.std([1.0, 0.5, 0.0]))
    assert m["score/r_proact"] == pytest.approx(-0.45 / 3)
    assert m["score/personalization"] == pytest.approx(0.5) and m["score/personalization_n"] == 2
    assert m["pref/concise_question/personalization"] == pytest.approx(0.5)
    assert "pref/no_preference/personalization" not in m  # its only value is undefined
    with pytest.raises(ValueError, match="2 score rows for 3"):
        episode_metrics(_records(), rows[:2])
    assert episode_metrics([]) == {"rollout/episodes": 0.0}


def test_score_rows_use_userville_scorers():
    rows = [score_row(r, RewardConfig()) for r in _records()]
    assert len(rows) == 3
    for row in rows:
        assert 0.0 <= row["productivity"] <= 1.0 and row["proactivity"] in (0.0, 1.0)
        assert {"reward", "r_prod", "r_proact", "r_pers"} <= set(row)
    # Episode 1 asked a high-effort question: session effort high, proactivity 0.
    assert rows[0]["proactivity"] == 0.0
    m = episode_metrics(_records(), rows)
    assert 0.0 <= m["score/reward"] <= 1.0


def test_flatten_and_throughput():
    out = flatten({"loss": jnp.float32(0.25), "clip": {"low": np.float64(0.1), "high": 2}}, "train/")
    assert out == {"train/loss": 0.25, "train/clip/low": 0.1, "train/clip/high": 2.0}
    with pytest.raises(ValueError, match="'train/v' is not a scalar"):
        flatten({"v": jnp.ones(3)}, "train/")
    assert throughput(1000, 2.0, num_devices=4) == {"perf/tokens_per_s": 500.0,
                                                      "perf/tokens_per_s_per_device": 125.0}


def test_step_timer_with_a_fake_clock():
    now = [0.0]
    timer = StepTimer(clock=lambda: now[0])
    with timer("rollout"):
        now[0] += 2.0
        with timer("simulator"):
            now[0] += 0.5
    with timer("train"):
        now[0] += 1.0
    with timer("rollout"):
        now[0] += 1.0
    timer.add("sync", 0.25)
    out = timer.pop()
    # rollout 2.5 (nested simulator time included) + 1.0; the step is 4.5 of clock time.
    assert out == {"time/rollout": 3.5, "time/simulator": 0.5, "time/sync": 0.25, "time/train": 1.0,
                   "time/step": 4.5}
    now[0] += 1.0
    assert timer.pop() == {"time/step": 1.0}


def test_jsonl_writer_resume_truncates_and_handles_a_cut_line(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    w = JsonlWriter(path)
    w.start(0)
    for step in range(1, 6):
        w.write(step, {"a": step * 1.5, "nan": math.nan})
    w.close()
    with path.open("a") as f:
        f.write('{"step": 6, "a": 9')  # a row cut short by a kill
    rows = read_jsonl(path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and math.isnan(rows[0]["nan"])
    original = path.read_bytes()
    kept = b"".join(original.splitlines(keepends=True)[:3])
    w = JsonlWriter(path)
    w.start(3)  # resumed from the step-3 checkpoint
    assert w.dropped_rows == 3  # rows 4, 5 and the cut one
    # Rows 1-3 stay byte for byte (not re-serialized); the rest is kept aside, not lost.
    assert path.read_bytes() == kept
    assert w.discarded_path.read_bytes() == original[len(kept):] + b"\n"
    w.write(4, {"a": -1.0})
    w.close()
    assert path.read_bytes().startswith(kept)
    assert [(r["step"], r["a"]) for r in read_jsonl(path)] == [(1, 1.5), (2, 3.0), (3, 4.5), (4, -1.0)]
    # Fresh start on an old file: nothing kept in it, every row moved aside.
    before = path.read_bytes()
    w = JsonlWriter(path)
    w.start(0)
    w.close()
    assert read_jsonl(path) == []
    assert w.discarded_path.read_bytes().endswith(before)
    path.write_text('{"step": 1}\n{"step": 2, oops\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not valid JSON"):
        read_jsonl(path)
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a metrics row"):
        JsonlWriter(path).start(5)
    assert path.read_text().count("\n") == 3  # refused without touching the file


def test_tensorboard_and_multi_writer(tmp_path):
    writer = make_writer(tmp_path)
    writer.start(0)
    writer.write(1, {"score/reward": 0.5, "train/kl": math.nan})
    writer.write(2, {"score/reward": 0.75})
    writer.close()
    events = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
    assert make_writer(tmp_path / "other", primary=False).writers == []
    scalars = _read_scalars(events[0])
    assert scalars["score/reward"] == [(1, 0.5), (2, 0.75)]
    assert "train/kl" not in scalars  # non-finite values are not sent to TensorBoard


def _read_scalars(path) -> dict[str, list[tuple[int, float]]]:
    """Parses a TensorBoard event file (TFRecord framing: u64 length, u32 crc, data, u32 crc)."""
    import struct

    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos : pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
        pos += 12 + n + 4
        for v in event.summary.value:
            out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_progress_bar(capsys):
    with ProgressBar(5, initial=2, force=True) as bar:
        bar.update(1, {"score/reward": 0.25, "train/loss": math.nan})
    err = capsys.readouterr().err
    assert "3/5" in err and "R=0.25" in err and "loss" not in err
    silent = ProgressBar(5, enabled=False)
    silent.update(1, {"score/reward": 1.0})
    silent.close()
