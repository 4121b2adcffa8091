"""The API key never reaches an error message, wherever the endpoint's error text is cut."""

import asyncio

import pytest

from ppp_jax.envs.llm_client import (
    ERROR_TEXT_LIMIT,
    LLMClient,
    LLMClientConfig,
    LLMRequestError,
    redact_secret,
)
from tests.envs.fake_openai_server import error

KEY_ENV = "PPP_TEST_REDACT_KEY"
SECRET = "sk-proj-Zq81xVb2Lm0PqR7tYw3nKc5Hj9DfGs4A"


def _key_fragments(text: str, secret: str, shortest: int = 4) -> list[str]:
    """Every substring of `secret` of at least `shortest` characters that occurs in `text`."""
    return [secret[i:j] for i in range(len(secret)) for j in range(i + shortest, len(secret) + 1)
            if secret[i:j] in text]


@pytest.mark.parametrize("cut_inside_key", [1, 4, 8, 20, len(SECRET) - 1])
def test_key_straddling_the_cut_leaves_no_prefix(cut_inside_key):
    text = "x" * (ERROR_TEXT_LIMIT - cut_inside_key) + SECRET + " trailing words"
    out = redact_secret(text, SECRET)
    assert len(out) <= ERROR_TEXT_LIMIT
    assert _key_fragments(out, SECRET) == [] or all(len(f) < 4 for f in _key_fragments(out, SECRET))
    # the old order (cut, then replace the whole key) leaked exactly this prefix
    leaked = text[:ERROR_TEXT_LIMIT].replace(SECRET, "<redacted>")
    assert cut_inside_key < 4 or SECRET[:cut_inside_key] in leaked


def test_partial_and_masked_keys_are_redacted():
    masked = f"Incorrect API key provided: {SECRET[:12]}************{SECRET[-6:]}."
    out = redact_secret(masked, SECRET)
    assert SECRET[:12] not in out and "<redacted>" in out
    # a body cut by the server inside the key: the trailing prefix goes too
    assert redact_secret("bad key " + SECRET[:5], SECRET) == "bad key <redacted>"
    # text without the key is untouched, only cut
    assert redact_secret("plain error " * 40, SECRET) == ("plain error " * 40)[:ERROR_TEXT_LIMIT]
    assert redact_secret("EMPTY key", "EMPTY") == "EMPTY key"  # the placeholder is no secret


def test_error_body_from_the_endpoint_never_shows_a_key_prefix(fake, monkeypatch):
    """End to end over HTTP: the key sits where the 300-character cut falls."""
    monkeypatch.setenv(KEY_ENV, SECRET)

    async def failure(message: str) -> str:
        client = LLMClient(LLMClientConfig(model="fake-model", base_url=fake.base_url,
                                           api_key_env=KEY_ENV, max_retries=0, timeout_s=5.0))
        fake.push(error(401, message))
        try:
            await client.chat([{"role": "user", "content": "x"}])
        except LLMRequestError as e:
            return str(e)
        finally:
            await client.close()
        raise AssertionError("the request did not fail")

    probe = asyncio.run(failure("MARK"))
    head = probe.index("AuthenticationError: ") + len("AuthenticationError: ")
    offset = probe.index("MARK") - head  # where the body's message starts in the cut text
    for inside in (2, 6, 15):
        pad = ERROR_TEXT_LIMIT - offset - inside
        msg = asyncio.run(failure("y" * pad + SECRET))
        frags = [f for f in _key_fragments(msg, SECRET) if f != "sk-p"]
        assert frags == [], (inside, msg[-60:])
