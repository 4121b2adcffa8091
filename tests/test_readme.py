"""The README's Python snippets run as written (docs must match behaviour).

Each ```python block runs in its own subprocess from a scratch directory. A block whose first line
is a comment saying it needs a running server is skipped (the server is tested in tests/sampling).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
RUNNABLE = [b for b in BLOCKS if not b.lstrip().startswith("# with `ppp serve")]


def test_readme_has_the_promised_snippets():
    text = "\n".join(BLOCKS)
    for needle in ("api.load_pretrained", "api.next_token_logprobs", "Engine.from_pretrained",
                   "list_preferences", "EmbeddedUserSimulator", "ppp_reward"):
        assert needle in text, f"README lost its {needle} snippet"


@pytest.mark.parametrize("index", range(len(RUNNABLE)))
def test_readme_snippet_runs(index, tmp_path):
    code = RUNNABLE[index].replace("/tmp/ppp_readme", str(tmp_path / "ppp_readme"))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"README snippet {index} failed:\n{code}\n--- stderr ---\n{proc.stderr[-3000:]}"
