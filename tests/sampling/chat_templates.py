"""Released chat templates as test data, and small local tokenizers that carry them.

`templates/llama3_1_instruct.jinja` is the chat template of Meta's Llama 3.1 Instruct checkpoints
(`tokenizer_config.json`'s `chat_template`; 3.2 / 3.3 differ only in taking today's date from
`strftime_now` when no `date_string` is given, and 3.2 drops the builtin-tool lines);
`templates/qwen2_5_instruct.jinja` is Qwen2.5 Instruct's. The two Qwen3 templates are the released
text as copied into public repositories (no network here; the stored copies were found with the
code search):
  * `templates/qwen3_hybrid.jinja`: Qwen3's first release (the hybrid thinking models, e.g.
    Qwen3-0.6B / -8B; `enable_thinking` switch), from the `qwen3_chat_template` string of
    github.com/wangling03/BioReason `bioreason/models/dl/chat_template_dl.py` (commit 9153dfb).
  * `templates/qwen3_thinking.jinja`: the later revision (`message.content is string`,
    `reasoning_content is string`) of a Qwen3-4B 2507 thinking checkpoint, whose generation
    prompt opens `<think>`, from the `chat_template` of the `tokenizer_config.json` quoted in
    github.com/akougkas/warpio-cli `warpio-docs/ai-docs/model_cards/qwen3:4b.md` (commit 8dde6d2).
All are kept verbatim so that our formats are compared with what the models were trained on; no
tokenizer or weights are downloaded: `template_tokenizer` trains a byte-level BPE on a few words
and wraps it as a transformers tokenizer with the family's special tokens and the template.
"""

from __future__ import annotations

from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"

# The tools the chat-format tests render and parse calls against (OpenAI function-tool dicts).
TOOLS = [{"type": "function", "function": {
    "name": "view_file", "description": "Show lines of a file.",
    "parameters": {"type": "object", "properties": {
        "path": {"type": "string"}, "start_line": {"type": "integer"},
        "flags": {"type": "array"}}, "required": ["path"]}}},
    {"type": "function", "function": {"name": "finish", "parameters": {
        "type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}}}]

LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>",
                   "<|finetune_right_pad_id|>")
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>",
                 "<tool_response>", "</tool_response>")


def template_text(name: str) -> str:
    """The released template `templates/{name}.jinja`."""
    return (TEMPLATES / f"{name}.jinja").read_text()


def template_tokenizer(specials, template: str, *, bos: str | None, eos: str, pad: str | None = None):
    """A transformers `PreTrainedTokenizerFast` (byte-level BPE, vocabulary ~400) whose special
    tokens are `specials` (each one id) and whose chat template is `template`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["the user asks for a function call with parameters and arguments",
              "view_file path start_line finish answer grep pattern", '{"name": "x"}']
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=list(specials), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    kwargs = {"eos_token": eos}
    if bos:
        kwargs["bos_token"] = bos
    if pad:
        kwargs["pad_token"] = pad
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    hf.chat_template = template
    return hf


def llama3_tokenizer():
    """A local tokenizer with Llama 3's special tokens and the Llama 3.1 Instruct template."""
    return template_tokenizer(LLAMA3_SPECIALS, template_text("llama3_1_instruct"),
                              bos="<|begin_of_text|>", eos="<|eot_id|>")


def qwen_tokenizer():
    """A local tokenizer with Qwen2.5's special tokens and the Qwen2.5 Instruct template."""
    return template_tokenizer(QWEN_SPECIALS, template_text("qwen2_5_instruct"), bos=None,
                              eos="<|im_end|>", pad="<|endoftext|>")


QWEN3_SPECIALS = QWEN_SPECIALS + ("<think>", "</think>")


def qwen3_tokenizer(template: str = "qwen3_hybrid"):
    """A local tokenizer with Qwen3's special tokens and a Qwen3 template (`qwen3_hybrid` or
    `qwen3_thinking`)."""
    return template_tokenizer(QWEN3_SPECIALS, template_text(template), bos=None,
                              eos="<|im_end|>", pad="<|endoftext|>")
