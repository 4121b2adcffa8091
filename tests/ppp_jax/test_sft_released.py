"""The warm start under the released interface: the scripted agent asks with `ask_question`, and
SFT renders a released-interface conversation to exactly the engine's tokens."""

import asyncio

from ppp_jax.envs.domains import stdlib_loc
from ppp_jax.envs.episode import EpisodeConfig, run_episode
from ppp_jax.envs.interface import AgentInterface
from ppp_jax.envs.policy import EnginePolicy, ScriptedEngine
from ppp_jax.envs.simulator_embedded import EmbeddedUserSimulator
from ppp_jax.envs.testing import tiny_seed_tokenizer
from ppp_jax.sampling.chat import ChatTokenizer
from ppp_jax.train import sft

RELEASED = AgentInterface(ask_tool="ask_question", finish_message=True, tools_in="system_text",
                          observation_role="user", calls_per_turn="first")


def test_scripted_episodes_ask_with_the_interface_tool():
    tasks = list(stdlib_loc.build_tasks(stdlib_loc.StdlibLocConfig(num_tasks=6, seed=3)))
    domain = stdlib_loc.make_domain()
    behaviour = sft.BehaviourConfig(ask_vague=1.0, ask_precise=1.0, follow_preference=1.0,
                                    effort_mix=(1.0, 0.0, 0.0), seed=0)
    for face, name in ((RELEASED, "ask_question"), (AgentInterface(), "ask_user")):
        recs = sft.generate_scripted_episodes(
            tasks, domain, EmbeddedUserSimulator(), num_episodes=6, behaviour=behaviour,
            include_heldout_styles=False, episode=EpisodeConfig(max_turns=6, interface=face))
        asked = [r for r in recs if r.questions]
        assert asked and all(c.name == name for r in asked for c in r.tool_calls[:1])
        assert all(r.stats["unknown_tool"] == 0 for r in recs)


def test_released_conversation_renders_to_the_engine_tokens():
    task = list(stdlib_loc.build_tasks(stdlib_loc.StdlibLocConfig(num_tasks=6, seed=3)))[0]
    domain = stdlib_loc.make_domain()
    tok = tiny_seed_tokenizer(extra_text=[task.vague_prompt, task.precise_prompt])
    script = ["<function=ask_question>\n<parameter=query>Which module?</parameter>\n</function>",
              "<function=finish>\n<parameter=message>Done.</parameter>\n"
              f"<parameter=answer>{task.gold[0]}</parameter>\n</function>"]
    rec = asyncio.run(run_episode(domain, task, EnginePolicy(ScriptedEngine(tok, script), tok),
                                  EmbeddedUserSimulator(), preference_id="concise_question",
                                  config=EpisodeConfig(interface=RELEASED)))
    assert len(rec.questions) == 1 and rec.task_score == 1.0
    assert sft.episode_tools(domain, task, RELEASED) == []
    view = sft.render_token_view(rec.messages, sft.episode_tools(domain, task, RELEASED),
                                 ChatTokenizer(tok))
    assert view.token_ids == rec.tokens.token_ids and view.loss_mask == rec.tokens.loss_mask
