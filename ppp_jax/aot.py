"""Ahead-of-time compilation for named TPU topologies, from any machine (shapes only, no weights).

With `libtpu` importable, `jax.experimental.topologies.get_topology_desc("v5p:4x4x4")` returns
the devices of a TPU slice that does not exist here; `jit(f).lower(*abstract).compile()` then
runs the real TPU compiler for them, and the executable reports per-chip memory
(`memory_analysis()`) and per-chip FLOPs (`cost_analysis()`). Nothing is allocated: the model
is built with `nnx.eval_shape`, every argument is a `jax.ShapeDtypeStruct` carrying its
`NamedSharding`. (MaxText's `train_compile.py` does the same for its trainer.)

What is compiled (`CompileSpec.steps`):

- "train":   one optimizer update of `ppp_jax.train_step` (micro-batch scan, forward, chunked
             log-probs, clipped policy-gradient objective, backward, AdamW) on a [B, T] batch.
- "prefill": the paged engine's chunked prefill (`sampling.runner.ModelRunner`) of T_p-token
             chunks into the K/V page pools, one engine replica (`ppp_jax.aot_engine`).
- "decode":  the paged engine's decode block (`decode_steps` steps with sampling) over its slots.

Units: sizes in bytes, printed in GiB (2**30). Chip HBM and peak FLOP/s are the published
per-chip figures in `CHIPS`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from ppp_jax.model import sharding as shd
from ppp_jax.model import splash
from ppp_jax.model.config import ModelConfig, seed_oss_36b, tiny
from ppp_jax.rl_config import RLConfig

GiB = 2**30


class AotError(RuntimeError):
    """AOT compilation cannot run (no libtpu, unknown topology, bad mesh) — the message says why."""


class DoesNotFit(AotError):
    """The compiled step needs more memory per chip than the chip has."""


# ----------------------------------------------------------------------------------------------
# Chips
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    """Published per-chip figures of one TPU generation."""

    name: str  # our short name, as in topology strings ("v5p")
    hbm_gib: float  # HBM capacity per chip, as published
    peak_bf16_flops: float  # peak dense bf16 FLOP/s per chip
    hbm_bytes_per_s: float  # HBM bandwidth per chip
    source: str
    usable_gib: float | None = None  # what the TPU compiler says a program may use (see below)

    @property
    def limit_gib(self) -> float:
        """The HBM a step is checked against: the compiler's usable figure when known."""
        return self.usable_gib if self.usable_gib is not None else self.hbm_gib


# Sources (Cloud TPU system-architecture pages, read 2026-11):
#   v4  https://cloud.google.com/tpu/docs/v4   "32 GiB HBM2, 1200 GBps", "275 teraflops (bf16)"
#   v5e https://cloud.google.com/tpu/docs/v5e  "HBM2 16 GB, 819 GBps", "197 TFLOPs (bf16)"
#   v5p https://cloud.google.com/tpu/docs/v5p  "HBM2e 95 GB, 2765 GBps", "459 TFLOPs (bf16)"
#   v6e https://cloud.google.com/tpu/docs/v6e  "32 GB" HBM, "1638 GBps", "918 TFLOPs (bf16)"
# The pages write "GB". `usable_gib` is the "available HBM" the TPU compiler of libtpu 0.0.42.1
# states when it refuses a program (RESOURCE_EXHAUSTED: "... exceeds available HBM (95.74G)"),
# in XLA's 1024-based units: v5p 95.74, v6e 31.25, v5e 15.75 GiB (seen in bench/results and
# tests/ppp_jax/test_aot.py); not observed for v4, so v4 is checked against its published 32 GiB.
CHIPS: dict[str, ChipSpec] = {
    "v4": ChipSpec("v4", 32.0, 275e12, 1200e9, "https://cloud.google.com/tpu/docs/v4"),
    "v5e": ChipSpec("v5e", 16.0, 197e12, 819e9, "https://cloud.google.com/tpu/docs/v5e", 15.75),
    "v5p": ChipSpec("v5p", 95.0, 459e12, 2765e9, "https://cloud.google.com/tpu/docs/v5p", 95.74),
    "v6e": ChipSpec("v6e", 32.0, 918e12, 1638e9, "https://cloud.google.com/tpu/docs/v6e", 31.25),
}
# A step using more than this fraction of HBM is reported as fitting but "tight".
TIGHT_FRACTION = 0.95


def chip_of(topology: str) -> ChipSpec:
    """"v5p:4x4x4" -> CHIPS["v5p"]."""
    gen = topology.split(":", 1)[0].strip().lower()
    if gen not in CHIPS:
        raise AotError(f"unknown TPU generation {gen!r} in topology {topology!r}; known: "
                       f"{sorted(CHIPS)} (e.g. 'v5p:4x4x4', 'v6e:16x16')")
    return CHIPS[gen]


def topology_chips(topology: str) -> int:
    """Number of chips of a topology string: "v5p:4x4x8" -> 128."""
    try:
        dims = topology.split(":", 1)[1]
        return math.prod(int(d) for d in dims.lower().split("x"))
    except (IndexError, ValueError):
        raise AotError(f"topology {topology!r} must look like 'v5p:4x4x4' or 'v6e:16x16'") from None


def libtpu_available() -> tuple[bool, str]:
    """(True, "") if libtpu can be imported, else (False, why) — for skips and error messages."""
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        return False, f"libtpu is not installed ({e}); `pip install 'ppp-jax[test]'` or " \
                      f"`pip install libtpu==0.0.42.1` (the version jax[tpu]==0.10.2 pins)"
    return True, ""


def quiet_libtpu_env() -> None:
    """Environment for loading libtpu on a machine that is not a TPU VM. Effective only before
    libtpu is first loaded in this process (the `ppp compile` command calls it before importing
    jax).

    - ALLOW_MULTIPLE_LIBTPU_LOAD=1: libtpu otherwise takes an exclusive lock on
      /tmp/libtpu_lockfile, and any other JAX process on the machine that probed the TPU backend
      (every process, once libtpu is installed, unless JAX_PLATFORMS=cpu) makes AOT fail with
      "Internal error when accessing libtpu multi-process lockfile". Compiling never touches a
      chip, so sharing is safe.
    - TPU_SKIP_MDS_QUERY=1: skip the GCE metadata-server probe.
    """
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")


def tpu_devices(topology: str) -> list[jax.Device]:
    """The devices of a named TPU slice, usable as compile targets on this (CPU) machine.

    One device per chip on v5p/v5e/v6e (megacore on v5p); the list is in the order
    `jax.make_mesh` expects.
    """
    ok, why = libtpu_available()
    if not ok:
        raise AotError(f"AOT compilation for TPU needs libtpu: {why}")
    chip_of(topology)
    topology_chips(topology)
    quiet_libtpu_env()
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology)
    except Exception as e:  # XlaRuntimeError, ValueError, ... depending on the failure
        raise AotError(f"cannot describe TPU topology {topology!r}: {e}") from e
    return list(desc.devices)


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------

ModelPreset = Literal["seed_oss_36b", "tiny"]
StepName = Literal["train", "prefill", "decode"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Which model to compile: a named preset plus the numerics knobs that change the program."""

    preset: ModelPreset = "seed_oss_36b"
    param_dtype: str = "float32"  # master weights (AdamW updates them in this dtype)
    dtype: str = "bfloat16"  # compute dtype
    remat: Literal["none", "full", "save_dots"] = "full"
    attention_impl: Literal["xla", "cudnn", "splash"] = "splash"  # splash: Pallas, TPU
    sizes: dict[str, int | bool] = dataclasses.field(default_factory=dict)  # e.g. {num_layers: 4}

    def build(self) -> ModelConfig:
        make = {"seed_oss_36b": seed_oss_36b, "tiny": tiny}[self.preset]
        return make(param_dtype=self.param_dtype, dtype=self.dtype, remat=self.remat,
                    attention_impl=self.attention_impl, **self.sizes)


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """The paged rollout engine (`ppp_jax.sampling`) on the same chips: its compile-time shapes.

    The engine is one program per replica: weights in `dtype` sharded over `tensor` by
    `SAMPLING_RULES` (no FSDP), the K/V page pools' kv heads over `tensor`, slots not sharded.
    The `data` x `fsdp` devices of `mesh` are independent replicas, each running its own
    `batch / replicas` slots (see `ppp_jax.aot_engine`). Sizes below are for the whole slice
    unless they say "per replica"; they map onto `sampling.EngineConfig` as noted.
    """

    batch: int = 128  # B_e, slots decoding together on the slice (num_slots = batch / replicas)
    prefill_batch: int = 16  # prompt rows prefilled together on the slice (prefill rows bucket
    #                          of a replica = prefill_batch / replicas)
    prefill_len: int = 2048  # T_p, prefill chunk (the largest prefill_chunks bucket)
    cache_len: int = 40960  # max_seq_len: context + generation of one sequence (8192 + 32768)
    dtype: str = "bfloat16"  # engine weights and KV pool (kv_dtype)
    mesh: shd.MeshConfig = shd.MeshConfig(shape=(-1, 1, 4))  # data x fsdp x tensor
    page_size: int = 64  # tokens per KV page (the 36B `sampler.page_size`)
    num_pages: int | None = None  # pool pages per replica, page 0 reserved; None: 1 + num_slots x
    #                               ceil(cache_len / page_size), every slot at full length
    decode_steps: int = 16  # decode steps per compiled decode block (one host round trip)
    block_pages: int = 16  # pages per step of the paged-attention loop (x page_size keys)


@dataclasses.dataclass(frozen=True)
class CompileSpec:
    """The shapes of the compiled steps and the target slice."""

    topology: str = "v5p:4x4x4"
    steps: tuple[StepName, ...] = ("train",)
    batch: int = 64  # B, sequences per optimizer update (split into rl.num_micro_batches)
    seq_len: int = 40960  # T, tokens per sequence (prompt 8192 + response 32768 for Func-Loc)


@dataclasses.dataclass(frozen=True)
class CompileConfig:
    """What `ppp compile` reads from a run config: the sections `model`, `sharding`, `compile`,
    `engine` and `rl`. Other top-level sections of the same YAML are ignored."""

    model: ModelSpec = ModelSpec()
    sharding: shd.ShardingConfig = shd.ShardingConfig()
    compile: CompileSpec = CompileSpec()
    engine: EngineSpec = EngineSpec()
    rl: RLConfig = RLConfig()  # the trainer's section: micro-batches, log-prob chunk, optimizer


SECTIONS = tuple(f.name for f in dataclasses.fields(CompileConfig))


def load_compile_config(path: str, overrides: Sequence[str] = ()) -> CompileConfig:
    """Reads the `CompileConfig` sections of a YAML run config (with `base:` files and
    `key.sub=value` overrides); unknown keys inside those sections are ConfigErrors."""
    from ppp_jax import config as cfg

    data = cfg._read_yaml(Path(path))
    cfg.apply_overrides(data, list(overrides))
    picked = {k: v for k, v in data.items() if k in SECTIONS}
    try:
        return cfg.from_dict(CompileConfig, picked)
    except cfg.ConfigError as e:
        raise cfg.ConfigError(f"{path}: {e}") from None


def parse_mesh(text: str) -> shd.MeshConfig:
    """"data=1,fsdp=64,tensor=1" -> MeshConfig (axes in the order given; missing required ones
    get size 1). A size may be -1 (all remaining devices). "data=1,fsdp=16,sequence=4,tensor=1"
    adds the optional `sequence` axis: each sequence's tokens split 4 ways (context
    parallelism, see `ppp_jax.model.sharding`)."""
    sizes: dict[str, int] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if not name.strip() or not value.strip():
            raise AotError(f"--mesh {text!r}: each part must look like axis=size")
        try:
            sizes[name.strip()] = int(value)
        except ValueError:
            raise AotError(f"--mesh {text!r}: size of {name.strip()!r} is not an int") from None
    axes = tuple(sizes) + tuple(a for a in shd.REQUIRED_MESH_AXES if a not in sizes)
    return shd.MeshConfig(axes=axes, shape=tuple(sizes.get(a, 1) for a in axes))


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepReport:
    """What the compiler says about one step, per device (= per chip here)."""

    step: str
    topology: str
    mesh: dict[str, int]
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    peak_bytes: int  # argument + output - alias + temp (what MaxText's train_compile prints)
    compiler_peak_bytes: int  # memory_analysis().peak_memory_in_bytes (0 if not reported)
    generated_code_bytes: int
    flops: float  # cost_analysis()["flops"] of the per-device program
    model_flops: float  # analytic 6·N·tokens (+ attention) per device, for MFU estimates
    tokens: int  # tokens processed by the whole slice in this step
    lower_s: float
    compile_s: float
    hbm_bytes: float  # per device
    compiler_error: str = ""  # set when the TPU compiler itself refused (out of HBM)
    note: str = ""  # how the step is laid out on the slice (e.g. engine replicas), if not obvious

    @property
    def fits(self) -> bool:
        return not self.compiler_error and self.peak_bytes <= self.hbm_bytes

    @property
    def tight(self) -> bool:
        return self.fits and self.peak_bytes > TIGHT_FRACTION * self.hbm_bytes

    def step_seconds(self, peak_flops: float, mfu: float) -> float:
        """Estimated step time at `mfu` of `peak_flops` per device, from the analytic FLOPs."""
        return self.model_flops / (mfu * peak_flops)

    def summary(self) -> str:
        g = lambda b: f"{b / GiB:8.2f} GiB"  # noqa: E731
        head = f"[{self.step}] {self.topology} mesh {self.mesh}"
        if self.note:
            head += f"\n  layout       {self.note}"
        if self.compiler_error:
            return (f"{head}\n  DOES NOT FIT: the TPU "
                    f"compiler ran out of HBM after {self.compile_s:.1f} s: {self.compiler_error}")
        verdict = "FITS" if self.fits else "DOES NOT FIT"
        if self.tight:
            verdict += f" (tight: > {TIGHT_FRACTION:.0%} of HBM)"
        lines = [
            head,
            f"  arguments    {g(self.argument_bytes)}   (this chip's shards: weights, optimizer "
            f"state or KV cache, batch)",
            f"  outputs      {g(self.output_bytes)}   (of which aliased to donated args "
            f"{self.alias_bytes / GiB:.2f} GiB)",
            f"  temporaries  {g(self.temp_bytes)}",
            f"  total        {g(self.peak_bytes)}   of {self.hbm_bytes / GiB:.2f} GiB HBM per chip "
            f"({self.peak_bytes / self.hbm_bytes:.0%})  -> {verdict}",
            f"  (compiler's peak_memory_in_bytes: {self.compiler_peak_bytes / GiB:.2f} GiB)",
            f"  FLOPs/chip   {self.flops:.3e} (compiler)   {self.model_flops:.3e} (analytic model)",
            f"  tokens/step  {self.tokens}",
            f"  compile      {self.lower_s:.1f} s lower + {self.compile_s:.1f} s compile",
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(fits=self.fits, tight=self.tight)
        return d


def report_of(compiled, *, step: str, topology: str, mesh: jax.sharding.Mesh, model_flops: float,
              tokens: int, lower_s: float, compile_s: float) -> StepReport:
    """Reads memory_analysis / cost_analysis of a compiled executable into a StepReport."""
    mem = compiled.memory_analysis()
    if mem is None:
        raise AotError("the compiler returned no memory analysis for this executable")
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax returned one dict per program
        cost = cost[0] if cost else {}
    arg, out = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    alias, temp = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes)
    # The sum is the conservative figure: the compiler's own peak has come out below the temp
    # size alone (e.g. with Pallas kernels), so it is reported but not used for the verdict.
    peak = arg + out - alias + temp
    compiler_peak = int(getattr(mem, "peak_memory_in_bytes", 0) or 0)
    hbm = hbm_per_device(topology, mesh.devices.size)
    return StepReport(
        step=step, topology=topology, mesh={str(k): int(v) for k, v in mesh.shape.items()},
        argument_bytes=arg, output_bytes=out, alias_bytes=alias, temp_bytes=temp, peak_bytes=peak,
        compiler_peak_bytes=compiler_peak,
        generated_code_bytes=int(mem.generated_code_size_in_bytes),
        flops=float((cost or {}).get("flops", float("nan"))), model_flops=model_flops,
        tokens=tokens, lower_s=lower_s, compile_s=compile_s, hbm_bytes=hbm)


_OOM = re.compile(r"required for [^(]*\(([\d.]+)([KMGT]?)\) exceeds available HBM")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}  # XLA prints 1024-based units


def oom_bytes(message: str) -> int:
    """The memory a TPU compiler out-of-memory message says the program needs (0 if absent):
    "... required for HLO temporaries (1.25T) exceeds available HBM (95.74G)" -> 1.25 * 2**40."""
    m = _OOM.search(message)
    return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else 0


def compile_lowered(lowered):
    """`lowered.compile()`, or — when the TPU compiler itself refuses because the program needs
    more HBM than the chip has — a placeholder StepReport carrying the compiler's message and the
    memory it asked for (the caller fills in step, topology and timings)."""
    try:
        return lowered.compile()
    except Exception as e:  # JaxRuntimeError: RESOURCE_EXHAUSTED
        msg = str(e)
        if "RESOURCE_EXHAUSTED" not in msg and "Ran out of memory" not in msg:
            raise
        line = next((l for l in msg.splitlines() if "Ran out of memory" in l), msg.splitlines()[0])
        need = oom_bytes(msg)
        return StepReport(step="", topology="", mesh={}, argument_bytes=0, output_bytes=0,
                          alias_bytes=0, temp_bytes=need, peak_bytes=need, compiler_peak_bytes=0,
                          generated_code_bytes=0, flops=float("nan"), model_flops=float("nan"),
                          tokens=0, lower_s=0.0, compile_s=0.0, hbm_bytes=0.0,
                          compiler_error=line.strip())


def hbm_per_device(topology: str, devices: int) -> float:
    """Usable HBM bytes per device of a slice (a device is a chip on v5e/v5p/v6e)."""
    return chip_of(topology).limit_gib * GiB * topology_chips(topology) / max(devices, 1)


def train_model_flops(cfg: ModelConfig, batch: int, seq_len: int, devices: int) -> float:
    """Analytic FLOPs per device of one train update (MaxText's convention, no remat recompute):
    6·N_matmul·tokens for the weight matmuls (forward 2, backward 4), plus causal attention
    6·2·L·N·H·T²/2 per sequence (QKᵀ and PV, half the square under the causal mask)."""
    d, f, n, k, h, v, L = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads,
                           cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size, cfg.num_layers)
    matmul_params = L * (d * n * h + 2 * d * k * h + n * h * d + 3 * d * f) + d * v  # lm_head
    tokens = batch * seq_len
    dense = 6.0 * matmul_params * tokens
    attn = 6.0 * 2 * L * n * h * seq_len * seq_len / 2 * batch
    return (dense + attn) / devices


def forward_model_flops(cfg: ModelConfig, batch: int, new_tokens: int, context: int,
                        devices: int) -> float:
    """Analytic forward FLOPs per device for `new_tokens` per sequence attending to `context`
    cached positions on average (prefill: context ≈ T/2; decode: context = cache fill)."""
    d, f, n, k, h, v, L = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads,
                           cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size, cfg.num_layers)
    matmul_params = L * (d * n * h + 2 * d * k * h + n * h * d + 3 * d * f) + d * v
    tokens = batch * new_tokens
    return (2.0 * matmul_params * tokens + 2 * 2 * L * n * h * context * tokens) / devices


# ----------------------------------------------------------------------------------------------
# Abstract state
# ----------------------------------------------------------------------------------------------


def with_shardings(tree, shardings):
    """ShapeDtypeStructs of `tree` carrying the matching leaf of `shardings`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


# ----------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------


def make_mesh_for(devices: Sequence[jax.Device], mesh_cfg: shd.MeshConfig) -> jax.sharding.Mesh:
    """`model.sharding.make_mesh` over every device of a TPU slice (a mesh must use the whole
    slice: the device-mesh layout of a TPU topology is defined only for all of its chips).
    Falls back to splitting physical torus axes when a mesh axis is not a product of them."""
    sizes = dict(zip(mesh_cfg.axes, mesh_cfg.shape))
    try:
        shape = mesh_cfg.resolved_shape(len(devices))
    except shd.ShardingError as e:
        raise AotError(f"mesh {sizes} does not fit the {len(devices)} chips: {e}") from None
    if math.prod(shape) != len(devices):
        raise AotError(f"mesh {sizes} uses {math.prod(shape)} devices but the slice has "
                       f"{len(devices)}; the axis sizes must multiply to {len(devices)} "
                       f"(or give one axis -1)")
    try:
        return shd.make_mesh(mesh_cfg, devices=devices)
    except Exception as first:  # mesh_utils raises AssertionError/ValueError for bad layouts
        # An axis that is not a product of whole physical axes (8-way on a 4x4x4 torus, 4-way on
        # 16x16) needs physical axes split, as MaxText's allow_split_physical_axes does.
        try:
            from jax.experimental import mesh_utils

            grid = mesh_utils.create_device_mesh(shape, devices=list(devices),
                                                 allow_split_physical_axes=True)
        except Exception:
            raise AotError(f"cannot lay mesh {sizes} out on the slice: {first}") from None
        return jax.sharding.Mesh(grid, mesh_cfg.axes,
                                 axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


def abstract_token_batch(batch: int, seq_len: int, mesh) -> Any:
    """The `TokenBatch` of one update as ShapeDtypeStructs, rows over (data, fsdp)."""
    from ppp_jax.batch import TokenBatch
    from ppp_jax.train_step import batch_sharding

    sh = batch_sharding(mesh)
    i32 = lambda: jax.ShapeDtypeStruct((batch, seq_len), jnp.int32, sharding=sh)  # noqa: E731
    f32 = lambda: jax.ShapeDtypeStruct((batch, seq_len), jnp.float32, sharding=sh)  # noqa: E731
    return TokenBatch(tokens=i32(), positions=i32(), segment_ids=i32(), targets=i32(),
                      loss_mask=f32(), advantages=f32(), sampler_logprobs=f32(),
                      old_logprobs=f32())


def compile_train(cc: CompileConfig, devices: Sequence[jax.Device]) -> StepReport:
    """AOT-compiles one optimizer update of `ppp_jax.train_step` (the real PPP step: micro-batch
    scan, chunked log-probs, clipped objective, AdamW) for `devices`."""
    from ppp_jax import train_step as ts
    from ppp_jax.optim import make_optimizer

    spec, rl = cc.compile, cc.rl
    mcfg = cc.model.build()
    mesh = make_mesh_for(devices, cc.sharding.mesh)
    rules = cc.sharding.rules
    rows = math.prod(mesh.shape[a] for a in ts.BATCH_AXES) * rl.num_micro_batches
    if spec.batch % rows:
        raise AotError(f"compile.batch={spec.batch} must be a multiple of data x fsdp x "
                       f"rl.num_micro_batches = {rows} (mesh {dict(mesh.shape)})")
    abstract = shd.abstract_model(lambda: _model(mcfg))
    graphdef, params_abs, rest = nnx.split(abstract, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise AotError("the model holds non-Param state; the train step updates only nnx.Param")
    try:
        param_sh = shd.state_shardings(params_abs, mesh, rules)
    except shd.ShardingError as e:
        raise AotError(f"sharding rules do not fit the model on mesh {dict(mesh.shape)}: {e}") from None
    optimizer = make_optimizer(rl.optim)
    state_abs = jax.eval_shape(lambda p: ts.init_train_state(p, optimizer), params_abs)
    state_sh = ts.train_state_shardings(state_abs, param_sh, optimizer, mesh)
    state = with_shardings(state_abs, state_sh)
    batch = abstract_token_batch(spec.batch, spec.seq_len, mesh)
    jitted = ts.make_train_step(graphdef, rl, optimizer, mesh=mesh)
    # Re-jit the step's Python function with the state's shardings pinned on the way out too, so
    # the compiler cannot pick another layout for the new params (and aliasing is exact).
    fn = getattr(jitted, "__wrapped__", None)
    if fn is not None:
        jitted = jax.jit(fn, out_shardings=(state_sh, None), donate_argnums=(0,))
    with shd.using_mesh(mesh, rules), splash.tpu_target():
        t0 = time.perf_counter()
        lowered = jitted.lower(state, batch)
        t1 = time.perf_counter()
        compiled = compile_lowered(lowered)
        t2 = time.perf_counter()
    flops = train_model_flops(mcfg, spec.batch, spec.seq_len, len(devices))
    if isinstance(compiled, StepReport):
        return dataclasses.replace(compiled, step="train", topology=spec.topology,
                                   mesh={str(k): int(v) for k, v in mesh.shape.items()},
                                   hbm_bytes=hbm_per_device(spec.topology, len(devices)),
                                   model_flops=flops, tokens=spec.batch * spec.seq_len,
                                   lower_s=t1 - t0, compile_s=t2 - t1)
    return report_of(compiled, step="train", topology=spec.topology, mesh=mesh,
                     model_flops=flops, tokens=spec.batch * spec.seq_len, lower_s=t1 - t0,
                     compile_s=t2 - t1)


def _model(cfg: ModelConfig):
    from ppp_jax.model.transformer import SeedOssForCausalLM

    return SeedOssForCausalLM(cfg, rngs=nnx.Rngs(0))


def compile_steps(cc: CompileConfig, devices: Sequence[jax.Device] | None = None) -> list[StepReport]:
    """Compiles every step named in `cc.compile.steps` for the configured topology."""
    devices = tpu_devices(cc.compile.topology) if devices is None else devices
    reports = []
    for name in cc.compile.steps:
        if name == "train":
            reports.append(compile_train(cc, devices))
        else:
            from ppp_jax import aot_engine

            reports.append(aot_engine.compile_engine_step(cc, devices, name))
    return reports


def check_fits(reports: Sequence[StepReport]) -> None:
    """Raises DoesNotFit naming every step that needs more HBM per chip than the chip has."""
    bad = [r for r in reports if not r.fits]
    if bad:
        chip = chip_of(bad[0].topology)
        parts = [f"{r.step} needs {'at least ' if r.compiler_error else ''}"
                 f"{r.peak_bytes / GiB:.2f} GiB per chip"
                 + (" (the TPU compiler ran out of HBM)" if r.compiler_error else "") for r in bad]
        raise DoesNotFit(f"does not fit: {'; '.join(parts)}, {chip.name} has "
                         f"{chip.limit_gib:g} GiB usable HBM per chip ({bad[0].topology}, mesh "
                         f"{bad[0].mesh}); try more chips, a larger fsdp/tensor axis, remat=full, "
                         f"or a smaller batch / seq_len")
