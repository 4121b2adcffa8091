"""The Seed-OSS-36B sharding study: AOT-compiles a grid of (topology × strategy) rows with
`ppp compile` and writes docs/sharding.md from the compiler's reports.

    python bench/sharding_study.py --list              # the rows and whether each has a result
    python bench/sharding_study.py --run ROW [ROW...]  # compile rows (one subprocess each)
    python bench/sharding_study.py --run-missing       # compile every row without a result
    python bench/sharding_study.py --doc               # (re)write docs/sharding.md

Each row becomes a YAML config under bench/results/sharding/ (the funcloc config plus the row's
changes), so any row can be re-run by hand with `ppp compile bench/results/sharding/ROW.yaml`.
Results are JSON files beside it, stamped with the UTC time of the compile. Rows never compiled
appear in the doc as "not yet compiled"; nothing in the doc is typed by hand.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "seed_oss_36b_funcloc.yaml"
OUT = ROOT / "bench" / "results" / "sharding"
DOC = ROOT / "docs" / "sharding.md"
MFU = 0.40  # stated MFU for the step-time estimates


@dataclasses.dataclass(frozen=True)
class Row:
    """One compile of the study: a topology, a mesh, a remat policy and the batch shape."""

    id: str
    topology: str
    mesh: tuple[int, int, int]  # data, fsdp, tensor
    seq_len: int
    batch: int
    remat: str = "full"
    steps: tuple[str, ...] = ("train",)
    engine_mesh: tuple[int, int, int] | None = None
    strategy: str = ""
    sequence: int = 1  # size of the `sequence` mesh axis (context parallelism); 1 = no such axis
    micro_batches: int = 1  # rl.num_micro_batches: the B rows of an update in this many passes

    def mesh_config(self) -> dict:
        """The `sharding.mesh` section: data×fsdp×tensor, with a `sequence` axis when > 1."""
        data, fsdp, tensor = self.mesh
        if self.sequence == 1:
            return {"axes": ["data", "fsdp", "tensor"], "shape": list(self.mesh)}
        return {"axes": ["data", "fsdp", "sequence", "tensor"],
                "shape": [data, fsdp, self.sequence, tensor]}

    def mesh_text(self) -> str:
        """"1×16×4×1" style, data×fsdp×sequence×tensor (sequence 1 when absent)."""
        data, fsdp, tensor = self.mesh
        return "×".join(str(x) for x in (data, fsdp, self.sequence, tensor))

    def config(self) -> dict:
        cfg = yaml.safe_load(BASE.read_text())
        cfg = copy.deepcopy(cfg)
        cfg["model"]["remat"] = self.remat
        cfg["sharding"]["mesh"] = self.mesh_config()
        if self.micro_batches != 1:
            cfg["rl"]["num_micro_batches"] = self.micro_batches
        cfg["compile"].update(topology=self.topology, steps=list(self.steps),
                              batch=self.batch, seq_len=self.seq_len)
        if self.engine_mesh is not None:
            cfg["engine"]["mesh"] = {"axes": ["data", "fsdp", "tensor"],
                                     "shape": list(self.engine_mesh)}
        return cfg


FUNCLOC = "funcloc-v5p128"

# In priority order (the order --run-missing compiles them).
ROWS = [
    Row("funcloc-v5p128", "v5p:4x4x4", (1, 64, 1), 40960, 64, steps=("train", "prefill", "decode"),
        strategy="FSDP (funcloc config)"),
    Row("v5p128-fsdp-32k", "v5p:4x4x4", (1, 64, 1), 32768, 64, strategy="FSDP"),
    Row("v5p128-fsdp-65k", "v5p:4x4x4", (1, 64, 1), 65536, 64, strategy="FSDP"),
    Row("v5p256-fsdp32xtp4-65k", "v5p:4x4x8", (1, 32, 4), 65536, 32, strategy="FSDP x tensor"),
    Row("v6e256-fsdp64xtp4-32k", "v6e:16x16", (1, 64, 4), 32768, 64, strategy="FSDP x tensor"),
    Row("v5p128-fsdp16xtp4-32k", "v5p:4x4x4", (1, 16, 4), 32768, 16, strategy="FSDP x tensor"),
    Row("v6e256-fsdp32xtp8-32k", "v6e:16x16", (1, 32, 8), 32768, 32, strategy="FSDP x tensor"),
    Row("v5p128-fsdp-32k-savedots", "v5p:4x4x4", (1, 64, 1), 32768, 64, remat="save_dots",
        strategy="FSDP"),
    Row("v6e256-fsdp-32k", "v6e:16x16", (1, 256, 1), 32768, 256, strategy="FSDP"),
    Row("v5p256-fsdp-65k", "v5p:4x4x8", (1, 128, 1), 65536, 128, strategy="FSDP"),
    Row("v6e256-fsdp32xtp8-65k", "v6e:16x16", (1, 32, 8), 65536, 32, strategy="FSDP x tensor"),
    Row("v5p256-fsdp-32k", "v5p:4x4x8", (1, 128, 1), 32768, 128, strategy="FSDP"),
    Row("v6e256-fsdp32xtp8-16k", "v6e:16x16", (1, 32, 8), 16384, 32, strategy="FSDP x tensor"),
    Row("v5p128-fsdp-32k-noremat", "v5p:4x4x4", (1, 64, 1), 32768, 64, remat="none",
        strategy="FSDP"),
    # Sequence (context) sharding: each sequence's tokens split over the `sequence` axis, k/v
    # all-gathered per layer; weights over fsdp × sequence. Compare with the rows above at the
    # same length and slice.
    Row("v5p128-fsdp16xsp4-65k", "v5p:4x4x4", (1, 16, 1), 65536, 16, sequence=4,
        strategy="FSDP x sequence"),
    Row("v6e256-fsdp64xsp4-32k", "v6e:16x16", (1, 64, 1), 32768, 64, sequence=4,
        strategy="FSDP x sequence"),
    Row("v5p256-fsdp32xsp4-65k", "v5p:4x4x8", (1, 32, 1), 65536, 32, sequence=4,
        strategy="FSDP x sequence"),
    Row("v6e256-fsdp16xsp4xtp4-65k", "v6e:16x16", (1, 16, 4), 65536, 16, sequence=4,
        strategy="FSDP x sequence x tensor"),
    Row("v5p128-fsdp32xsp2-32k", "v5p:4x4x4", (1, 32, 1), 32768, 32, sequence=2,
        strategy="FSDP x sequence"),
    # The update of v5p128-fsdp-65k (64 rows of 65k tokens) in 4 micro-batches of 16 rows.
    Row("v5p128-fsdp16xsp4-65k-b64", "v5p:4x4x4", (1, 16, 1), 65536, 64, sequence=4,
        micro_batches=4, strategy="FSDP x sequence"),
    Row("v6e256-fsdp32xsp8-65k", "v6e:16x16", (1, 32, 1), 65536, 32, sequence=8,
        strategy="FSDP x sequence"),
]
BY_ID = {r.id: r for r in ROWS}


def result_path(row: Row) -> Path:
    return OUT / f"{row.id}.json"


def run_row(row: Row, timeout: int) -> dict:
    """Compiles one row in a fresh `ppp compile` process; stores and returns its result."""
    OUT.mkdir(parents=True, exist_ok=True)
    if row.id == FUNCLOC:
        # The funcloc row is the run config itself, exactly as a user would compile it.
        cfg_path, extra = BASE, ["--topology", row.topology]
    else:
        cfg_path, extra = OUT / f"{row.id}.yaml", []
        cfg_path.write_text(yaml.safe_dump(row.config(), sort_keys=False))
    json_path = OUT / f"{row.id}.compile.json"
    cmd = [sys.executable, "-m", "ppp_jax.cli", "compile", str(cfg_path.relative_to(ROOT)),
           *extra, "--json", str(json_path)]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    result = {
        "row": dataclasses.asdict(row),
        "command": " ".join(["ppp compile", str(cfg_path.relative_to(ROOT)), *extra]),
        "compiled_at_utc": started.strftime("%Y-%m-%d %H:%M"),
        "host": f"{platform.node()} ({os.cpu_count()} CPU cores, shared)",
        "wall_s": round(wall, 1),
        "exit_code": proc.returncode,
        "stdout": proc.stdout[-4000:],
        "stderr": "\n".join(l for l in proc.stderr.splitlines() if not _libtpu_noise(l))[-3000:],
        "reports": [],
    }
    if json_path.exists():
        result["reports"] = json.loads(json_path.read_text())["reports"]
        json_path.unlink()
    result_path(row).write_text(json.dumps(result, indent=1))
    return result


def _libtpu_noise(line: str) -> bool:
    """libtpu's start-up chatter on a machine that is not a TPU VM."""
    return line.startswith(("W0000", "E0000", "I0000", "WARNING: Logging", "===", "learning/",
                            "Failed to find host bounds"))


def load_result(row: Row) -> dict | None:
    p = result_path(row)
    return json.loads(p.read_text()) if p.exists() else None


# ----------------------------------------------------------------------------------------------
# The doc
# ----------------------------------------------------------------------------------------------


def _chips():
    sys.path.insert(0, str(ROOT))
    from ppp_jax.scale.chips import CHIPS, TIGHT_FRACTION

    return CHIPS, TIGHT_FRACTION


def _flops(x: float) -> str:
    return "—" if x != x else f"{x:.2e}"  # NaN: not recorded (rows compiled before it was)


def _gib(b: float) -> str:
    return f"{b / 2**30:.1f}"


def _train_table(rows: list[Row]) -> list[str]:
    chips, tight = _chips()
    out = ["| row | slice (chips) | strategy: mesh data×fsdp×sequence×tensor | remat | B × T | args GiB | "
           "temp GiB | total GiB / HBM | compiler peak GiB | fits | compiler FLOPs/chip | "
           f"model FLOPs/chip | est. step at {MFU:.0%} MFU | compile s | compiled (UTC) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        res = load_result(row)
        mesh = row.mesh_text()
        head = (f"| {row.id} | {row.topology} ({_n_chips(row.topology)}) | {row.strategy}: {mesh} | "
                f"{row.remat} | {row.batch} × {row.seq_len}"
                + (f" ({row.micro_batches} micro-batches)" if row.micro_batches > 1 else "") + " |")
        train = None if res is None else next((r for r in res["reports"] if r["step"] == "train"), None)
        if train is None:
            why = "not yet compiled" if res is None else f"failed: {res['stderr'] or res['exit_code']}"
            out.append(head + f" — | — | — | — | {why} | — | — | — | — | — |")
            continue
        chip = chips[row.topology.split(":")[0]]
        est = train["model_flops"] / (MFU * chip.peak_bf16_flops)
        limit = chip.limit_gib * 2**30  # verdicts are recomputed against the current table
        train = dict(train, hbm_bytes=limit, fits=train["peak_bytes"] <= limit,
                     tight=tight * limit < train["peak_bytes"] <= limit)
        fits = ("yes (tight)" if train["tight"] else "yes") if train["fits"] else "**no**"
        if train.get("compiler_error"):
            from ppp_jax.scale.step_report import oom_bytes

            need = oom_bytes(train["compiler_error"]) or train["temp_bytes"]
            train = dict(train, temp_bytes=need, peak_bytes=need)
            out.append(head + f" — | ≥ {_gib(train['temp_bytes'])} | ≥ {_gib(train['peak_bytes'])} / "
                       f"{_gib(train['hbm_bytes'])} | — | **no** (compiler out of HBM) | — | "
                       f"{_flops(train['model_flops'])} | — | {train['compile_s']:.0f} | "
                       f"{res['compiled_at_utc']} |")
            continue
        est_text = f"{est:.0f} s" if train["fits"] else f"({est:.0f} s)"
        out.append(head + f" {_gib(train['argument_bytes'])} | {_gib(train['temp_bytes'])} | "
                   f"{_gib(train['peak_bytes'])} / {_gib(train['hbm_bytes'])} | "
                   f"{_gib(train['compiler_peak_bytes'])} | {fits} | "
                   f"{train['flops']:.2e} | {train['model_flops']:.2e} | {est_text} | "
                   f"{train['compile_s']:.0f} | {res['compiled_at_utc']} |")
    return out


def _engine_table(rows: list[Row]) -> list[str]:
    chips, _ = _chips()
    out = ["| row | step | slice | replica mesh data×fsdp×tensor | tokens per call (slice) | "
           "args GiB | temp GiB | total GiB / HBM | fits | model FLOPs/chip | "
           "HBM-read bound per call | compute bound per call | compile s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    any_row = False
    for row in rows:
        res = load_result(row)
        for r in (res or {}).get("reports", []):
            if r["step"] == "train":
                continue
            any_row = True
            mesh = "×".join(str(r["mesh"][a]) for a in ("data", "fsdp", "tensor"))
            chip = chips[row.topology.split(":")[0]]
            limit = chip.limit_gib * 2**30
            r = dict(r, hbm_bytes=limit, fits=not r.get("compiler_error") and r["peak_bytes"] <= limit)
            # Every call reads at least the chip's weights and cache once from HBM, and does
            # its FLOPs at no more than peak: two lower bounds on the time of one call.
            # A decode block runs several steps, each re-reading the weights and the cache.
            steps = re.search(r"(\d+) decode steps per block", r.get("note", ""))
            reads = int(steps.group(1)) if steps and r["step"] == "decode" else 1
            read_ms = reads * r["argument_bytes"] / chip.hbm_bytes_per_s * 1e3
            flop_ms = r["model_flops"] / chip.peak_bf16_flops * 1e3
            out.append(f"| {row.id} | {r['step']} | {row.topology} | {mesh} | {r['tokens']} | "
                       f"{_gib(r['argument_bytes'])} | {_gib(r['temp_bytes'])} | "
                       f"{_gib(r['peak_bytes'])} / {_gib(r['hbm_bytes'])} | "
                       f"{'yes' if r['fits'] else '**no**'} | {r['model_flops']:.2e} | "
                       f"≥ {read_ms:.1f} ms | ≥ {flop_ms:.1f} ms | {r['compile_s']:.0f} |")
    if not any_row:
        out.append("| — | not yet compiled | | | | | | | | | | | |")
    return out


def _n_chips(topology: str) -> int:
    n = 1
    for d in topology.split(":")[1].split("x"):
        n *= int(d)
    return n


def write_doc() -> None:
    chips, tight = _chips()
    template = (Path(__file__).with_name("sharding_doc_template.md")).read_text()
    chip_rows = "\n".join(
        f"| {c.name} | {c.hbm_gib:g} | {c.usable_gib if c.usable_gib else 'not observed'} | "
        f"{c.hbm_bytes_per_s / 1e9:g} | {c.peak_bf16_flops / 1e12:g} | {c.source} |"
        for c in chips.values())
    compiled = [r for r in ROWS if load_result(r) is not None]
    stamps = sorted(load_result(r)["compiled_at_utc"] for r in compiled)
    hosts = sorted({load_result(r)["host"] for r in compiled})
    funcloc = load_result(BY_ID[FUNCLOC])
    funcloc_text = "not yet compiled."
    if funcloc is not None:
        funcloc_text = (f"`{funcloc['command']}` exited with status {funcloc['exit_code']} on "
                        f"{funcloc['compiled_at_utc']} UTC, "
                        f"wall {funcloc['wall_s']:.0f} s. Its output:\n\n```\n"
                        + funcloc["stdout"].strip() + "\n```")
    text = template.format(
        mfu=f"{MFU:.0%}",
        chip_rows=chip_rows,
        tight=f"{tight:.0%}",
        train_table="\n".join(_train_table(ROWS)),
        engine_table="\n".join(_engine_table(ROWS)),
        compiled_rows=", ".join(r.id for r in compiled) or "none",
        missing_rows=", ".join(r.id for r in ROWS if r not in compiled) or "none",
        when=(f"{stamps[0]} – {stamps[-1]} UTC" if stamps else "—"),
        hosts="; ".join(hosts) or "—",
        funcloc=funcloc_text,
    )
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)} ({len(compiled)}/{len(ROWS)} rows compiled)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", action="store_true")
    p.add_argument("--run", nargs="*", default=[], metavar="ROW")
    p.add_argument("--run-missing", action="store_true")
    p.add_argument("--doc", action="store_true")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per compile")
    args = p.parse_args(argv)
    if args.list:
        for r in ROWS:
            res = load_result(r)
            print(f"{r.id:28s} {'compiled ' + res['compiled_at_utc'] if res else 'not yet compiled'}")
    todo = [BY_ID[i] for i in args.run]
    if args.run_missing:
        todo += [r for r in ROWS if load_result(r) is None and r not in todo]
    for row in todo:
        print(f"compiling {row.id} ...", flush=True)
        res = run_row(row, args.timeout)
        print(f"  exit {res['exit_code']} in {res['wall_s']:.0f} s", flush=True)
        if args.doc:
            write_doc()
    if args.doc:
        write_doc()
    return 0


if __name__ == "__main__":
    sys.exit(main())
