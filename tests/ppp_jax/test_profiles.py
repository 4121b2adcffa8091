"""The `profile` switch: resolved once at load, each key still overridable, and switching it
changes exactly the profile's keys and nothing else."""

from pathlib import Path

import pytest

from ppp_jax.config.loader import ConfigError, to_dict
from ppp_jax.config.profiles import PROFILE_NAMES, profile_settings, profile_summary
from ppp_jax.config.run import RunConfig, load_run_config

ROOT = Path(__file__).resolve().parents[2]


def _get(d, dotted):
    for k in dotted.split("."):
        d = d[k]
    return d


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_flat(v, key))
        else:
            out[key] = v
    return out


def test_both_profiles_name_the_same_keys_and_paper_is_the_default():
    paper, released = profile_settings("paper"), profile_settings("released")
    assert set(paper) == set(released)
    defaults = to_dict(RunConfig())
    assert defaults["profile"] == "paper"
    for k, v in paper.items():
        assert _get(defaults, k) == v, k  # a RunConfig built in Python is the paper profile
    for k in paper:
        assert paper[k] != released[k], k  # every key of the profile really switches


@pytest.mark.parametrize("config", [None, "configs/seed_oss_36b_funcloc.yaml",
                                    "configs/seed_oss_36b_browsecomp.yaml"])
def test_switching_the_profile_changes_exactly_its_keys(tmp_path, config):
    if config is None:
        path = tmp_path / "run.yaml"
        path.write_text("name: bare\n")
    else:
        path = ROOT / config
    a = _flat(to_dict(load_run_config(path, ["profile=paper"])))
    b = _flat(to_dict(load_run_config(path, ["profile=released"])))
    assert set(a) == set(b)
    diff = {k for k in a if a[k] != b[k]}
    assert diff == {"profile"} | set(profile_settings("released")), sorted(diff)
    for k, v in profile_settings("released").items():
        assert b[k] == v


def test_every_key_stays_overridable(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("profile: released\nrl:\n  loss: {clip_ratio_high: 0.3}\n")
    cfg = load_run_config(path, ["simulator.show_tags_to_agent=false"])
    assert cfg.profile == "released"
    assert cfg.rl.loss.clip_ratio_high == 0.3  # the file wins over the profile
    assert cfg.simulator.show_tags_to_agent is False  # so does an override
    assert cfg.reward.variant == "released" and cfg.rl.mask_overlong is True  # the rest follow
    assert profile_summary(cfg.profile, to_dict(cfg)) == (
        "profile released (overridden: rl.loss.clip_ratio_high=0.3, "
        "simulator.show_tags_to_agent=False)")
    plain = load_run_config(path, ["profile=paper"])
    assert plain.rl.loss.clip_ratio_high == 0.3 and plain.reward.variant == "paper"
    assert profile_summary("paper", to_dict(RunConfig())) == "profile paper"


def test_unknown_profile_is_a_config_error(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("profile: verl\n")
    with pytest.raises(ConfigError, match=r"profile.*'verl'.*\['paper', 'released'\]"):
        load_run_config(path)
    with pytest.raises(ValueError, match="profile must be one of"):
        profile_settings("verl")
    assert PROFILE_NAMES == ("paper", "released")
