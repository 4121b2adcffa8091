"""What one AOT-compiled step needs per chip (`StepReport`), read from the executable or from
the TPU compiler's out-of-memory message, and the fit check over a set of steps."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import jax

from ppp_jax.scale.chips import TIGHT_FRACTION, AotError, DoesNotFit, GiB, chip_of, hbm_per_device


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
    # per-chip bytes of the arguments that stay resident between calls, by kind (train:
    # params / optimizer; engine: weights / kv_pools), for the iteration check (scale/iteration.py)
    resident_bytes: dict[str, int] = dataclasses.field(default_factory=dict)
    lowered_only: bool = False  # `ppp compile --dry-run`: traced and laid out, not compiled

    @property
    def fits(self) -> bool:
        return (not self.lowered_only and not self.compiler_error
                and self.peak_bytes <= self.hbm_bytes)

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
        if self.lowered_only:
            return (f"{head}\n  lowered in {self.lower_s:.1f} s: shapes and shardings agree "
                    f"(--dry-run: not compiled, no memory figures)")
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


def compile_lowered(lowered, lower_only: bool = False):
    """`lowered.compile()`, or — when the TPU compiler itself refuses because the program needs
    more HBM than the chip has — a placeholder StepReport carrying the compiler's message and the
    memory it asked for (the caller fills in step, topology and timings). lower_only: nothing is
    compiled; a placeholder marked `lowered_only` is returned (`ppp compile --dry-run`)."""
    if lower_only:
        return StepReport(step="", topology="", mesh={}, argument_bytes=0, output_bytes=0,
                          alias_bytes=0, temp_bytes=0, peak_bytes=0, compiler_peak_bytes=0,
                          generated_code_bytes=0, flops=float("nan"), model_flops=float("nan"),
                          tokens=0, lower_s=0.0, compile_s=0.0, hbm_bytes=0.0, lowered_only=True)
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


def fit_hints(remat: str | None = None) -> str:
    """What to try when a step does not fit; `remat=full` only when it is not already full
    (None: unknown, suggest it)."""
    tries = ["more chips", "a larger fsdp/tensor axis"]
    if remat != "full":
        tries.append("remat=full")
    return f"try {', '.join(tries)}, or a smaller batch / seq_len"


def check_fits(reports: Sequence[StepReport], remat: str | None = None) -> None:
    """Raises DoesNotFit naming every step that needs more HBM per chip than the chip has.

    remat: the model's remat policy, so that the advice leaves out what is already done."""
    bad = [r for r in reports if not r.fits]
    if bad:
        chip = chip_of(bad[0].topology)
        parts = [f"{r.step} needs {'at least ' if r.compiler_error else ''}"
                 f"{r.peak_bytes / GiB:.2f} GiB per chip"
                 + (" (the TPU compiler ran out of HBM)" if r.compiler_error else "") for r in bad]
        raise DoesNotFit(f"does not fit: {'; '.join(parts)}, {chip.name} has "
                         f"{chip.limit_gib:g} GiB usable HBM per chip ({bad[0].topology}, mesh "
                         f"{bad[0].mesh}); {fit_hints(remat)}")
