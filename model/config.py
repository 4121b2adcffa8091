"""`ModelConfig`: the architecture of a Seed-OSS model, parsed from a Hugging Face `config.json`.

Letters used for sizes throughout `ppp_jax.model` (also in einsum strings and shape docs):

    B batch, T query length, S key length, D hidden (`hidden_size`), N query heads
    (`num_heads`), K kv heads (`num_kv_heads`), G = N / K, H head dim (`head_dim`),
    F MLP width (`intermediate_size`), V vocab (`vocab_size`), L layers (`num_layers`).

Dropout: the released Seed-OSS config carries `attention_dropout` / `residual_dropout` of 0.1,
and `from_hf_dict` keeps whatever the file says. Dropout is applied only when a forward pass is
given a `dropout_key` (see `SeedOssForCausalLM.hidden`), so sampling is always deterministic.
RL training configs pass no key by default (dropout off): the policy-gradient ratio compares the
trainer's log-probs with the sampler's, and with dropout live in the trainer the two disagree even
at step 0, which biases the importance weights and the clipping.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, Literal

# Names accepted for `param_dtype` and `dtype` (compute dtype).
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "save_dots")
ATTENTION_IMPLS = ("xla", "cudnn", "splash")

_HF_MODEL_TYPE = "seed_oss"
_HF_ARCHITECTURE = "SeedOssForCausalLM"


class ModelConfigError(ValueError):
    """A model config (ours or a Hugging Face `config.json`) is invalid or unsupported."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture and numerics of a Seed-OSS decoder. Sizes only; nothing here is derived twice.

    Fields mirror the Hugging Face `SeedOssConfig` names where they exist
    (`num_layers` = `num_hidden_layers`, `num_heads` = `num_attention_heads`,
    `num_kv_heads` = `num_key_value_heads`).
    """

    vocab_size: int  # V, embedding rows and logits columns
    hidden_size: int  # D, residual stream width
    intermediate_size: int  # F, SwiGLU width
    num_layers: int  # L
    num_heads: int  # N, query heads
    num_kv_heads: int  # K, key/value heads (GQA); N % K == 0
    head_dim: int  # H, explicit: Seed-OSS-36B has 128 while D / N = 64
    rope_theta: float = 1e7  # RoPE base frequency (half-split "rotate_half" RoPE, no scaling)
    rms_norm_eps: float = 1e-6
    attention_bias: bool = True  # q/k/v projections carry a bias (added before RoPE)
    attention_out_bias: bool = False  # o_proj bias
    mlp_bias: bool = False  # gate/up/down biases
    tie_word_embeddings: bool = False  # logits use embed.embedding^T when true
    attention_dropout: float = 0.0  # on attention probabilities; live only with a dropout key
    residual_dropout: float = 0.0  # after o_proj and after down_proj; live only with a dropout key
    max_position_embeddings: int = 524288  # informational; RoPE itself has no table limit
    bos_token_id: int = 0
    pad_token_id: int = 1
    eos_token_id: int = 2
    param_dtype: str = "float32"  # dtype parameters are stored in
    dtype: str = "float32"  # compute (activation) dtype; norms, softmax, silu run in fp32 inside
    remat: Literal["none", "full", "save_dots"] = "none"  # jax.checkpoint policy of each layer
    attention_impl: Literal["xla", "cudnn", "splash"] = "xla"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ModelConfigError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ModelConfigError(
                f"ModelConfig.num_heads ({self.num_heads}) must be divisible by num_kv_heads "
                f"({self.num_kv_heads}) for grouped-query attention")
        if self.head_dim % 2:
            raise ModelConfigError(f"ModelConfig.head_dim must be even for RoPE, got {self.head_dim}")
        for name in ("param_dtype", "dtype"):
            if getattr(self, name) not in DTYPES:
                raise ModelConfigError(
                    f"ModelConfig.{name}={getattr(self, name)!r} is not one of {list(DTYPES)}")
        if self.remat not in REMAT_POLICIES:
            raise ModelConfigError(f"ModelConfig.remat={self.remat!r} is not one of {list(REMAT_POLICIES)}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ModelConfigError(
                f"ModelConfig.attention_impl={self.attention_impl!r} is not one of {list(ATTENTION_IMPLS)}")
        for name in ("attention_dropout", "residual_dropout"):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                raise ModelConfigError(f"ModelConfig.{name} must be in [0, 1), got {rate!r}")
        if not self.rope_theta > 0:
            raise ModelConfigError(f"ModelConfig.rope_theta must be positive, got {self.rope_theta!r}")
        if not self.rms_norm_eps > 0:
            raise ModelConfigError(f"ModelConfig.rms_norm_eps must be positive, got {self.rms_norm_eps!r}")

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def group_size(self) -> int:
        """G = N / K, query heads per kv head."""
        return self.num_heads // self.num_kv_heads

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with `changes` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def param_count(self) -> int:
        """Exact number of parameters (every weight, bias and norm scale)."""
        d, f, n, k, h, v = (self.hidden_size, self.intermediate_size, self.num_heads,
                            self.num_kv_heads, self.head_dim, self.vocab_size)
        attn = d * n * h + 2 * d * k * h + n * h * d
        if self.attention_bias:
            attn += n * h + 2 * k * h
        if self.attention_out_bias:
            attn += d
        mlp = 3 * d * f + ((2 * f + d) if self.mlp_bias else 0)
        per_layer = attn + mlp + 2 * d
        total = self.num_layers * per_layer + v * d + d  # layers, embedding, final norm
        if not self.tie_word_embeddings:
            total += d * v
        return total

    # ---- our own stored form (model_config.json beside an orbax checkpoint) -------------
    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (all fields are scalars)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """The inverse of `to_dict`; unknown keys are refused with the list of valid ones, and
        each value must have its field's type (ints stay ints: no silent float-to-int)."""
        if not isinstance(d, dict):
            raise ModelConfigError(f"a stored ModelConfig must be a mapping, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ModelConfigError(f"unknown ModelConfig keys {unknown}; valid keys: {sorted(fields)}")
        hints = typing.get_type_hints(cls)
        for name, value in d.items():
            tp = hints[name]
            if typing.get_origin(tp) is Literal:
                ok = value in typing.get_args(tp)
            elif tp is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            else:
                ok = isinstance(value, tp) and (tp is bool or not isinstance(value, bool))
            if not ok:
                raise ModelConfigError(f"ModelConfig.{name}: expected {tp}, got {value!r}")
        return cls(**{k: float(v) if hints[k] is float else v for k, v in d.items()})

    # ---- Hugging Face config.json --------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **overrides: Any) -> ModelConfig:
        """Parses a Hugging Face Seed-OSS `config.json` dict.

        Accepts the legacy `rope_theta` + `rope_scaling` keys (transformers 4.x) and the
        `rope_parameters` mapping (5.x). Refuses other model types, other architectures and any
        RoPE type but "default", naming what it found. Dropout rates are taken from the file
        (0.1 in the released Seed-OSS config); see the module docstring for why RL turns dropout
        off. `overrides` (e.g. `dtype="bfloat16"`, `remat="full"`) are applied last.
        """
        model_type = d.get("model_type")
        if model_type != _HF_MODEL_TYPE:
            raise ModelConfigError(
                f"unsupported model_type {model_type!r}: ppp_jax.model implements only "
                f"{_HF_MODEL_TYPE!r} (Seed-OSS)")
        archs = d.get("architectures")
        if archs is not None:
            bad = [a for a in archs if a != _HF_ARCHITECTURE]
            if bad or not archs:
                raise ModelConfigError(
                    f"unsupported architectures {archs!r}: ppp_jax.model implements only "
                    f"[{_HF_ARCHITECTURE!r}]")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ModelConfigError(f"unsupported hidden_act {act!r}: Seed-OSS uses 'silu'")
        if d.get("pretraining_tp", 1) not in (1, None):
            raise ModelConfigError(f"unsupported pretraining_tp {d['pretraining_tp']!r} (only 1)")

        theta = _parse_rope_theta(d)
        required = {"vocab_size": "vocab_size", "hidden_size": "hidden_size",
                    "intermediate_size": "intermediate_size", "num_layers": "num_hidden_layers",
                    "num_heads": "num_attention_heads"}
        missing = [hf for hf in required.values() if hf not in d]
        if missing:
            raise ModelConfigError(f"Seed-OSS config.json lacks required keys {missing}")
        kw: dict[str, Any] = {ours: d[hf] for ours, hf in required.items()}
        kw["num_kv_heads"] = d.get("num_key_value_heads") or d["num_attention_heads"]
        head_dim = d.get("head_dim")
        kw["head_dim"] = head_dim if head_dim is not None else d["hidden_size"] // d["num_attention_heads"]
        kw["rope_theta"] = theta
        for key in ("rms_norm_eps", "attention_bias", "attention_out_bias", "mlp_bias",
                    "tie_word_embeddings", "attention_dropout", "residual_dropout",
                    "max_position_embeddings", "bos_token_id", "pad_token_id"):
            if d.get(key) is not None:
                kw[key] = d[key]
        eos = d.get("eos_token_id")
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        if eos is not None:
            kw["eos_token_id"] = eos
        for key in ("attention_dropout", "residual_dropout", "rope_theta", "rms_norm_eps"):
            if key in kw:
                kw[key] = float(kw[key])
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_hf_json(cls, path: str | Path, **overrides: Any) -> ModelConfig:
        """Reads `config.json` (or a checkpoint directory containing it); see `from_hf_dict`."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise ModelConfigError(f"no Hugging Face config at {path}") from e
        return cls.from_hf_dict(d, **overrides)

    def to_hf_dict(self) -> dict[str, Any]:
        """A dict `transformers.SeedOssConfig(**d)` accepts and `config.json` export can write.

        Uses the 5.x `rope_parameters` spelling. `dtype` records the parameter dtype.
        """
        return {
            "architectures": [_HF_ARCHITECTURE],
            "model_type": _HF_MODEL_TYPE,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "attention_bias": self.attention_bias,
            "attention_out_bias": self.attention_out_bias,
            "mlp_bias": self.mlp_bias,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": self.attention_dropout,
            "residual_dropout": self.residual_dropout,
            "bos_token_id": self.bos_token_id,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
            "dtype": self.param_dtype,
        }


def _parse_rope_theta(d: dict[str, Any]) -> float:
    """RoPE theta from either spelling; refuses scaled RoPE variants by name."""
    params = d.get("rope_parameters")
    scaling = d.get("rope_scaling")
    if params is not None:
        if not isinstance(params, dict):
            raise ModelConfigError(f"rope_parameters must be a mapping, got {params!r}")
        rope_type = params.get("rope_type", params.get("type", "default"))
        theta = params.get("rope_theta", d.get("rope_theta"))
    else:
        rope_type = "default"
        if scaling is not None:
            if not isinstance(scaling, dict):
                raise ModelConfigError(f"rope_scaling must be a mapping or null, got {scaling!r}")
            rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        theta = d.get("rope_theta")
    if rope_type != "default":
        raise ModelConfigError(
            f"unsupported RoPE type {rope_type!r}: Seed-OSS uses plain RoPE ('default'); "
            "scaled variants (linear, dynamic, yarn, llama3, ...) are not implemented")
    if theta is None:
        # transformers would silently fall back to 1e4 here; Seed-OSS needs 1e7, so refuse.
        raise ModelConfigError(
            "config.json has no rope_theta (neither top-level nor in rope_parameters); refusing "
            "to guess (transformers' default 1e4 would be wrong for Seed-OSS, which uses 1e7)")
    return float(theta)


def seed_oss_36b(**overrides: Any) -> ModelConfig:
    """Seed-OSS-36B-Instruct (and Base): 36,151,104,512 parameters.

    Dropout is 0.0 here (inference/RL default); `from_hf_json` on the real file reads 0.1.
    """
    base = dict(vocab_size=155136, hidden_size=5120, intermediate_size=27648, num_layers=64,
                num_heads=80, num_kv_heads=8, head_dim=128, rope_theta=1e7, rms_norm_eps=1e-6,
                attention_bias=True, attention_out_bias=False, mlp_bias=False,
                tie_word_embeddings=False, max_position_embeddings=524288)
    base.update(overrides)
    return ModelConfig(**base)


def tiny(**overrides: Any) -> ModelConfig:
    """A tiny Seed-OSS-shaped config for CPU tests: distinct sizes per axis, GQA 4, H != D/N.

    V=67, D=24, F=40, L=2, N=4, K=1 (G=4), H=10.
    """
    base = dict(vocab_size=67, hidden_size=24, intermediate_size=40, num_layers=2, num_heads=4,
                num_kv_heads=1, head_dim=10, rope_theta=1e4, max_position_embeddings=512)
    base.update(overrides)
    return ModelConfig(**base)
