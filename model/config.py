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
import math
import typing
from pathlib import Path
from typing import Any, Literal

# Names accepted for `param_dtype` and `dtype` (compute dtype).
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "save_dots")
ATTENTION_IMPLS = ("xla", "cudnn", "splash")

_HF_MODEL_TYPE = "seed_oss"
_HF_ARCHITECTURE = "SeedOssForCausalLM"
# The decoder families of the same shape (pre-norm, GQA, half-split RoPE, SwiGLU): Hugging Face
# model_type -> architecture. They differ only in which projections carry biases (below) and in
# config spelling; their weight names are the same.
FAMILIES = {"seed_oss": "SeedOssForCausalLM", "llama": "LlamaForCausalLM",
            "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM",
            "qwen3": "Qwen3ForCausalLM"}
# RoPE variants implemented (transformers' rope_type names); others are refused by name.
ROPE_TYPES = ("default", "linear", "llama3", "yarn")


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
    # The Hugging Face family the weights came from and go back to (`FAMILIES`); the forward
    # pass is the same for all of them, given the bias flags above.
    family: str = "seed_oss"
    qk_norm: bool = False  # Qwen3: RMSNorm of each head's q and k (weights [H]) before RoPE
    # Scaled RoPE (transformers' rope_type): "linear" divides every frequency by rope_factor;
    # "llama3" divides the low frequencies by rope_factor and interpolates the middle band
    # between rope_low_freq_factor and rope_high_freq_factor of rope_original_max_position.
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position: int = 8192
    # "yarn": frequencies ramp from extrapolated (dims rotating more than rope_beta_fast times
    # over the original context) to interpolated (fewer than rope_beta_slow), and cos/sin are
    # multiplied by rope_attention_factor (derived from the factor when the file gives none).
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    rope_attention_factor: float = 1.0
    rope_truncate: bool = True
    # The decoder layers' projections (q/k/v/o, gate/up/down) as sums of dots over slices of
    # this many input features, added in float32 (`layers.chunked_dot`); 0 = one dot each
    # (default). For float32 on CPU: XLA:CPU sums a dot's contraction in long running sums, 1.4-1.6
    # times as far from float64 as torch's CPU matmul; 128 puts SmolLM2-135M's logits nearer to
    # float64 than transformers' float32, for 0-15% more CPU time (docs/model_io.md). Not the
    # lm_head / tied logits (wide outputs make the partial sums costly) nor attention's einsums.
    dot_chunk: int = 0

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
        if isinstance(self.dot_chunk, bool) or not isinstance(self.dot_chunk, int) \
                or self.dot_chunk < 0:
            raise ModelConfigError(
                f"ModelConfig.dot_chunk must be a non-negative int, got {self.dot_chunk!r}")
        if not self.rope_theta > 0:
            raise ModelConfigError(f"ModelConfig.rope_theta must be positive, got {self.rope_theta!r}")
        if not self.rms_norm_eps > 0:
            raise ModelConfigError(f"ModelConfig.rms_norm_eps must be positive, got {self.rms_norm_eps!r}")
        if self.family not in FAMILIES:
            raise ModelConfigError(
                f"ModelConfig.family={self.family!r} is not one of {sorted(FAMILIES)}")
        if self.rope_type not in ROPE_TYPES:
            raise ModelConfigError(
                f"ModelConfig.rope_type={self.rope_type!r} is not one of {list(ROPE_TYPES)}")
        if not self.rope_factor >= 1.0:
            raise ModelConfigError(f"ModelConfig.rope_factor must be >= 1, got {self.rope_factor!r}")
        if self.rope_type == "llama3" and not (
                0 < self.rope_low_freq_factor < self.rope_high_freq_factor
                and self.rope_original_max_position > 0):
            raise ModelConfigError(
                "ModelConfig: llama3 RoPE needs 0 < rope_low_freq_factor < rope_high_freq_factor "
                f"and rope_original_max_position > 0, got {self.rope_low_freq_factor!r}, "
                f"{self.rope_high_freq_factor!r}, {self.rope_original_max_position!r}")

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
        per_layer = attn + mlp + 2 * d + (2 * h if self.qk_norm else 0)
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
        if model_type not in FAMILIES:
            raise ModelConfigError(
                f"unsupported model_type {model_type!r}: ppp_jax.model implements "
                f"{sorted(FAMILIES)} (Seed-OSS and the decoders of the same shape)")
        archs = d.get("architectures")
        if archs is not None:
            bad = [a for a in archs if a != FAMILIES[model_type]]
            if bad or not archs:
                raise ModelConfigError(
                    f"unsupported architectures {archs!r} for model_type {model_type!r}: "
                    f"ppp_jax.model implements [{FAMILIES[model_type]!r}]")
        if model_type == "mistral" and d.get("sliding_window") is not None:
            raise ModelConfigError(
                f"sliding_window={d['sliding_window']!r}: sliding-window attention is not "
                "implemented; only Mistral checkpoints with sliding_window null load")
        if model_type in ("qwen2", "qwen3") and d.get("use_sliding_window"):
            raise ModelConfigError(
                "use_sliding_window=true: sliding-window attention is not implemented")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ModelConfigError(f"unsupported hidden_act {act!r}: Seed-OSS uses 'silu'")
        if d.get("pretraining_tp", 1) not in (1, None):
            raise ModelConfigError(f"unsupported pretraining_tp {d['pretraining_tp']!r} (only 1)")

        rope = _parse_rope(d)
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
        kw.update(rope)
        kw["family"] = model_type
        for key in ("rms_norm_eps", "tie_word_embeddings", "attention_dropout",
                    "residual_dropout", "max_position_embeddings", "bos_token_id",
                    "pad_token_id"):
            if d.get(key) is not None:
                kw[key] = d[key]
        kw.update(_family_biases(model_type, d))
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
        """A dict the family's transformers config (`SeedOssConfig`, `LlamaConfig`,
        `Qwen2Config`, `MistralConfig`) accepts and `config.json` export can write.

        Uses the 5.x `rope_parameters` spelling. `dtype` records the parameter dtype. Refuses
        bias flags the family cannot express (e.g. an o_proj bias without q/k/v biases in Llama).
        """
        rope: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": self.rope_theta}
        if self.rope_type in ("linear", "llama3", "yarn"):
            rope["factor"] = self.rope_factor
        if self.rope_type == "yarn":
            rope.update(original_max_position_embeddings=self.rope_original_max_position,
                        beta_fast=self.rope_beta_fast, beta_slow=self.rope_beta_slow,
                        attention_factor=self.rope_attention_factor,
                        truncate=self.rope_truncate)
        if self.rope_type == "llama3":
            rope.update(low_freq_factor=self.rope_low_freq_factor,
                        high_freq_factor=self.rope_high_freq_factor,
                        original_max_position_embeddings=self.rope_original_max_position)
        out = {
            "architectures": [FAMILIES[self.family]],
            "model_type": self.family,
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
            "rope_parameters": rope,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": self.attention_dropout,
            "bos_token_id": self.bos_token_id,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
            "dtype": self.param_dtype,
        }
        biases = (self.attention_bias, self.attention_out_bias, self.mlp_bias)
        if self.qk_norm != (self.family == "qwen3"):
            raise ModelConfigError(f"family {self.family!r} cannot express qk_norm={self.qk_norm}")
        if self.family == "seed_oss":
            out.update(attention_bias=self.attention_bias,
                       attention_out_bias=self.attention_out_bias, mlp_bias=self.mlp_bias,
                       residual_dropout=self.residual_dropout)
            return out
        allowed = {"llama": {(False, False, False), (True, True, False), (False, False, True),
                             (True, True, True)},
                   "qwen2": {(True, False, False)}, "mistral": {(False, False, False)},
                   "qwen3": {(False, False, False), (True, True, False)}}
        if biases not in allowed[self.family]:
            raise ModelConfigError(
                f"family {self.family!r} cannot express attention_bias={biases[0]}, "
                f"attention_out_bias={biases[1]}, mlp_bias={biases[2]}")
        if self.residual_dropout:
            raise ModelConfigError(f"family {self.family!r} has no residual dropout")
        if self.family == "llama":
            out.update(attention_bias=self.attention_bias, mlp_bias=self.mlp_bias)
        if self.family == "qwen3":
            out.update(attention_bias=self.attention_bias, use_sliding_window=False)
        if self.family in ("mistral", "qwen2", "qwen3"):
            out["sliding_window"] = None
        return out


def _family_biases(model_type: str, d: dict[str, Any]) -> dict[str, bool]:
    """Which projections carry a bias, as each family's transformers modeling builds them."""
    if model_type == "seed_oss":
        return {k: d[k] for k in ("attention_bias", "attention_out_bias", "mlp_bias")
                if d.get(k) is not None}
    if model_type == "llama":  # attention_bias covers q, k, v and o
        bias = bool(d.get("attention_bias", False))
        return {"attention_bias": bias, "attention_out_bias": bias,
                "mlp_bias": bool(d.get("mlp_bias", False)), "residual_dropout": 0.0}
    if model_type == "qwen2":  # q, k, v biased; o and the MLP not
        return {"attention_bias": True, "attention_out_bias": False, "mlp_bias": False,
                "residual_dropout": 0.0}
    if model_type == "qwen3":  # attention_bias covers q, k, v and o; per-head q/k norm
        bias = bool(d.get("attention_bias", False))
        return {"attention_bias": bias, "attention_out_bias": bias, "mlp_bias": False,
                "residual_dropout": 0.0, "qk_norm": True}
    return {"attention_bias": False, "attention_out_bias": False, "mlp_bias": False,
            "residual_dropout": 0.0}  # mistral


def _parse_rope(d: dict[str, Any]) -> dict[str, Any]:
    """RoPE fields of ModelConfig from either spelling (5.x `rope_parameters`, 4.x `rope_theta` +
    `rope_scaling`); refuses variants outside ROPE_TYPES, naming the field and the type."""
    params = d.get("rope_parameters")
    scaling = d.get("rope_scaling")
    where = "rope_parameters"
    if params is not None:
        if not isinstance(params, dict):
            raise ModelConfigError(f"rope_parameters must be a mapping, got {params!r}")
        spec = dict(params)
        theta = spec.get("rope_theta", d.get("rope_theta"))
    else:
        where = "rope_scaling"
        if scaling is not None and not isinstance(scaling, dict):
            raise ModelConfigError(f"rope_scaling must be a mapping or null, got {scaling!r}")
        spec = dict(scaling or {})
        theta = d.get("rope_theta")
    rope_type = spec.get("rope_type", spec.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ModelConfigError(
            f"unsupported RoPE type {rope_type!r} ({where}.rope_type): implemented are "
            f"{list(ROPE_TYPES)}")
    if theta is None:
        # transformers would silently fall back to 1e4 here; Seed-OSS needs 1e7, so refuse.
        raise ModelConfigError(
            "config.json has no rope_theta (neither top-level nor in rope_parameters); refusing "
            "to guess (transformers' default 1e4 would be wrong for Seed-OSS, which uses 1e7)")
    out: dict[str, Any] = {"rope_theta": float(theta), "rope_type": rope_type}
    if rope_type == "yarn":
        original = spec.get("original_max_position_embeddings",
                            d.get("original_max_position_embeddings", d.get("max_position_embeddings")))
        if original is None:
            raise ModelConfigError(f"{where}: yarn RoPE needs original_max_position_embeddings")
        factor = spec.get("factor")
        if factor is None:
            factor = d["max_position_embeddings"] / original
        factor = float(factor)

        def mscale(scale: float, m: float = 1.0) -> float:  # transformers' get_mscale
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        attention = spec.get("attention_factor")
        if attention is None:
            m, m_all = spec.get("mscale"), spec.get("mscale_all_dim")
            attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
        out.update(rope_factor=factor, rope_original_max_position=int(original),
                   rope_beta_fast=float(spec.get("beta_fast") or 32),
                   rope_beta_slow=float(spec.get("beta_slow") or 1),
                   rope_attention_factor=float(attention),
                   rope_truncate=bool(spec.get("truncate", True)))
        if spec.get("partial_rotary_factor", 1.0) != 1.0:
            raise ModelConfigError(f"{where}: partial_rotary_factor is not implemented")
        return out
    if rope_type in ("linear", "llama3"):
        if "factor" not in spec:
            raise ModelConfigError(f"{where}: RoPE type {rope_type!r} needs 'factor'")
        out["rope_factor"] = float(spec["factor"])
    if rope_type == "llama3":
        missing = [k for k in ("low_freq_factor", "high_freq_factor",
                               "original_max_position_embeddings") if k not in spec]
        if missing:
            raise ModelConfigError(f"{where}: llama3 RoPE needs {missing}")
        out.update(rope_low_freq_factor=float(spec["low_freq_factor"]),
                   rope_high_freq_factor=float(spec["high_freq_factor"]),
                   rope_original_max_position=int(spec["original_max_position_embeddings"]))
    return out


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
