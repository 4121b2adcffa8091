"""The paper's Table 2 layout from `ppp eval` results: one row per method, vague prompts, SWE
(Func-Loc) and BrowseComp-Plus productivity / proactivity / personalization in percent, their
mean as "Avg", and each score's change against a base row in parentheses.

    python -m ppp_jax.eval.table2 --base Seed-OSS-36B-Inst \\
        --row "Seed-OSS-36B-Inst=runs/eval_released_funcloc/seed36b.json,runs/eval_released_browsecomp/seed36b.json" \\
        --row "PPP-36B=runs/eval_released_funcloc/ppp36b.json,runs/eval_released_browsecomp/ppp36b.json"

A row may leave a domain out (an empty path): its cells print "–" and Avg is the mean of the
scores present. Each result's profile (`ppp eval` records it) is listed under the table, so a
table never silently mixes the paper's and the released definitions.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

METRICS = ("productivity", "proactivity", "personalization")
COLUMNS = ("SWE Prod", "SWE Proact", "SWE Pers", "BC+ Prod", "BC+ Proact", "BC+ Pers")


def row_scores(swe: Mapping[str, Any] | None, search: Mapping[str, Any] | None
               ) -> list[float | None]:
    """The six Table-2 numbers (percent, None where missing) of one method: the vague-prompt
    scores of its SWE result, then of its BrowseComp-Plus result."""
    out: list[float | None] = []
    for result in (swe, search):
        vague = (result or {}).get("vague") or {}
        for m in METRICS:
            x = vague.get(m)
            out.append(None if x is None else 100.0 * float(x))
    return out


def _avg(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def _cell(x: float | None, base: float | None) -> str:
    if x is None:
        return "–"
    if base is None:
        return f"{x:.2f}"
    return f"{x:.2f} ({x - base:+.2f})"


def table2(rows: Sequence[tuple[str, Mapping[str, Any] | None, Mapping[str, Any] | None]],
           base: str | None = None) -> str:
    """Markdown of the table: `rows` are (method, SWE result, BrowseComp-Plus result), results
    as `ppp eval` writes them (None = not run); `base` names the row the others are compared to."""
    scores = {name: row_scores(swe, bc) for name, swe, bc in rows}
    if base is not None and base not in scores:
        raise ValueError(f"base row {base!r} is not one of {list(scores)}")
    ref = scores.get(base) if base else None
    lines = ["| Method | Avg | " + " | ".join(COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for name, _, _ in rows:
        s = scores[name]
        cmp = ref if (ref is not None and name != base) else None
        cells = [_cell(x, None if cmp is None else cmp[i]) for i, x in enumerate(s)]
        avg = _avg(s)
        ref_avg = _avg(cmp) if cmp is not None else None
        lines.append(f"| {name} | {_cell(avg, ref_avg)} | " + " | ".join(cells) + " |")
    profiles = sorted({str(r.get("profile", "unrecorded")) for _, *res in rows for r in res if r})
    lines += ["", f"Vague prompts, averaged over the evaluated preferences; profile(s): "
                  f"{', '.join(profiles) or 'none'}."]
    return "\n".join(lines) + "\n"


def _read(path: str) -> dict[str, Any] | None:
    return json.loads(Path(path).read_text()) if path else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ppp_jax.eval.table2",
                                     description="Table 2 of the paper from `ppp eval` results.")
    parser.add_argument("--row", action="append", required=True,
                        help="NAME=SWE_RESULT.json,BROWSECOMP_RESULT.json (either may be empty)")
    parser.add_argument("--base", default=None, help="the row the others are compared to")
    parser.add_argument("--out", default="", help="also write the markdown here")
    args = parser.parse_args(argv)
    rows = []
    for spec in args.row:
        name, _, paths = spec.partition("=")
        swe, _, bc = paths.partition(",")
        rows.append((name, _read(swe.strip()), _read(bc.strip())))
    md = table2(rows, args.base)
    if args.out:
        Path(args.out).write_text(md)
    print(md, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
