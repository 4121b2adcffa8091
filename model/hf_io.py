"""Hugging Face Seed-OSS checkpoints in and out: safetensors <-> sharded `SeedOssForCausalLM`.

Names and layouts (PyTorch stores `Linear.weight` as [out, in]; we store kernels [in, out] with
the head axes split, and every decoder-layer parameter stacked on a leading L axis):

    HF tensor                                   shape       our parameter (per layer)   shape
    model.embed_tokens.weight                   [V, D]      embed.embedding             [V, D]
    model.layers.{i}.input_layernorm.weight     [D]         layers.input_norm.scale[i]  [D]
    model.layers.{i}.self_attn.q_proj.weight    [N*H, D]    layers.attn.q_proj.kernel[i] [D, N, H]   (T)
    model.layers.{i}.self_attn.q_proj.bias      [N*H]       layers.attn.q_proj.bias[i]  [N, H]
    ... k_proj / v_proj with K instead of N
    model.layers.{i}.self_attn.o_proj.weight    [D, N*H]    layers.attn.o_proj.kernel[i] [N, H, D]   (T)
    model.layers.{i}.self_attn.o_proj.bias      [D]         layers.attn.o_proj.bias[i]  [D]  (iff attention_out_bias)
    model.layers.{i}.post_attention_layernorm.weight [D]    layers.post_attn_norm.scale[i] [D]
    model.layers.{i}.mlp.{gate,up}_proj.weight  [F, D]      layers.mlp.{gate,up}_proj.kernel[i] [D, F] (T)
    model.layers.{i}.mlp.down_proj.weight       [D, F]      layers.mlp.down_proj.kernel[i] [F, D]   (T)
    (mlp biases [F] / [D] iff mlp_bias)
    model.norm.weight                           [D]         final_norm.scale            [D]
    lm_head.weight                              [V, D]      lm_head.kernel              [D, V]  (T; absent iff tied)

(T) = transposed: ours = hf.T.reshape(ours), hf = ours.reshape(hf[::-1]).T — pure permutations,
so the round trip is bit-exact in any dtype.

Loading streams one tensor at a time: every header is checked first (missing, unexpected,
mis-shaped and non-float tensors fail before any data moves), then each tensor is memory-mapped,
transposed and cast on the host and placed with `jax.make_array_from_callback`, which hands each
device only its own shard of the target `NamedSharding`. Host memory stays near one HF tensor.

Stacking the per-layer tensors into [L, ...] parameters: we preallocate the stacked parameter on
the devices, already sharded, and write layer i into it with a jitted `dynamic_update_slice` whose
buffer is donated, so the update happens in place. The alternatives hold more memory: a host
buffer of the whole stacked parameter costs up to 18 GB of host RAM for Seed-OSS-36B's
`gate_proj` in bf16 (64 x 5120 x 27648), and per-layer device arrays concatenated at the end need
twice the parameter on the devices. Ours needs, per device, its shard of one stacked parameter plus
one layer slice; the update compiles once per distinct stacked shape and sharding (~10 programs).

Export reads each tensor back from the devices one at a time (a layer slice for stacked params),
writes it with HF's file names (`model.safetensors` or `model-0000i-of-0000n.safetensors` plus
`model.safetensors.index.json`) into a temporary directory, and renames it into place at the end.
Export is single-process: every shard must be addressable from this host.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ppp_jax.model._fsutil import atomic_directory
from ppp_jax.model.config import DTYPES as MODEL_DTYPES
from ppp_jax.model.config import ModelConfig
from ppp_jax.model.safetensors_io import (
    FLOAT_CODES,
    INDEX_FILE,
    CheckpointFiles,
    CheckpointFormatError,
    dtype_code,
    read_tensor,
    shard_entries,
    shard_file_names,
    write_safetensors,
)
from ppp_jax.model.sharding import (
    FSDP_TP_RULES,
    Rule,
    make_mesh,
    materialize_rest,
    path_name,
    split_abstract,
    state_shardings,
)

# HF tensors that carry no parameter and are skipped when present.
IGNORED_TENSORS = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
DEFAULT_MAX_SHARD_SIZE = 5 * 2**30  # save_pretrained's default, "5GB"


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """How one HF tensor maps onto (a layer slice of) one of our parameters."""

    hf_name: str
    param: str  # our dotted parameter path
    layer: int | None  # index into the stacked L axis; None for unstacked parameters
    hf_shape: tuple[int, ...]
    shape: tuple[int, ...]  # our per-layer shape
    transpose: bool

    def to_ours(self, x: np.ndarray) -> np.ndarray:
        """HF layout -> our per-layer layout (a permutation of the elements; no arithmetic)."""
        return (x.T if self.transpose else x).reshape(self.shape)

    def to_hf(self, y: np.ndarray) -> np.ndarray:
        """Our per-layer layout -> HF layout (contiguous)."""
        if self.transpose:
            return np.ascontiguousarray(y.reshape(self.hf_shape[::-1]).T)
        return np.ascontiguousarray(y.reshape(self.hf_shape))


def tensor_maps(config: ModelConfig) -> list[TensorMap]:
    """Every HF tensor of a Seed-OSS checkpoint with `config`, in HF's order."""
    D, F, N, K, H, V = (config.hidden_size, config.intermediate_size, config.num_heads,
                        config.num_kv_heads, config.head_dim, config.vocab_size)
    per_layer: list[tuple[str, str, tuple[int, ...], tuple[int, ...], bool]] = [
        ("input_layernorm.weight", "input_norm.scale", (D,), (D,), False),
        ("self_attn.q_proj.weight", "attn.q_proj.kernel", (N * H, D), (D, N, H), True),
        ("self_attn.k_proj.weight", "attn.k_proj.kernel", (K * H, D), (D, K, H), True),
        ("self_attn.v_proj.weight", "attn.v_proj.kernel", (K * H, D), (D, K, H), True),
        ("self_attn.o_proj.weight", "attn.o_proj.kernel", (D, N * H), (N, H, D), True),
        ("post_attention_layernorm.weight", "post_attn_norm.scale", (D,), (D,), False),
        ("mlp.gate_proj.weight", "mlp.gate_proj.kernel", (F, D), (D, F), True),
        ("mlp.up_proj.weight", "mlp.up_proj.kernel", (F, D), (D, F), True),
        ("mlp.down_proj.weight", "mlp.down_proj.kernel", (D, F), (F, D), True),
    ]
    if config.attention_bias:
        per_layer += [
            ("self_attn.q_proj.bias", "attn.q_proj.bias", (N * H,), (N, H), False),
            ("self_attn.k_proj.bias", "attn.k_proj.bias", (K * H,), (K, H), False),
            ("self_attn.v_proj.bias", "attn.v_proj.bias", (K * H,), (K, H), False),
        ]
    if config.attention_out_bias:
        per_layer.append(("self_attn.o_proj.bias", "attn.o_proj.bias", (D,), (D,), False))
    if config.qk_norm:
        per_layer += [("self_attn.q_norm.weight", "attn.q_norm.scale", (H,), (H,), False),
                      ("self_attn.k_norm.weight", "attn.k_norm.scale", (H,), (H,), False)]
    if config.mlp_bias:
        per_layer += [
            ("mlp.gate_proj.bias", "mlp.gate_proj.bias", (F,), (F,), False),
            ("mlp.up_proj.bias", "mlp.up_proj.bias", (F,), (F,), False),
            ("mlp.down_proj.bias", "mlp.down_proj.bias", (D,), (D,), False),
        ]
    maps = [TensorMap("model.embed_tokens.weight", "embed.embedding", None, (V, D), (V, D), False)]
    for i in range(config.num_layers):
        for hf, ours, hf_shape, shape, t in per_layer:
            maps.append(TensorMap(f"model.layers.{i}.{hf}", f"layers.{ours}", i, hf_shape, shape, t))
    maps.append(TensorMap("model.norm.weight", "final_norm.scale", None, (D,), (D,), False))
    if not config.tie_word_embeddings:
        maps.append(TensorMap("lm_head.weight", "lm_head.kernel", None, (V, D), (D, V), True))
    return maps


def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Our parameter path -> full shape (stacked params with the leading L), from the map."""
    out: dict[str, tuple[int, ...]] = {}
    for m in tensor_maps(config):
        out[m.param] = m.shape if m.layer is None else (config.num_layers, *m.shape)
    return out


# ----------------------------------------------------------------------------------------------
# Checking a checkpoint
# ----------------------------------------------------------------------------------------------


def _listing(names: Sequence[str], limit: int = 8) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_checkpoint(files: CheckpointFiles, config: ModelConfig) -> list[TensorMap]:
    """Validates every tensor header against `config` before any data is read.

    Raises CheckpointFormatError naming missing tensors, unexpected tensors, each mis-shaped
    tensor with both shapes, and non-float tensors with their dtype. Float dtypes (F32, BF16,
    F16, ...) are all accepted; the values are cast to the parameter dtype on load.
    """
    maps = tensor_maps(config)
    expected = {m.hf_name for m in maps}
    present = files.names()
    missing = expected - present
    ignorable = {n for n in present if IGNORED_TENSORS.search(n)}
    if config.tie_word_embeddings:
        ignorable.add("lm_head.weight")  # tied: transformers ignores a stored copy too
    unexpected = present - expected - ignorable
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {_listing(unexpected)}")
    for m in maps:
        if m.hf_name not in present:
            continue
        info = files[m.hf_name]
        if info.shape != m.hf_shape:
            problems.append(
                f"tensor {m.hf_name}: checkpoint shape {list(info.shape)} != expected "
                f"{list(m.hf_shape)} (from config.json)"
            )
        if info.dtype not in FLOAT_CODES:
            problems.append(
                f"tensor {m.hf_name}: dtype {info.dtype} (shape {list(info.shape)}) is not a float "
                f"dtype; expected one of {list(FLOAT_CODES)} (shape {list(m.hf_shape)})"
            )
    if problems:
        raise CheckpointFormatError(
            f"{files.directory} does not match its config.json "
            f"({config.num_layers} layers, D={config.hidden_size}, N={config.num_heads}, "
            f"K={config.num_kv_heads}, H={config.head_dim}, F={config.intermediate_size}, "
            f"V={config.vocab_size}):\n  " + "\n  ".join(problems)
        )
    return maps


def checkpoint_dtype(files: CheckpointFiles) -> str:
    """The parameter dtype name a checkpoint is stored in (that of its embedding)."""
    code = files["model.embed_tokens.weight"].dtype
    name = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}.get(code, "float32")
    assert name in MODEL_DTYPES
    return name


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def _full_spec(sharding: NamedSharding, ndim: int) -> tuple:
    spec = tuple(sharding.spec)
    return spec + (None,) * (ndim - len(spec))


@functools.lru_cache(maxsize=None)
def _layer_setter(sharding: NamedSharding) -> Callable:
    """jit(buf [L, ...], x [...], i) -> buf with buf[i] = x, in place (buf donated)."""

    def set_layer(buf, x, i):
        return jax.lax.dynamic_update_index_in_dim(buf, x[None], i, 0)

    return jax.jit(set_layer, donate_argnums=0, out_shardings=sharding)


@functools.lru_cache(maxsize=None)
def _zeros(shape: tuple[int, ...], dtype: np.dtype, sharding: NamedSharding) -> Callable:
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


def _to_device(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Host array -> global array; each device receives only its slice."""
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def load_hf_params(
    directory: str | Path,
    config: ModelConfig,
    shardings: dict[str, NamedSharding],
    *,
    files: CheckpointFiles | None = None,
    progress: bool = False,
) -> dict[str, jax.Array]:
    """Loads the HF checkpoint in `directory` into {our param path: sharded jax.Array}.

    config:    the model config (its `param_dtype` is the dtype of the returned arrays).
    shardings: our param path -> target NamedSharding (e.g. from `sharding.state_shardings`).
    files:     the already-opened checkpoint, if the caller has it.
    """
    files = files or CheckpointFiles(directory)
    maps = check_checkpoint(files, config)
    dtype = np.dtype(config.param_dtype)
    shapes = param_shapes(config)
    unknown = sorted(set(shapes) ^ set(shardings))
    if unknown:
        raise ValueError(f"shardings and the HF name map disagree on parameters {unknown}")
    params: dict[str, jax.Array] = {}
    bar = _progress(len(maps), "load", progress)
    for m in maps:
        host = m.to_ours(read_tensor(files[m.hf_name])).astype(dtype, copy=False)  # one tensor on host
        sharding = shardings[m.param]
        if m.layer is None:
            params[m.param] = _to_device(host, sharding)
        else:
            if m.param not in params:
                params[m.param] = _zeros(shapes[m.param], dtype, sharding)()
            layer_sharding = NamedSharding(sharding.mesh, PartitionSpec(*_full_spec(sharding, host.ndim + 1)[1:]))
            params[m.param] = _layer_setter(sharding)(
                params[m.param], _to_device(host, layer_sharding), np.int32(m.layer)
            )
        del host
        bar.update(1)
    bar.close()
    return params


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="tensor", disable=not enabled)


def model_init_fn(config: ModelConfig, seed: int = 0) -> Callable[[], nnx.Module]:
    """`() -> SeedOssForCausalLM(config)`, for abstract construction and sharded init."""
    from ppp_jax.model.transformer import SeedOssForCausalLM

    return lambda: SeedOssForCausalLM(config, rngs=nnx.Rngs(seed))


def load_hf(
    directory: str | Path,
    *,
    mesh: Mesh | None = None,
    rules: Sequence[Rule] = FSDP_TP_RULES,
    param_dtype: str | None = None,
    dtype: str | None = None,
    progress: bool = False,
    **config_overrides,
):
    """Loads an HF Seed-OSS directory into a `SeedOssForCausalLM` sharded on `mesh`.

    mesh:        target mesh (default: a 1x1x1 mesh on the first device).
    param_dtype: parameter dtype (default: the checkpoint's, so export round-trips bit-exactly).
    dtype:       compute dtype (default: param_dtype).
    config_overrides: further ModelConfig fields (e.g. remat="full", attention_impl="cudnn").
    Returns (model, config).
    """
    directory = Path(directory)
    config = ModelConfig.from_hf_json(directory)  # refuses non-seed_oss architectures by name
    files = CheckpointFiles(directory)
    check_checkpoint(files, config)
    param_dtype = param_dtype or checkpoint_dtype(files)
    config = config.replace(param_dtype=param_dtype, dtype=dtype or param_dtype, **config_overrides)

    def load(abs_params: nnx.State, mesh: Mesh) -> nnx.State:
        shardings = {path_name(p): v.get_value()
                     for p, v in nnx.to_flat_state(state_shardings(abs_params, mesh, rules))}
        _check_against_model(abs_params, config)
        params = load_hf_params(directory, config, shardings, files=files, progress=progress)
        return fill_state(abs_params, params)

    return build_model(config, mesh, load), config


def build_model(config: ModelConfig, mesh: Mesh | None,
                load_params: Callable[[nnx.State, Mesh], nnx.State]):
    """A `SeedOssForCausalLM(config)` on `mesh` (default: a 1x1x1 mesh on the first device) whose
    Param state is `load_params(abstract Param state, mesh)`; no parameter is initialized first.
    The other state (RoPE tables, ...) is materialized on `mesh`. Shared by `load_hf` and
    `checkpoint.load_checkpoint`."""
    if mesh is None:
        mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    init_fn = model_init_fn(config)
    graphdef, abs_params, abs_rest = split_abstract(init_fn)
    params = load_params(abs_params, mesh)
    return nnx.merge(graphdef, params, materialize_rest(init_fn, abs_rest, mesh))


def _check_against_model(abs_params: nnx.State, config: ModelConfig) -> None:
    """The HF name map must describe exactly the model's parameters (names and shapes)."""
    model = {path_name(p): tuple(v.get_value().shape) for p, v in nnx.to_flat_state(abs_params)}
    ours = param_shapes(config)
    if model != ours:
        diff = sorted(
            f"{k}: model {model.get(k)} vs map {ours.get(k)}"
            for k in set(model) | set(ours)
            if model.get(k) != ours.get(k)
        )
        raise AssertionError(f"the HF name map and SeedOssForCausalLM disagree: {diff}")


def fill_state(abstract: nnx.State, arrays: Mapping[str, jax.Array]) -> nnx.State:
    """`abstract` (an nnx State of abstract Variables) with each value replaced by
    `arrays[dotted path]`."""

    def fill(path, var):
        return var.replace(arrays[path_name(path)])

    return jax.tree_util.tree_map_with_path(fill, abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------


def parse_size(size: int | str) -> int:
    """`5 * 2**30`, `"5GB"`, `"500MB"`, `"64KiB"` -> bytes (GB/MB/KB are powers of 1000 like
    transformers', GiB/MiB/KiB powers of 1024)."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", size, re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot parse size {size!r}; use e.g. 5GB, 500MB or a byte count")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    return int(float(m.group(1)) * scale)


@jax.jit
def _take_layer(x: jax.Array, i: jax.Array) -> jax.Array:
    return jax.lax.dynamic_index_in_dim(x, i, 0, keepdims=False)


def params_of(model_or_params) -> dict[str, jax.Array]:
    """{our dotted param path: array} from a model, an nnx.State of params (Variables or plain
    arrays), a nested mapping like `nnx.to_pure_dict(state)`, or an already flat mapping."""
    x = model_or_params
    if isinstance(x, nnx.Module):
        x = nnx.state(x, nnx.Param)
    if isinstance(x, nnx.State):
        return {path_name(p): (v.get_value() if isinstance(v, nnx.Variable) else v)
                for p, v in nnx.to_flat_state(x)}
    if not isinstance(x, Mapping):
        raise TypeError(f"expected a model, an nnx.State or a mapping of params, got {type(x).__name__}")
    out: dict[str, jax.Array] = {}
    for key, value in x.items():
        if isinstance(value, (Mapping, nnx.State)):
            out.update({f"{key}.{k}": v for k, v in params_of(value).items()})
        else:
            out[str(key)] = value.get_value() if isinstance(value, nnx.Variable) else value
    return out


def save_hf(
    model_or_params,
    config: ModelConfig,
    out_dir: str | Path,
    *,
    dtype: str | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    progress: bool = False,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Writes a Hugging Face Seed-OSS checkpoint (`config.json` + safetensors) to `out_dir`.

    model_or_params: a SeedOssForCausalLM, its Param state, or {param path: array} (jax or numpy).
    dtype:           stored dtype (default: the parameters' own, so the round trip is bit-exact).
    max_shard_size:  bytes or "5GB"-style; above it the tensors are split over several files
                     listed by `model.safetensors.index.json`.
    extra:           writes more files (e.g. the tokenizer) into the directory before it appears.
    The directory appears atomically: written under a temporary name, then renamed. An existing
    `out_dir` is refused (unless `overwrite`) before any tensor is converted.
    """
    if Path(out_dir).exists() and not overwrite:
        raise FileExistsError(f"{Path(out_dir).absolute()} already exists; pass overwrite=True "
                              "(ppp convert: --overwrite) to replace it")
    params = params_of(model_or_params)
    maps = tensor_maps(config)
    shapes = param_shapes(config)
    got = {k: tuple(v.shape) for k, v in params.items()}
    if got != shapes:
        diff = sorted(f"{k}: have {got.get(k)}, config wants {shapes.get(k)}"
                      for k in set(got) | set(shapes) if got.get(k) != shapes.get(k))
        raise ValueError(f"parameters do not match the config: {diff}")
    for v in params.values():
        # Host (numpy) arrays are always addressable; sharded jax arrays must be local.
        if not getattr(v, "is_fully_addressable", True):
            raise ValueError("save_hf needs every shard addressable from this process (single-host)")
    out_dtype = np.dtype(dtype) if dtype else np.dtype(params["embed.embedding"].dtype)
    code = dtype_code(out_dtype)
    by_name = {m.hf_name: m for m in maps}
    entries = [(m.hf_name, code, m.hf_shape) for m in maps]
    shards = shard_entries(entries, parse_size(max_shard_size))
    names = shard_file_names(len(shards))
    bar = _progress(len(entries), "export", progress)

    def produce(name: str) -> np.ndarray:
        m = by_name[name]
        x = params[m.param]
        if m.layer is not None:
            x = _take_layer(x, np.int32(m.layer))
        return m.to_hf(np.asarray(x)).astype(out_dtype)

    hf_config = config.to_hf_dict()
    hf_config["dtype"] = out_dtype.name
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        total = 0
        weight_map = {}
        for fname, shard in zip(names, shards):
            total += write_safetensors(tmp / fname, shard, produce, on_tensor=lambda _: bar.update(1))
            weight_map.update({name: fname for name, _, _ in shard})
        if len(shards) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
        if extra is not None:
            extra(tmp)
    bar.close()
    return Path(out_dir)


def iter_hf_tensors(directory: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    """(name, memory-mapped array) for every tensor of a checkpoint directory, in name order."""
    files = CheckpointFiles(directory)
    for name in sorted(files.names()):
        yield name, read_tensor(files[name])
