"""The trained policy exports to Hugging Face end to end: a tiny PPP run trains 1 step, the
policy is written as `ppp train` does (`<run>/policy/`, an orbax model checkpoint), `ppp convert
orbax2hf` makes it a HF directory, and transformers' SeedOssForCausalLM on that directory gives
our logits of the trained params (fp32, 1e-4); the exported weights are not the initial ones."""

import json

import numpy as np
import pytest

from ppp_jax import cli
from ppp_jax.envs.testing import tiny_seed_tokenizer
from ppp_jax.train.metrics import read_jsonl
from tests import numerics as nm

from tests.ppp_jax.test_trainer import tiny_config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_trained_policy_exports_to_hf(tmp_path):
    import jax

    from ppp_jax.model import api
    from ppp_jax.model.checkpoint import CONFIG_FILE
    from ppp_jax.model.hf_io import iter_hf_tensors, params_of, save_hf
    from ppp_jax.train.trainer import PPPTrainer
    from ppp_jax.train.builders import build_parts
    from flax import nnx

    tok = tiny_seed_tokenizer()
    # On the tiny random policy both episodes of a prompt usually get the same reward, so the
    # GRPO advantages (and the policy gradient) are all zero; a small entropy bonus makes the
    # one step a real, nonzero update through the same train step.
    cfg = tiny_config(tmp_path, **{"rl.loss.entropy_coef": 0.01})
    run = tmp_path / "run"
    trainer = PPPTrainer(cfg, build_parts(cfg, tokenizer=tok), run_dir=run)
    try:
        init = {k: np.asarray(jax.device_get(v)) for k, v in params_of(trainer.init_params).items()}
        final = trainer.train(num_steps=1)
        assert final.step == 1
        # What `ppp train` does at the end of a run (commands/train.py).
        policy = trainer.save_policy(final.train.params, run / "policy")
    finally:
        trainer.engine.close()
    [row] = read_jsonl(run / "metrics.jsonl")
    assert row["train/grad_norm"] > 0 and row["train/skipped"] == 0
    assert policy == (run / "policy").absolute()
    assert (policy / CONFIG_FILE).exists() and (policy / "params").is_dir()  # orbax, not HF

    dst = tmp_path / "hf"
    assert cli.main(["convert", "orbax2hf", str(policy), str(dst), "--quiet"]) == 0
    hf_config = json.loads((dst / "config.json").read_text())
    assert hf_config["model_type"] == "seed_oss"

    # Training changed the weights, and the export carries the trained ones.
    trained = {k: np.asarray(jax.device_get(v)) for k, v in params_of(final.train.params).items()}
    assert trained.keys() == init.keys()
    changed = [k for k in init if not np.array_equal(init[k], trained[k])]
    assert changed, "one training step left every parameter unchanged"
    init_dir = save_hf(trainer.init_params, trainer.parts.model.config, tmp_path / "hf_init")
    exported = dict(iter_hf_tensors(dst))
    initial = dict(iter_hf_tensors(init_dir))
    assert exported.keys() == initial.keys()
    differ = [k for k in exported if not np.array_equal(exported[k], initial[k])]
    assert len(differ) >= len(changed) > 0

    # Same logits: our model on the trained params vs transformers on the exported directory.
    rng = np.random.default_rng(0)
    vocab = trainer.parts.model.config.vocab_size
    tokens = rng.integers(0, vocab, size=(3, 17)).astype(np.int32)
    ours = np.asarray(api.logits(nnx.merge(trainer.graphdef, final.train.params), tokens),
                      np.float32)
    # The orbax policy reloads to the same model.
    reloaded = np.asarray(api.logits(api.load_pretrained(policy), tokens), np.float32)
    # another model object (its own compiled program): two float32 evaluations of the forward
    tol = nm.f32_forward_atol(nm.transformer_path_length(trainer.parts.model.config, 17),
                              np.abs(ours).max())
    np.testing.assert_allclose(reloaded, ours, atol=tol, rtol=0)

    hf = transformers.SeedOssForCausalLM.from_pretrained(dst, dtype=torch.float32,
                                                         attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = hf(torch.from_numpy(tokens.astype(np.int64))).logits.float().numpy()
    assert theirs.shape == ours.shape == (3, 17, vocab)
    np.testing.assert_allclose(theirs, ours, atol=tol, rtol=0)  # torch vs XLA: the same bound
    # ... and not the initial model's logits.
    hf_init = transformers.SeedOssForCausalLM.from_pretrained(init_dir, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    with torch.no_grad():
        before = hf_init(torch.from_numpy(tokens.astype(np.int64))).logits.float().numpy()
    assert np.abs(before - theirs).max() > 10 * tol
