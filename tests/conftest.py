"""Suite-wide settings, applied before any test module imports jax.

libtpu is installed by the test extra (for the AOT-compile tests, which run in subprocesses); the
pytest process itself must stay on the CPU backend and never probe for TPU hardware.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
