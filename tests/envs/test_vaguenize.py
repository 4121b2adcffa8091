"""Vaguenizers: the rule vaguenizer strips specifics; the LLM one caches and resumes."""

import asyncio
import functools
import json

import pytest

from ppp_jax.envs.llm_client import LLMClient, LLMClientConfig, LLMRequestError
from ppp_jax.envs.vaguenize import (
    PAPER_EXAMPLE_PRECISE,
    PAPER_EXAMPLE_VAGUE,
    LLMVaguenizer,
    RewriteRejected,
    RuleVaguenizer,
    VagueCache,
    cache_key,
    check_rewrite,
    clean_rewrite,
    prompt_record,
    strip_specifics,
)
from tests.envs.fake_openai_server import error, reply

# Real-looking issue texts and the specifics that must not survive.
ISSUES = [
    (
        """TimeSeries: misleading exception when required column check fails.

<!-- Please check the boxes below -->
For a `TimeSeries` object with extra required columns, removing one gives a confusing message.

```python
from astropy.time import Time
from astropy.timeseries import TimeSeries
ts = TimeSeries(time=Time(np.arange(100000, 100003), format='jd'), data={"flux": [99.9, 99.9, 99.9]})
ts._required_columns = ["time", "flux"]
ts.remove_column("flux")
```

ValueError: TimeSeries object is invalid - expected 'time' as the first columns but found 'time'
System: Windows-10-10.0.22000-SP0, Python 3.9.10, astropy 5.0.3, Numpy 1.22.3
""",
        ["TimeSeries", "astropy", "remove_column", "_required_columns", "np.arange", "ValueError",
         "5.0.3", "3.9.10", "99.9", "100000", "```", "flux"],
        ["misleading", "exception", "column"],
    ),
    (
        """Crash in ModelForm.clean() when a field uses a custom widget

When I submit a form whose `email_field` uses `MultiEmailWidget`, Django 4.1.2 raises:

Traceback (most recent call last):
  File "/srv/app/forms/views.py", line 88, in post
    form.is_valid()
  File "/usr/lib/python3.10/site-packages/django/forms/forms.py", line 205, in is_valid
    return self.is_bound and not self.errors
AttributeError: 'NoneType' object has no attribute 'strip'

The widget lives in app/widgets/multi_email.py and returns None for empty input.
""",
        ["ModelForm", "clean()", "email_field", "MultiEmailWidget", "4.1.2", "Traceback",
         "views.py", "/srv/app", "is_valid", "AttributeError", "NoneType", "multi_email.py",
         "app/widgets", "88", "205"],
        ["crash", "custom", "widget"],
    ),
    (
        """Make read_csv honour the `dtype_backend` option for index columns

Right now pd.read_csv(path, index_col=0, dtype_backend="pyarrow") still gives a numpy-backed index.
See https://github.com/example/pandas/issues/51234 and pandas/io/parsers/readers.py around L1400.
Expected: ArrowDtype index. Tested on 2.0.0rc1 and v2.1.
""",
        ["read_csv", "dtype_backend", "pd.read_csv", "index_col", "pyarrow", "https://",
         "readers.py", "pandas/io", "51234", "L1400", "ArrowDtype", "2.0.0rc1", "v2.1"],
        ["honour", "option", "index", "columns"],
    ),
    (
        """Slow startup when the plugin cache is large

Startup takes 45 seconds once ~/.config/tool/plugins.json grows past 20MB. Profiling shows
PluginRegistry.load_all() re-parsing every entry; `CACHE_TTL = 3600` is ignored.

    $ tool --profile start
    load_all: 44.1s

Running on macOS 14.2 with tool 3.7.0.
""",
        ["45", "plugins.json", "~/.config", "PluginRegistry", "load_all", "CACHE_TTL", "3600",
         "--profile", "44.1", "14.2", "3.7.0", "20MB"],
        ["slow", "startup", "plugin", "cache"],
    ),
    (
        """The docs for `ConfigLoader.merge` are wrong about precedence

docs/source/config.rst says later files override earlier ones, but merge_dicts(a, b) in
src/cfg/loader.py keeps values from a. For example:

```yaml
# base.yaml
level: 1
```

Which one is intended?
""",
        ["ConfigLoader", ".merge", "config.rst", "docs/source", "merge_dicts", "loader.py",
         "src/cfg", "base.yaml", "level: 1", "```"],
        ["docs", "wrong", "precedence"],
    ),
]


@pytest.mark.parametrize("text, specifics, intent", ISSUES)
def test_rule_vaguenizer_removes_specifics_and_keeps_intent(text, specifics, intent):
    v = RuleVaguenizer()
    out = v.vaguenize(text)
    low = out.lower()
    for s in specifics:
        assert s.lower() not in low, (s, out)
    for w in intent:
        assert w in low, (w, out)
    assert out == v.vaguenize(text)  # deterministic
    assert len(out) < len(text) / 2


def test_strip_specifics_removes_every_path_identifier_and_code_block():
    for text, specifics, _ in ISSUES:
        stripped = strip_specifics(text)
        for s in specifics:
            if s in ("flux", "astropy"):  # plain words in the prose; only code/paths must go
                continue
            assert s not in stripped, (s, stripped)


def test_rule_vaguenizer_fallback_and_bad_input():
    assert RuleVaguenizer().vaguenize("```\nx = 1\n```") == (
        "Something is not working as expected; please look into it."
    )
    with pytest.raises(TypeError):
        RuleVaguenizer().vaguenize(None)


# --- LLM vaguenizer -----------------------------------------------------------------------


P1 = ("The CSV export writes timestamps in UTC even when the user picked another zone; see "
      "export.py line 40 and the attached traceback")
P2 = "Startup takes 40 s since version 2.3 because the plugin scan walks every directory twice"


def _precise(i):
    return f"issue {i}: the widget number {i} renders blank with a long traceback and more detail"


def _vague(i):
    return f"widget number {i} renders blank"


def _client(server, **kw):
    cfg = LLMClientConfig(model="fake-model", base_url=server.base_url, api_key_env="PPP_UNSET_KEY",
                          backoff_base_s=0.01, max_retries=1, **kw)
    return LLMClient(cfg)


def asynctest(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


@asynctest
async def test_cache_hit_and_miss(fake, tmp_path):
    path = tmp_path / "vague.jsonl"
    fake.push(reply("Export writes the wrong time zone."), reply("Startup is slow now."))
    async with _client(fake) as client:
        v = LLMVaguenizer(client, path)
        a = await v.vaguenize(P1)
        assert a == "Export writes the wrong time zone."
        assert await v.vaguenize(P1) == a  # hit: no request
        assert await v.vaguenize(P2) == "Startup is slow now."
        assert v.stats == {"hits": 1, "misses": 2, "rejected": 0, "retried": 0}
        assert len(fake.requests) == 2
        sys_msg = fake.requests[0]["body"]["messages"][0]["content"]
        assert "same goal" in sys_msg and "only part of the information" in sys_msg
    # A new process reads the cache from disk: all hits.
    async with _client(fake) as client:
        v2 = LLMVaguenizer(client, path)
        assert await v2.vaguenize_many([P2, P1]) == ["Startup is slow now.", a]
        assert v2.stats["hits"] == 2 and len(fake.requests) == 2
        # A different prompt version or model is a different key.
        assert cache_key("p", "m1") != cache_key("p", "m2") != cache_key("p", "m2", "v1")


@asynctest
async def test_crash_resume(fake, tmp_path):
    path = tmp_path / "vague.jsonl"
    texts = [_precise(i) for i in range(4)]
    fake.push(reply(_vague(0)), reply(_vague(1)), error(400, "boom"))  # crash on the third
    async with _client(fake) as client:
        v = LLMVaguenizer(client, path)
        with pytest.raises(LLMRequestError):
            for t in texts:
                await v.vaguenize(t)
    assert len(path.read_text().splitlines()) == 2
    # Simulate a crash mid-write: a torn, half-written last line.
    with path.open("a") as f:
        f.write('{"key": "deadbeef", "vag')
    fake.push(reply(_vague(2)), reply(_vague(3)))
    async with _client(fake) as client:
        v = LLMVaguenizer(client, path)
        assert v.cache.corrupt_lines == 1
        out = [await v.vaguenize(t) for t in texts]
    assert out == [_vague(i) for i in range(4)]
    assert v.stats == {"hits": 2, "misses": 2, "rejected": 0, "retried": 0}
    assert len(fake.requests) == 3 + 2
    # The file is readable again after the new appends (the torn line stays isolated).
    reloaded = VagueCache(path)
    assert reloaded.corrupt_lines == 1 and len(reloaded.entries) == 4
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.startswith('{"key": "') and ln.endswith("}")]
    assert len(rows) == 4


@asynctest
async def test_unusable_rewrite_is_rejected_not_cached(fake, tmp_path):
    fake.push(reply(P1))
    async with _client(fake) as client:
        v = LLMVaguenizer(client, tmp_path / "c.jsonl")
        with pytest.raises(ValueError, match="unusable"):
            await v.vaguenize(P1)
        assert v.stats["rejected"] == 1 and v.cache.entries == {}
        with pytest.raises(ValueError):
            await v.vaguenize("  ")


@asynctest
async def test_vaguenize_many_caches_the_successes_before_raising(fake, tmp_path):
    path = tmp_path / "many.jsonl"
    fake.responder = lambda body: (
        error(400, "no") if body["messages"][1]["content"] == _precise(1)
        else reply(body["messages"][1]["content"].split(" with ")[0])
    )
    async with _client(fake) as client:
        v = LLMVaguenizer(client, path)
        with pytest.raises(LLMRequestError):
            await v.vaguenize_many([_precise(0), _precise(1), _precise(2)])
    assert sorted(VagueCache(path).entries.values()) == [_precise(0).split(" with ")[0],
                                                         _precise(2).split(" with ")[0]]


# --- the paper's principles and example -----------------------------------------------------


def test_prompt_states_both_principles_and_carries_the_papers_example():
    rec = prompt_record()
    system = rec["system"]
    assert "same goal" in system and "only part of the information" in system
    assert PAPER_EXAMPLE_PRECISE in system and system.endswith(PAPER_EXAMPLE_VAGUE)
    # the paper keeps the title and the exact error text: the prompt must not forbid them
    assert "exact error message" in system and "leave out file names" not in system


def test_papers_own_rewrite_passes_the_reply_check_and_garbage_does_not():
    assert check_rewrite(PAPER_EXAMPLE_PRECISE, PAPER_EXAMPLE_VAGUE) is None
    bad = {
        "": "empty",
        "ok": "fewer than",
        PAPER_EXAMPLE_PRECISE: "same as the precise",
        PAPER_EXAMPLE_PRECISE + " And more words here.": "not shorter",
        "Sure! Here is the vague version of the issue.": "commentary",
        "TimeSeries error<|im_end|><|im_start|>assistant": "chat-template",
    }
    for reply_text, why in bad.items():
        assert why in (check_rewrite(PAPER_EXAMPLE_PRECISE, reply_text) or ""), reply_text
    assert clean_rewrite('Rewrite: "TimeSeries gives a confusing error"') == (
        "TimeSeries gives a confusing error")


def test_paper_style_rule_keeps_title_and_exact_error_like_the_papers_example():
    out = RuleVaguenizer(style="paper").vaguenize(PAPER_EXAMPLE_PRECISE)
    assert out.startswith("TimeSeries: misleading exception when required column check fails")
    error_text = PAPER_EXAMPLE_VAGUE.split('"')[1]
    assert error_text in out  # the exact error, as the paper keeps it
    for gone in ("remove_column", "Numpy 1.22.3", "99.9", "Steps to Reproduce"):
        assert gone not in out
    assert check_rewrite(PAPER_EXAMPLE_PRECISE, out) is None
    # the old style drops both title and error (the issue's complaint)
    assert error_text not in RuleVaguenizer().vaguenize(PAPER_EXAMPLE_PRECISE)


def test_paper_style_never_returns_a_short_statement_unchanged():
    short = "Fix the parser so that it accepts trailing commas in lists"
    out = RuleVaguenizer(style="paper").vaguenize(short)
    assert out != short and len(out.split()) < len(short.split())
    assert check_rewrite(short, out) is None


@asynctest
async def test_llm_reply_is_cleaned_and_checked_and_the_example_is_sent(fake, tmp_path):
    fake.push(reply('Vague prompt: "widget number 0 renders blank"'),
              reply("Sure, here is a rewrite: the widget is broken"))
    async with _client(fake) as client:
        v = LLMVaguenizer(client, tmp_path / "c.jsonl")
        assert await v.vaguenize(_precise(0)) == _vague(0)
        with pytest.raises(RewriteRejected, match="commentary"):
            await v.vaguenize(_precise(1))
    msgs = fake.requests[0]["body"]["messages"]
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[1]["content"] == _precise(0) and PAPER_EXAMPLE_VAGUE in msgs[0]["content"]
