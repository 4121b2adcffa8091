"""The Table-2 layout: six vague-prompt scores per method, their mean, changes against a base."""

import json

from ppp_jax.eval.table2 import main, row_scores, table2


def result(prod, proact, pers, profile="released"):
    return {"profile": profile, "vague": {"productivity": prod, "proactivity": proact,
                                          "personalization": pers}}


def test_rows_avg_and_deltas(tmp_path, capsys):
    base = (result(0.3859, 0.4370, 0.6907), result(0.1820, 0.3760, 0.6476))
    ppp = (result(0.5626, 0.7555, 0.8926), result(0.2663, 0.4769, 0.7685))
    assert [round(x, 2) for x in row_scores(*ppp)] == [56.26, 75.55, 89.26, 26.63, 47.69, 76.85]
    md = table2([("Seed-OSS-36B-Inst", *base), ("PPP", *ppp)], base="Seed-OSS-36B-Inst")
    lines = md.splitlines()
    # the paper's Table 2 rows: Avg 45.32 and 62.04 (+16.72)
    assert lines[2].startswith("| Seed-OSS-36B-Inst | 45.32 | 38.59 | 43.70 | 69.07 | 18.20 |")
    assert lines[3].startswith("| PPP | 62.04 (+16.72) | 56.26 (+17.67) | 75.55 (+31.85) |")
    assert "profile(s): released." in md
    # a row without a search result: dashes, Avg over the three SWE scores
    md = table2([("swe only", ppp[0], None)])
    assert "| swe only | 73.69 | 56.26 | 75.55 | 89.26 | – | – | – |" in md
    swe, bc = tmp_path / "swe.json", tmp_path / "bc.json"
    swe.write_text(json.dumps(ppp[0]))
    bc.write_text(json.dumps(ppp[1]))
    assert main(["--row", f"PPP={swe},{bc}", "--out", str(tmp_path / "t.md")]) == 0
    assert "| PPP | 62.04 |" in capsys.readouterr().out
    assert (tmp_path / "t.md").read_text().startswith("| Method | Avg |")
