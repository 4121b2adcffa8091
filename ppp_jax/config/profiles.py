"""Fidelity profiles: one top-level `profile:` key that fills a coherent set of settings.

    profile: released      # in a run config's YAML, or `profile=released` on the command line

`paper` (the default) follows the paper's text (arXiv 2511.02208); `released` follows the authors'
released code (`sunnweiwei/PPP-Agent`), which is what the released PPP-36B checkpoint was trained
against. `docs/fidelity.md` lists every mechanism against both sources.

A profile is data: a mapping from dotted config keys to values. It is resolved once, when the
YAML is loaded (`resolve_profile`, called by `ppp_jax.config.run.load_run_config`): each key of
the profile that the YAML file and the command-line overrides leave unset gets the profile's
value, so every individual key stays overridable. The rest of the code reads the individual
settings and never the profile name, which is kept in `RunConfig.profile` only to be printed
and recorded.

The `paper` profile's values are the dataclass defaults (a test checks that), so a RunConfig
built in Python without a file is the paper profile; both profiles name the same keys, so
switching the profile changes exactly these keys and nothing else (a test diffs the resolved
configs).
"""

from __future__ import annotations

from typing import Any, Literal

from ppp_jax.envs.simulator import CAP_REPLY, RELEASED_CAP_REPLY

Profile = Literal["paper", "released"]
PROFILE_NAMES: tuple[str, ...] = ("paper", "released")

# key -> (paper value, released value). Each line names the released code's file it follows.
_SETTINGS: dict[str, tuple[Any, Any]] = {
    # reward: envs/userville.py UserReward (cost reward by level, +0.05 bonuses, -0.1 no-ask)
    "reward.variant": ("paper", "released"),
    # metrics: scripts/eval_func_loc.py averages userville's `ask_ok` / `preference_ok`
    "metrics.proactivity": ("paper", "released"),
    "metrics.personalization": ("paper", "released"),
    # training: scripts/train_ppp.sh leaves verl's clip ratios at 0.2 / 0.2;
    # verl/trainer/ppo/ray_trainer.py masks the loss of rollouts flagged overlong
    "rl.loss.clip_ratio_high": (0.28, 0.2),
    "rl.mask_overlong": (False, True),
    # what the agent sees: envs/userville.py returns the simulator's reply with its tags
    "simulator.show_tags_to_agent": (False, True),
    # envs/userville.py: the canned, untagged refusal once the simulator chat holds 10 messages;
    # the amateur preference blanks the edit file/function for SWE only
    "simulator.cap_reply": (CAP_REPLY, RELEASED_CAP_REPLY),
    "simulator.amateur_hidden": ("all", "swe"),
    # the interface PPP-36B learned (envs/interface.py): envs/userville.py dispatches
    # `ask_question` with `query`, runs `fn_call[0]` only and (agents/ppp_agent.py) appends every
    # observation as a user message; envs/repo_env.py's finish(message, answer) and its
    # OpenHands-style tools written into the system prompt
    "rollout.episode.interface.ask_tool": ("ask_user", "ask_question"),
    "rollout.episode.interface.finish_message": (False, True),
    "rollout.episode.interface.tools_in": ("template", "system_text"),
    "rollout.episode.interface.observation_role": ("tool", "user"),
    "rollout.episode.interface.calls_per_turn": ("all", "released"),
    # envs/repo_server.py's read-only whitelist: also cut, awk, git (emulated: repo_bash.Bash)
    "domain.shell_whitelist": ("paper", "released"),
}


def profile_settings(name: str) -> dict[str, Any]:
    """The dotted keys a profile sets and their values. Raises ValueError for an unknown name."""
    if name not in PROFILE_NAMES:
        raise ValueError(f"profile must be one of {list(PROFILE_NAMES)}, got {name!r}")
    i = PROFILE_NAMES.index(name)
    return {k: v[i] for k, v in _SETTINGS.items()}


def resolve_profile(data: dict[str, Any]) -> dict[str, Any]:
    """Fills, in place, each key of `data["profile"]`'s settings that `data` (the YAML file merged
    with the overrides) does not set; returns `data`. A missing `profile` means "paper"."""
    name = data.get("profile", "paper")
    if name not in PROFILE_NAMES:
        return data  # the schema's Literal check names the key and the valid values
    for dotted, value in profile_settings(name).items():
        keys = dotted.split(".")
        node = data
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                break  # a wrong type; the schema check reports it
            node = child
        else:
            node.setdefault(keys[-1], value)
    return data


def _get(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for k in dotted.split("."):
        if not isinstance(node, dict) or k not in node:
            return None
        node = node[k]
    return node


def profile_summary(name: str, resolved: dict[str, Any]) -> str:
    """One line naming the profile and any of its keys that the config overrode, e.g.
    "profile released (overridden: rl.loss.clip_ratio_high=0.28)". `resolved` is the run
    config as a plain dict (`ppp_jax.config.loader.to_dict`)."""
    changed = [f"{k}={_get(resolved, k)!r}" for k, v in profile_settings(name).items()
               if _get(resolved, k) != v]
    return f"profile {name}" + (f" (overridden: {', '.join(changed)})" if changed else "")
