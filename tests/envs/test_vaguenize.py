"""Vaguenizers: the rule vaguenizer strips specifics; the LLM one caches and resumes."""

import asyncio
import functools
import json

import pytest

from ppp_jax.envs.llm_client import LLMClient, LLMClientConfig, LLMRequestError
from ppp_jax.envs.vaguenize import LLMVaguenizer, RuleVaguenizer, VagueCache, cache_key, strip_specifics
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
    fake.push(reply("Export writes the wrong time zone."), reply("Startup is slow."))
    async with _client(fake) as client:
        v = LLMVaguenizer(client, path)
        a = await v.vaguenize("precise one")
        assert a == "Export writes the wrong time zone."
        assert await v.vaguenize("precise one") == a  # hit: no request
        assert await v.vaguenize("precise two") == "Startup is slow."
        assert v.stats == {"hits": 1, "misses": 2, "rejected": 0}
        assert len(fake.requests) == 2
        sys_msg = fake.requests[0]["body"]["messages"][0]["content"]
        assert "same goal" in sys_msg and "only part of the information" in sys_msg
    # A new process reads the cache from disk: all hits.
    async with _client(fake) as client:
        v2 = LLMVaguenizer(client, path)
        assert await v2.vaguenize_many(["precise two", "precise one"]) == ["Startup is slow.", a]
        assert v2.stats["hits"] == 2 and len(fake.requests) == 2
        # A different prompt version or model is a different key.
        assert cache_key("p", "m1") != cache_key("p", "m2") != cache_key("p", "m2", "v2")


@asynctest
async def test_crash_resume(fake, tmp_path):
    path = tmp_path / "vague.jsonl"
    texts = [f"precise {i}" for i in range(4)]
    fake.push(reply("vague 0"), reply("vague 1"), error(400, "boom"))  # crash on the third
    async with _client(fake) as client:
        v = LLMVaguenizer(client, path)
        with pytest.raises(LLMRequestError):
            for t in texts:
                await v.vaguenize(t)
    assert len(path.read_text().splitlines()) == 2
    # Simulate a crash mid-write: a torn, half-written last line.
    with path.open("a") as f:
        f.write('{"key": "deadbeef", "vag')
    fake.push(reply("vague 2"), reply("vague 3"))
    async with _client(fake) as client:
        v = LLMVaguenizer(client, path)
        assert v.cache.corrupt_lines == 1
        out = [await v.vaguenize(t) for t in texts]
    assert out == ["vague 0", "vague 1", "vague 2", "vague 3"]
    assert v.stats == {"hits": 2, "misses": 2, "rejected": 0}
    assert len(fake.requests) == 3 + 2
    # The file is readable again after the new appends (the torn line stays isolated).
    reloaded = VagueCache(path)
    assert reloaded.corrupt_lines == 1 and len(reloaded.entries) == 4
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.startswith('{"key": "') and ln.endswith("}")]
    assert len(rows) == 4


@asynctest
async def test_unusable_rewrite_is_rejected_not_cached(fake, tmp_path):
    fake.push(reply("precise x"))
    async with _client(fake) as client:
        v = LLMVaguenizer(client, tmp_path / "c.jsonl")
        with pytest.raises(ValueError, match="unusable"):
            await v.vaguenize("precise x")
        assert v.stats["rejected"] == 1 and v.cache.entries == {}
        with pytest.raises(ValueError):
            await v.vaguenize("  ")


@asynctest
async def test_vaguenize_many_caches_the_successes_before_raising(fake, tmp_path):
    path = tmp_path / "many.jsonl"
    fake.responder = lambda body: (
        error(400, "no") if body["messages"][1]["content"] == "bad" else reply("vague " + body["messages"][1]["content"])
    )
    async with _client(fake) as client:
        v = LLMVaguenizer(client, path)
        with pytest.raises(LLMRequestError):
            await v.vaguenize_many(["a", "bad", "c"])
    assert sorted(VagueCache(path).entries.values()) == ["vague a", "vague c"]
