"""The demo's location tokens and the warm start's location swap (`sft.location_swap`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ppp_jax.envs.records import TokenView


def _view(ids, mask=None):
    mask = mask or (0,) * len(ids)
    return TokenView(tuple(ids), tuple(mask), (0.0,) * len(ids))


def test_swap_replaces_each_location_consistently_and_keeps_the_rest():
    from ppp_jax.train.sft import swap_locations

    locs = np.arange(100, 140)
    # location 101 in the prompt and the answer, location 105 once, other tokens around them
    view = _view([5, 101, 6, 105, 7, 101, 2], (0, 0, 0, 0, 1, 1, 1))
    seen = set()
    for seed in range(20):
        out = swap_locations(view, locs, np.random.default_rng(seed))
        ids = out.token_ids
        assert [ids[i] for i in (0, 2, 4, 6)] == [5, 6, 7, 2]
        assert ids[1] == ids[5] and ids[1] != ids[3]  # same location -> same token; distinct stay distinct
        assert ids[1] in locs and ids[3] in locs
        assert out.loss_mask == view.loss_mask and out.sampler_logprobs == view.sampler_logprobs
        seen.add(ids[1])
    assert len(seen) > 10  # drawn over the whole location vocabulary, not a fixed map
    plain = _view([5, 6, 7])
    assert swap_locations(plain, locs, np.random.default_rng(0)) is plain


def test_sft_batches_augment_is_deterministic_and_resumable():
    from ppp_jax.train.sft import SFTBatches, swap_locations

    locs = np.arange(100, 140)
    views = [_view([3, 100 + i, 4, 100 + i]) for i in range(8)]

    def augment(v, rng):
        return swap_locations(v, locs, rng)

    a = SFTBatches(views, 4, 0, augment)
    first = [next(a) for _ in range(3)]
    b = SFTBatches(views, 4, 0, augment)
    assert [next(b) for _ in range(3)] == first  # same seed, same draws
    c = SFTBatches(views, 4, 0, augment)
    c.set_state(a.get_state())
    assert next(c) == next(a)  # resumed mid-run: the same batch as an unbroken run
    # the epoch repeats the examples but not their locations
    plain = SFTBatches(views, 4, 0)
    assert [next(plain) for _ in range(3)] != first


def test_location_tokens_are_one_token_wherever_the_location_occurs():
    from ppp_jax.demo import train_tokenizer

    locs = ["pdb.py:Pdb.do_longlist", "json/decoder.py:JSONDecoder.decode", "a.py:f"]
    texts = ["The function `pdb.Pdb.do_longlist()`, defined in `pdb.py`, misbehaves."] * 20
    tok = train_tokenizer(texts, 300, locs)
    vocab = tok.get_vocab()
    for loc in locs:
        for text in (f"(location {loc})", f'{{"answer": "{loc}"}}', f"It is in {loc}.\n", loc):
            enc = tok.encode(text)
            assert vocab[loc] in enc.ids, (text, enc.tokens)
            assert tok.decode(enc.ids) == text


def test_scripted_agent_guesses_a_drawn_location_when_none_was_named():
    from ppp_jax.envs.domains import stdlib_loc
    from ppp_jax.envs.episode import EpisodeConfig
    from ppp_jax.envs.simulator_embedded import EmbeddedUserSimulator
    from ppp_jax.train import sft

    tasks = list(stdlib_loc.build_tasks(stdlib_loc.StdlibLocConfig(num_tasks=8, seed=3)))
    domain = stdlib_loc.make_domain()
    never_ask = sft.BehaviourConfig(ask_vague=0.0, ask_precise=0.0, seed=0)
    candidates = ["x.py:a", "y.py:b", "z.py:c"]

    def answers(guess):
        recs = sft.generate_scripted_episodes(
            tasks, domain, EmbeddedUserSimulator(), num_episodes=24, behaviour=never_ask,
            include_heldout_styles=False, episode=EpisodeConfig(max_turns=3), guess=guess)
        return {(r.task_id, r.preference_id, r.prompt_kind): r.answer for r in recs}, recs

    drawn, recs = answers(candidates)
    vague = [r.answer for r in recs if r.prompt_kind == "vague"]
    precise = [r for r in recs if r.prompt_kind == "precise"]
    assert vague and set(vague) <= set(candidates) and len(set(vague)) > 1
    gold = {t.task_id: t.gold[0] for t in tasks}
    assert precise and all(r.answer == gold[r.task_id] for r in precise)  # named: copied
    assert answers(candidates)[0] == drawn  # drawn from the episode's seed: the same every run
    constant, _ = answers(sft.GUESS)
    assert {a for k, a in constant.items() if k[2] == "vague"} == {sft.GUESS}


def test_copy_drills_answer_the_location_their_line_names():
    from ppp_jax.envs.domains import stdlib_loc
    from ppp_jax.envs.episode import EpisodeConfig
    from ppp_jax.envs.simulator_embedded import EmbeddedUserSimulator
    from ppp_jax.envs.testing import tiny_seed_tokenizer
    from ppp_jax.sampling.chat import ChatTokenizer
    from ppp_jax.train import sft

    tasks = list(stdlib_loc.build_tasks(stdlib_loc.StdlibLocConfig(num_tasks=6, seed=3)))
    recs = sft.generate_scripted_episodes(
        tasks, stdlib_loc.make_domain(), EmbeddedUserSimulator(), num_episodes=12,
        behaviour=sft.BehaviourConfig(ask_vague=1.0, ask_precise=0.0, effort_mix=(1.0, 0.0, 0.0)),
        include_heldout_styles=False, episode=EpisodeConfig(max_turns=4))
    tok = tiny_seed_tokenizer(extra_text=[t.precise_prompt for t in tasks])
    chat = ChatTokenizer(tok)
    drills = sft.copy_drills(recs, chat, 20, seed=0)
    assert len(drills) == 20 and drills == sft.copy_drills(recs, chat, 20, seed=0)
    golds = {t.gold[0] for t in tasks}
    for v in drills:
        prompt = tok.decode([t for t, m in zip(v.token_ids, v.loss_mask) if m == 0])
        answer = tok.decode([t for t, m in zip(v.token_ids, v.loss_mask) if m == 1])
        loc = sft.find_location(answer)
        assert loc in golds and loc in prompt  # the answer is a location the user turn names
        assert "<function=finish>" in answer and v.loss_mask[-1] == 1
    assert len({tok.decode(list(v.token_ids)) for v in drills}) > 2
    with pytest.raises(ValueError, match="no recorded prompt or reply names a location"):
        sft.copy_drills([], chat, 3, seed=0)


def test_fixed_distance_format_prompt_ends_with_the_location_and_drills_keep_that_form():
    from ppp_jax.envs.domains import stdlib_loc
    from ppp_jax.envs.episode import EpisodeConfig
    from ppp_jax.envs.simulator_embedded import EmbeddedUserSimulator
    from ppp_jax.envs.testing import tiny_seed_tokenizer
    from ppp_jax.rollout.agent_domain import PreferenceDomain
    from ppp_jax.sampling.chat import ChatTokenizer
    from ppp_jax.train import sft

    cfg = stdlib_loc.StdlibLocConfig(num_tasks=6, seed=3, location_last=True)
    tasks = [dataclasses.replace(t, metadata={**t.metadata, "preference_id": "commas"})
             for t in stdlib_loc.build_tasks(cfg)]
    first = PreferenceDomain(stdlib_loc.make_domain(), preference_first=True)
    after = PreferenceDomain(stdlib_loc.make_domain())
    for t in tasks:
        msg = first.first_message(t, "precise")
        assert msg.startswith("About the user:") and msg.endswith(t.gold[0])
        assert after.first_message(t, "precise").startswith("Bug report")
        assert sorted(msg.split()) == sorted(after.first_message(t, "precise").split())
    # drills: of the lines that name a location (here the old prompt's "(location X), does not
    # behave ..." and the user's bare "X"), only those ending with it
    plain = [dataclasses.replace(t, metadata={**t.metadata, "preference_id": "commas"})
             for t in stdlib_loc.build_tasks(dataclasses.replace(cfg, location_last=False))]
    recs = sft.generate_scripted_episodes(
        plain, after, EmbeddedUserSimulator(), num_episodes=12,
        behaviour=sft.BehaviourConfig(ask_vague=1.0, ask_precise=0.0, effort_mix=(0.5, 0.0, 0.5)),
        include_heldout_styles=False, episode=EpisodeConfig(max_turns=4))
    tok = tiny_seed_tokenizer(extra_text=[t.precise_prompt for t in plain])
    chat = ChatTokenizer(tok)
    drills = sft.copy_drills(recs, chat, 20, seed=0)
    for v in drills:
        prompt = tok.decode([t for t, m in zip(v.token_ids, v.loss_mask) if m == 0],
                            skip_special_tokens=False)
        answer = tok.decode([t for t, m in zip(v.token_ids, v.loss_mask) if m == 1])
        line = prompt.split("user\n", 1)[1].split("<seed:eos>", 1)[0]
        loc = sft.find_location(answer)
        assert loc in {t.gold[0] for t in plain}
        assert line.endswith(loc)  # always copied from the same distance


def test_sft_batch_weights_the_trained_location_tokens_only():
    from ppp_jax.train.sft import sft_batch

    # 101 is a location in the prompt (mask 0) and in the answer (mask 1); 7 is a trained non-location
    views = [_view([5, 101, 6, 7, 101, 2], (0, 0, 0, 1, 1, 1)), _view([3, 102, 4, 102], (0, 0, 1, 1))]
    plain = sft_batch(views, 16, 1)
    weighted = sft_batch(views, 16, 1, weighted_ids=np.arange(100, 140), weight=10.0)
    for f in ("tokens", "targets", "loss_mask", "positions", "segment_ids"):
        assert np.array_equal(getattr(plain, f), getattr(weighted, f))
    trained = plain.loss_mask > 0
    is_loc = np.isin(plain.targets, np.arange(100, 140))
    assert np.all(weighted.advantages[trained & is_loc] == 10.0) and (trained & is_loc).sum() == 2
    assert np.all(weighted.advantages[trained & ~is_loc] == 1.0)
    assert np.array_equal(weighted.advantages[~trained], plain.advantages[~trained])
    unweighted = sft_batch(views, 16, 1, weighted_ids=np.arange(100, 140), weight=1.0)
    assert np.array_equal(unweighted.advantages, plain.advantages)
