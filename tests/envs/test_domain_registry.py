"""The domain registry: domains register themselves with their config section; the trainer's
`build_tasks` is a lookup, so a new domain needs no trainer edit; the task family comes from the
domain object."""

import asyncio
import dataclasses

import pytest

from ppp_jax.config.loader import ConfigError, from_dict
from ppp_jax.config.run import DomainSection, RunConfig
from ppp_jax.envs.domains import browsecomp, stdlib_loc, swe_func_loc
from ppp_jax.envs.domains.base import FINISH, Task, function_tool
from ppp_jax.envs.domains.registry import (get_domain, register_domain, registered_domains,
                                           unregister_domain)
from ppp_jax.envs.episode import run_episode
from ppp_jax.envs.policy import ScriptedPolicy
from ppp_jax.envs.records import Question
from ppp_jax.envs.reward import RewardConfig, reward_breakdown
from ppp_jax.envs.simulator_embedded import EmbeddedUserSimulator
from ppp_jax.sampling.chat_format.seed_oss import render_tool_call

TOY = "toy_echo"


class ToyDomain:
    """Answer with the word the task names; a search-family domain whose name says nothing."""

    name = TOY
    task_family = "search"

    def system_prompt(self, task):
        return "Answer with the word."

    def first_message(self, task, kind):
        return task.prompt(kind)

    def tool_schemas(self, task):
        return [function_tool(FINISH, "Answer.", {"answer": {"type": "string"}}, ["answer"])]

    async def run_tool(self, task, name, args, state):
        return f"ERROR: unknown tool {name}"

    async def score(self, task, answer):
        return float(answer == task.gold[0])

    def check_finish(self, task, args, state):
        return None


@dataclasses.dataclass(frozen=True)
class ToySection:
    tool_style: str = "native"  # a key DomainSection already has


def build_toy(section):
    tasks = [Task(f"toy:{w}", TOY, f"Say {w}.", "Say the word.", w, (w,)) for w in ("red", "blue")]
    return tasks, ToyDomain()


@pytest.fixture
def toy():
    spec = register_domain(TOY, ToySection, build_toy)
    yield spec
    unregister_domain(TOY)


def test_the_built_in_domains_are_registered_with_their_sections():
    assert {"stdlib_loc", "swe_func_loc", "browsecomp_plus"} <= set(registered_domains())
    assert get_domain("stdlib_loc").section is stdlib_loc.StdlibLocSection
    assert get_domain("swe_func_loc").section is swe_func_loc.SweFuncLocSection
    assert get_domain("browsecomp_plus").section is browsecomp.BrowseCompSection
    # the flat YAML section holds every domain's keys, each read back into its own section
    d = from_dict(DomainSection, {"name": "swe_func_loc", "swe_rows": "r.jsonl",
                                  "swe_split": "test", "tool_style": "openhands"})
    assert get_domain(d.name).section_from(d) == swe_func_loc.SweFuncLocSection(
        tool_style="openhands", swe_rows="r.jsonl", swe_split="test")
    # another domain's key would be ignored, so it is refused
    with pytest.raises(ValueError, match="browsecomp_corpus: set, but domain 'swe_func_loc'"):
        from_dict(DomainSection, {"name": "swe_func_loc", "browsecomp_corpus": "c.jsonl"})
    with pytest.raises(ValueError, match="domain.swe_clone_root: empty"):
        from ppp_jax.train.builders import build_tasks

        build_tasks(RunConfig(domain=d))


def test_a_registered_domain_builds_through_the_trainer_builder(toy):
    from ppp_jax.train.builders import agent_domain, build_tasks

    cfg = from_dict(RunConfig, {"domain": {"name": TOY, "system_prompt": "Be brief."}})
    tasks, inner = build_tasks(cfg)
    assert [t.task_id for t in tasks] == ["toy:red", "toy:blue"] and isinstance(inner, ToyDomain)
    outer = agent_domain(cfg, inner)
    assert outer.task_family == "search" and outer.system_prompt(tasks[0]) == "Be brief."
    # the family comes from the domain object, not from its name
    script = [render_tool_call("ask_user", {"question": "Which word?"}),
              render_tool_call(FINISH, {"answer": "blue"})]
    rec = asyncio.run(run_episode(inner, tasks[1], ScriptedPolicy(script), EmbeddedUserSimulator(),
                                  preference_id="no_preference", prompt_kind="vague"))
    assert rec.domain == TOY and rec.task_family == "search" and rec.task_score == 1.0
    released = RewardConfig(variant="released", clip=False)
    high = dataclasses.replace(rec, questions=(Question("Which word?", "a", "high"),))
    # search constants: a high-effort question costs 0.9 (SWE would charge 0.1 * (4 - 1))
    assert reward_breakdown(high, released).proactivity == pytest.approx(-0.9)


def test_unknown_name_lists_the_registered_domains(toy):
    registered = r"unknown domain 'nope'; registered domains: \[.*'toy_echo'"
    with pytest.raises(ValueError, match=registered):
        get_domain("nope")
    with pytest.raises(ConfigError, match=r"domain\.name: unknown domain 'nope'; registered domains: "
                                          r"\['browsecomp_plus', 'stdlib_loc', 'swe_full', "
                                          r"'swe_func_loc', 'toy_echo'\]"):
        from_dict(RunConfig, {"domain": {"name": "nope"}})
    # unknown keys are still rejected with the valid ones
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['swe_rowz'\]; valid keys for "
                                          r"DomainSection: \['browsecomp_corpus'"):
        from_dict(RunConfig, {"domain": {"name": TOY, "swe_rowz": "x"}})


def test_registration_rules(toy):
    with pytest.raises(ValueError, match="already registered"):
        register_domain("stdlib_loc", ToySection, build_toy)
    with pytest.raises(TypeError, match="dataclass"):
        register_domain("toy_bad", dict, build_toy)

    @dataclasses.dataclass(frozen=True)
    class Unplaced:
        toy_size: int = 3

    register_domain("toy_unplaced", Unplaced, build_toy)
    try:
        with pytest.raises(ConfigError, match="'toy_size' is not in DomainSection"):
            from_dict(RunConfig, {"domain": {"name": "toy_unplaced"}})
    finally:
        unregister_domain("toy_unplaced")
    assert "toy_unplaced" not in registered_domains()
