"""The run report: `report.md` (Table-2-style), `summary.json` (the same figures as data), PNG plots.

summary.json:
    {"before": {"vague": {ask_ratio, productivity, proactivity, personalization,
                          low_effort_share}, "precise": {...}},
     "after":  {...same...},
     "heldout_preferences": {"before": {...}, "after": {...}},   # vague, means over held-out prefs
     "seen_preferences": {...},
     "training": {"steps": N, "first": {...}, "last": {...}},      # step metrics, first vs last
     "model": {...}, "settings": {...}}

Everything in report.md and summary.json is a function of the run's results, so two runs with the
same seed give identical files; wall-clock times go to `timings.json` only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ppp_jax.config import loader as cfgmod
from ppp_jax.eval.evaluate import SCORE_KEYS, to_markdown
from ppp_jax.train.metrics import read_jsonl

# (metric key, label) pairs plotted per training step.
REWARD_CURVES = (("score/reward", "reward R"), ("score/r_prod", "R_prod (task score)"),
                 ("score/r_proact", "R_proact"), ("score/r_pers", "R_pers"))
ASK_CURVES = (("rollout/ask_ratio_vague", "ask ratio, vague prompts"),
              ("rollout/ask_ratio_precise", "ask ratio, precise prompts"),
              ("rollout/low_effort_share", "low-effort share of questions"))
EFFORT_CURVES = (("rollout/questions_low_effort_per_episode", "low"),
                 ("rollout/questions_medium_effort_per_episode", "medium"),
                 ("rollout/questions_high_effort_per_episode", "high"))
TRAIN_KEYS = ("score/reward", "score/r_prod", "score/r_proact", "score/r_pers",
              "rollout/ask_ratio_vague", "rollout/ask_ratio_precise", "rollout/low_effort_share",
              "score/productivity", "score/proactivity", "score/personalization")


def run_environment() -> dict[str, str]:
    """The interpreter and numeric packages a report was made with. The demo's stdlib tasks are
    drawn from the running Python's own standard library (`envs.domains.stdlib_loc`), so another
    Python version means other tasks and other figures."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version(), "machine": platform.machine()}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "tokenizers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def _kinds(result: Mapping[str, Any]) -> dict[str, Any]:
    return {kind: {k: result[kind].get(k) for k in SCORE_KEYS} for kind in ("vague", "precise")
            if kind in result}


def _series(rows: Sequence[Mapping[str, float]], key: str) -> tuple[list[int], list[float]]:
    pts = [(int(r["step"]), float(r[key])) for r in rows if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(rows: Sequence[Mapping[str, float]], curves: Sequence[tuple[str, str]], path: Path,
                title: str, ylabel: str, kind: str = "line") -> Path | None:
    """One PNG of several per-step metrics; None (no file) when none of them was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [(k, lab) for k, lab in curves if any(k in r for r in rows)]
    if not present:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=110)
    if kind == "stack":
        steps = [int(r["step"]) for r in rows]
        ys = [[float(r.get(k, 0.0)) for r in rows] for k, _ in present]
        ax.stackplot(steps, ys, labels=[lab for _, lab in present], alpha=0.8)
    else:
        for k, lab in present:
            x, y = _series(rows, k)
            ax.plot(x, y, marker="o", markersize=3, label=lab)
    ax.set_xlabel("PPP step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})  # no timestamps: byte-identical reruns
    plt.close(fig)
    return path


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.1f}" if pct else f"{x:.3f}"


def compare_table(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """Before/after Markdown table, per prompt kind (scores in %)."""
    lines = ["| prompts | metric | before | after | change |", "|---|---|---|---|---|"]
    for kind in ("vague", "precise"):
        if kind not in before or kind not in after:
            continue
        for k in SCORE_KEYS:
            b, a = before[kind].get(k), after[kind].get(k)
            d = "–" if a is None or b is None else f"{100 * (a - b):+.1f}"
            lines.append(f"| {kind} | {k} | {_fmt(b)} | {_fmt(a)} | {d} |")
    for label in ("heldout", "seen"):
        if label in before and label in after:
            for k in ("personalization", "proactivity"):
                b, a = before[label].get(k), after[label].get(k)
                d = "–" if a is None or b is None else f"{100 * (a - b):+.1f}"
                lines.append(f"| vague, {label} prefs (mean) | {k} | {_fmt(b)} | {_fmt(a)} | {d} |")
    return "\n".join(lines)


def write_report(out: str | Path, cfg: Any, before: Mapping[str, Any], after: Mapping[str, Any],
                 metrics_path: str | Path, *, sft_metrics: str | Path | None = None,
                 timings: Mapping[str, float] | None = None,
                 model_info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Writes report.md, summary.json, timings.json and the plots into `out`; returns the summary."""
    out = Path(out)
    rows = read_jsonl(metrics_path)
    sft_rows = read_jsonl(sft_metrics) if sft_metrics else []
    plots = {
        "reward": plot_curves(rows, REWARD_CURVES, out / "reward_components.png",
                              "PPP reward and its components (training rollouts)", "mean per episode"),
        "ask": plot_curves(rows, ASK_CURVES, out / "ask_ratio.png",
                           "Asking during training", "fraction"),
        "effort": plot_curves(rows, EFFORT_CURVES, out / "questions_by_effort.png",
                              "Questions per episode by effort (training rollouts)",
                              "questions / episode", kind="stack"),
    }
    summary: dict[str, Any] = {
        "before": _kinds(before),
        "after": _kinds(after),
        "heldout_preferences": {"before": before.get("heldout"), "after": after.get("heldout")},
        "seen_preferences": {"before": before.get("seen"), "after": after.get("seen")},
        "training": {
            "steps": len(rows),
            "first": {k: rows[0].get(k) for k in TRAIN_KEYS} if rows else {},
            "last": {k: rows[-1].get(k) for k in TRAIN_KEYS} if rows else {},
        },
        "sft": {"steps": len(sft_rows),
                "nll_first": sft_rows[0].get("train/nll") if sft_rows else None,
                "nll_last": sft_rows[-1].get("train/nll") if sft_rows else None},
        "model": dict(model_info or {}),
        "settings": {"config": cfgmod.to_dict(cfg) if cfg is not None else {},
                     "eval": after.get("settings", {})},
        "plots": {k: p.name for k, p in plots.items() if p is not None},
        "environment": run_environment(),
    }
    md = [f"# PPP in miniature: run `{getattr(cfg, 'name', '')}`", ""]
    if model_info:
        copy_steps = getattr(getattr(cfg, "sft", None), "copy_steps", 0)
        md += [f"Policy: Seed-OSS architecture, {model_info.get('parameters', 0):,} parameters "
               f"(hidden {model_info.get('hidden_size')}, {model_info.get('num_layers')} layers, "
               f"vocabulary {model_info.get('vocab_size')}), warm-started by SFT on scripted "
               f"episodes ({summary['sft']['steps']} steps"
               + (f", after a copy stage of {copy_steps} steps on copy drills"
                  if copy_steps else "")
               + f"), then {len(rows)} PPP steps.", ""]
    es = after.get("settings", {})
    md += [f"Evaluation: {es.get('tasks', '?')} held-out tasks × preferences "
           f"{', '.join(es.get('preferences', []))}; prompt kinds {', '.join(es.get('prompt_kinds', []))}; "
           f"temperature {es.get('temperature')}; scores in %.", "",
           f"Made with Python {summary['environment']['python']} (the tasks are drawn from its "
           f"standard library), jax {summary['environment']['jax']}.", "",
           "## Before vs after PPP", "", compare_table(before, after), ""]
    for name, label in (("reward", "Reward components"), ("ask", "Ask ratio"),
                        ("effort", "Questions by effort")):
        if plots[name] is not None:
            md += [f"![{label}]({plots[name].name})", ""]
    md += [to_markdown(before, "Before PPP (after the warm start)"), "",
           to_markdown(after, "After PPP"), ""]
    (out / "report.md").write_text("\n".join(md))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if timings:
        (out / "timings.json").write_text(json.dumps(dict(timings), indent=2, sort_keys=True) + "\n")
    return summary
