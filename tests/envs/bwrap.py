"""`needs_bwrap`: skips a test, saying why, where the local (bubblewrap) sandbox cannot run.
`.ci/run` installs bubblewrap, so there every sandboxed test runs."""

from __future__ import annotations

import pytest

from ppp_jax.envs.sandbox.base import SandboxUnavailable
from ppp_jax.envs.sandbox.local import check_bwrap


def _why_not() -> str:
    try:
        check_bwrap()
        return ""
    except SandboxUnavailable as e:
        return str(e)


NO_BWRAP = _why_not()  # "" where bwrap runs, else the reason
needs_bwrap = pytest.mark.skipif(bool(NO_BWRAP), reason=f"no sandbox here: {NO_BWRAP}")
