"""Tests for the grain data pipeline (ppp_jax/data.py)."""

from __future__ import annotations

import collections
import json

import pytest

from ppp_jax.config.data import DataConfig
from ppp_jax.train.data import MalformedRecordError, ShardInfo, make_dataset, training_preferences
from ppp_jax.config.loader import from_dict

PREFS = tuple(f"p{i}" for i in range(12))


def _rows(n, prefix="t"):
    return [
        {
            "task_id": f"{prefix}{i}",
            "domain": "toy",
            "precise_prompt": f"precise {i}",
            "vague_prompt": f"vague {i}",
            "hidden_info": f"hidden {i}",
            "gold": [f"f{i}"],
            "repo": "r",
        }
        for i in range(n)
    ]


def _config(**kw):
    base = dict(batch_size=4, seed=7, vague_preferences=PREFS)
    base.update(kw)
    return DataConfig(**base)


def _one_shard():
    return ShardInfo(0, 1)


def test_expansion_is_12_vague_plus_1_precise():
    ds = make_dataset(_config(), _rows(3), shard=_one_shard())
    assert len(ds.items) == 3 * 13
    per_task = collections.defaultdict(list)
    for item in ds.items:
        per_task[item.task.task_id].append((item.preference_id, item.prompt_kind))
    for task_id, pairs in per_task.items():
        assert sorted(p for p, k in pairs if k == "vague") == sorted(PREFS)
        assert [(p, k) for p, k in pairs if k == "precise"] == [("no_preference", "precise")]
    item = ds.items[0]
    assert item.prompt == "vague 0" and item.task.extra == {"repo": "r"}
    assert [i.prompt for i in ds.items if i.prompt_kind == "precise"][0] == "precise 0"
    assert len({i.uid for i in ds.items}) == len(ds.items)


def test_expansion_is_configurable():
    cfg = _config(include_precise=False, vague_copies=2, vague_preferences=("a", "b"))
    ds = make_dataset(cfg, _rows(2), shard=_one_shard())
    assert len(ds.items) == 2 * 2 * 2
    cfg = _config(precise_preference="random", precise_copies=2)
    items = make_dataset(cfg, _rows(20), shard=_one_shard()).items
    precise = [i for i in items if i.prompt_kind == "precise"]
    assert len(precise) == 40 and {i.preference_id for i in precise} <= set(PREFS)
    assert len({i.preference_id for i in precise}) > 3  # really drawn, not constant


def test_batches_cover_each_epoch_once_and_reshuffle():
    cfg = _config(batch_size=13, num_epochs=2)
    ds = make_dataset(cfg, _rows(4), shard=_one_shard())  # 52 prompts, 4 batches / epoch
    batches = list(ds.iterator())
    assert len(batches) == 8 and all(len(b) == 13 for b in batches)
    epoch0 = [i.uid for b in batches[:4] for i in b]
    epoch1 = [i.uid for b in batches[4:] for i in b]
    assert sorted(epoch0) == sorted(epoch1) == sorted(i.uid for i in ds.items)
    assert epoch0 != epoch1  # each epoch is shuffled differently
    assert epoch0 != [i.uid for i in ds.items]  # and shuffled at all
    # Same seed: same order. Different seed: different order.
    again = [i.uid for b in make_dataset(cfg, _rows(4), shard=_one_shard()).iterator() for i in b]
    assert again == epoch0 + epoch1
    other = make_dataset(_config(batch_size=13, num_epochs=2, seed=8), _rows(4), shard=_one_shard())
    assert [i.uid for b in other.iterator() for i in b] != epoch0 + epoch1


def test_shards_partition_the_global_batch():
    rows = _rows(5)
    cfg = _config(batch_size=6)
    whole = make_dataset(cfg, rows, shard=ShardInfo(0, 1)).iterator()
    parts = [make_dataset(cfg, rows, shard=ShardInfo(p, 3)).iterator() for p in range(3)]
    for _ in range(20):  # crosses the 65-prompt epoch boundary
        full = [i.uid for i in next(whole)]
        shards = [[i.uid for i in next(it)] for it in parts]
        assert all(len(s) == 2 for s in shards)
        assert sorted(sum(shards, [])) == sorted(full)
    # The processes advance in lockstep, so one saved state (orbax keeps the primary's) fits all.
    states = [it.get_state() for it in parts]
    assert all(st == states[0] for st in states)
    other = make_dataset(cfg, rows, shard=ShardInfo(2, 3)).iterator()
    other.set_state(states[0])
    assert [i.uid for i in next(other)] == [i.uid for i in next(parts[2])]
    with pytest.raises(ValueError, match="not divisible"):
        make_dataset(_config(batch_size=5), rows, shard=ShardInfo(0, 2))


def test_resume_mid_epoch_continues_exactly():
    cfg = _config(batch_size=5)
    ds = make_dataset(cfg, _rows(3), shard=_one_shard())  # 39 prompts: epochs cut batches
    it = ds.iterator()
    for _ in range(6):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # must survive JSON
    expected = [[i.uid for i in next(it)] for _ in range(12)]
    resumed = make_dataset(cfg, _rows(3), shard=_one_shard()).iterator()
    resumed.set_state(state)
    assert resumed.batches_yielded == 6
    assert [[i.uid for i in next(resumed)] for _ in range(12)] == expected


def test_single_process_state_of_the_older_format_resumes():
    """States saved before the process count left the fingerprint (it hashed a trailing 1 for one
    process) iterate the same prompts now and must stay resumable; a 2-process one must not."""
    import hashlib

    cfg = _config(batch_size=4)
    it = make_dataset(cfg, _rows(3), shard=_one_shard()).iterator()
    next(it)
    state = it.get_state()
    expected = [i.uid for i in next(it)]

    def old_fingerprint(count):
        h = hashlib.sha256(json.dumps([cfg.seed, cfg.batch_size, cfg.num_epochs, count]).encode())
        for item in make_dataset(cfg, _rows(3), shard=_one_shard()).items:
            h.update(item.uid.encode() + b"\0")
        return h.hexdigest()[:16]

    resumed = make_dataset(cfg, _rows(3), shard=_one_shard()).iterator()
    resumed.set_state(dict(state, fingerprint=old_fingerprint(1)))
    assert [i.uid for i in next(resumed)] == expected
    with pytest.raises(ValueError, match="older version"):
        resumed.set_state(dict(state, fingerprint=old_fingerprint(2)))


def test_resume_on_other_data_fails_loudly():
    it = make_dataset(_config(), _rows(3), shard=_one_shard()).iterator()
    next(it)
    state = it.get_state()
    other = make_dataset(_config(), _rows(4), shard=_one_shard()).iterator()
    with pytest.raises(ValueError, match="different data or settings"):
        other.set_state(state)
    with pytest.raises(ValueError, match="not a data-iterator state"):
        other.set_state({"next_index": 3})


@pytest.mark.parametrize(
    "change, field, reason",
    [
        (lambda r: r.pop("vague_prompt"), "vague_prompt", "missing"),
        (lambda r: r.update(task_id=3), "task_id", "expected a string"),
        (lambda r: r.update(precise_prompt="  "), "precise_prompt", "empty"),
        (lambda r: r.update(gold=None), "gold", "null"),
        (lambda r: r.update(hidden_info=[1]), "hidden_info", "expected a string or object"),
    ],
)
def test_malformed_row_error_names_row_and_field(change, field, reason):
    rows = _rows(4)
    change(rows[2])
    with pytest.raises(MalformedRecordError) as e:
        make_dataset(_config(), rows, shard=_one_shard())
    assert e.value.field == field and "row 2" in str(e.value) and reason in str(e.value)


def test_malformed_rows_skipped_and_counted(tmp_path):
    rows = _rows(5)
    lines = [json.dumps(r) for r in rows]
    lines[1] = '{"task_id": "broken", '  # truncated JSON
    lines[3] = json.dumps({**rows[3], "domain": 5})
    lines.append(json.dumps(rows[0]))  # duplicate task id
    lines.insert(2, "")  # blank lines are not rows
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MalformedRecordError, match=r"train.jsonl:2: not valid JSON"):
        make_dataset(_config(train_path=str(path)))
    ds = make_dataset(_config(train_path=str(path), on_malformed="skip"), shard=_one_shard())
    assert ds.stats.rows_read == 6 and ds.stats.rows_dropped == 3 and ds.stats.records == 3
    assert ds.stats.prompts == 3 * 13
    reasons = "\n".join(ds.stats.drop_reasons)
    assert "train.jsonl:2" in reasons and "'domain'" in reasons and "duplicate id 't0'" in reasons
    assert {i.task.task_id for i in ds.items} == {"t0", "t2", "t4"}


def test_empty_data_and_config_errors():
    with pytest.raises(ValueError, match="no training prompts"):
        make_dataset(_config(on_malformed="skip"), [{"task_id": "x"}], shard=_one_shard())
    with pytest.raises(ValueError, match="batch_size"):
        DataConfig(batch_size=0)
    cfg = from_dict(DataConfig, {"batch_size": 8, "vague_preferences": ["json"], "num_epochs": None})
    assert cfg.vague_preferences == ("json",)
    with pytest.raises(ValueError, match=r"vague_preferences\[0\]: 'a' is not allowed"):
        from_dict(DataConfig, {"vague_preferences": ["a"]})


def test_registry_preferences_used_when_config_is_empty():
    try:
        prefs = training_preferences()
    except ImportError:
        with pytest.raises(ValueError, match="preference registry is unavailable"):
            make_dataset(_config(vague_preferences=()), _rows(1), shard=_one_shard())
        return
    assert len(prefs) == 12
    ds = make_dataset(_config(vague_preferences=()), _rows(1), shard=_one_shard())
    assert len(ds.items) == 13
