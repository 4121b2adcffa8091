"""Supervised warm start (`ppp sft`): scripted episodes through the same train step as RL.

Episodes come from the real episode runner, domain and user simulator, driven by a scripted
policy (`InstructBehaviour`) that behaves like an untrained instruct model: it asks on about
half of the vague prompts and rarely on precise ones, mixes cheap, unanswerable and expensive
questions, follows the user's preference about half of the time, and answers with the location
when the prompt or the user's reply names it (else a wrong guess). The recorded conversations
are rendered to tokens exactly as the engine policy would have seen and produced them
(`render_token_view`; checked against `EnginePolicy` in the tests), with loss mask 1 on the
assistant's tokens only.

The SFT update is the PPO step itself with advantage 1 on every assistant token and no
importance correction (on-policy, ratio 1, no clipping active), so its gradient is exactly the
token-mean negative log-likelihood gradient. The batch carries sampler log-probs of 0, so the
step's `logp_abs_diff` metric is the mean NLL per assistant token (reported as `train/nll`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ppp_jax.envs.domains.base import FINISH, Task
from ppp_jax.envs.interface import AgentInterface, ask_schema, with_finish_message
from ppp_jax.envs.episode import EpisodeConfig
from ppp_jax.envs.policy import PolicyTurn, SessionDefaults
from ppp_jax.envs.preferences import HELDOUT_IDS, TRAIN_IDS
from ppp_jax.envs.records import EpisodeRecord, TokenView
from ppp_jax.rollout.orchestrator import EpisodeRequest, run_requests
from ppp_jax.rollout.results import RolloutCounters
from ppp_jax.sampling.chat import ChatTokenizer
from ppp_jax.sampling.chat_format import DEFAULT_FORMAT, ChatFormat, get_format

# ------------------------------------------------------------------------------------------------
# Rendering recorded conversations to tokens
# ------------------------------------------------------------------------------------------------


def render_pieces(messages: Sequence[Mapping[str, Any]], system_block: str,
                  chat_format: str | ChatFormat = DEFAULT_FORMAT,
                  generation_prefix: str = "") -> list[tuple[str, int]]:
    """(text, mask) pieces of a recorded conversation, split where `EngineSession` splits its
    encode calls: all non-assistant turns up to and including the generation prompt and
    `generation_prefix` form one prompt piece (mask 0); each assistant text is one piece
    (mask 1), the closing eos (`<seed:eos>`) excluded. An assistant text that starts with the
    prefix (recorded by an engine policy, which writes it into the turn's text) has it removed:
    the prefix is written once, in the prompt piece, as the engine session does."""
    fmt = get_format(chat_format)
    pieces: list[tuple[str, int]] = []
    pending = system_block
    run: list[Mapping[str, Any]] = []  # the non-assistant messages since the last assistant turn
    for msg in messages[1:]:
        if msg["role"] == "assistant":
            text = msg.get("raw", msg.get("content") or "")
            pieces.append((pending + fmt.render_turns(run) + fmt.generation_prompt()
                           + generation_prefix, 0))
            pieces.append((text.removeprefix(generation_prefix) if generation_prefix else text, 1))
            pending, run = fmt.turn_separator, []
        else:
            run.append(msg)
    return pieces


def render_token_view(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]],
                      chat: ChatTokenizer, generation_prefix: str = "") -> TokenView:
    """The token view an `EngineSession` would have recorded for this conversation, had it
    sampled exactly the assistant texts (`message["raw"]`) followed by the eos (`<seed:eos>`),
    in `chat`'s format, each turn opened with `generation_prefix` (`EnginePolicy`'s).

    Mask 1 on each assistant text's tokens and its eos; 0 elsewhere.
    """
    ids: list[int] = []
    mask: list[int] = []
    starts: list[int] = []
    for text, m in render_pieces(messages, chat.render_system(messages[0]["content"], tools),
                                 chat.format, generation_prefix):
        piece = chat.encode(text) + ([chat.eos_id] if m else [])
        if m:
            starts.append(len(ids))
        ids += piece
        mask += [m] * len(piece)
    return TokenView(tuple(ids), tuple(mask), (0.0,) * len(ids), tuple(starts))


def render_text(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]],
                chat_format: str | ChatFormat = DEFAULT_FORMAT) -> str:
    """The conversation as one string in the chat format (Seed-OSS by default; a
    tokenizer-training corpus; the system block in the tokenizer-free layout of
    `ChatFormat.render_system`)."""
    fmt = get_format(chat_format)
    system = fmt.render_system(messages[0]["content"], tools)
    return "".join(t + (fmt.eos if m else "") for t, m in render_pieces(messages, system, fmt))


# ------------------------------------------------------------------------------------------------
# The scripted "untrained instruct model"
# ------------------------------------------------------------------------------------------------

# Questions by the effort they usually cost the embedded user (it decides, not us):
# low = answerable from the precise prompt, medium = unanswerable, high = asks for the location.
LOW_QUESTIONS = ("What exactly does not behave as documented?",
                 "What goes wrong when it is called?",
                 "What is the documented behaviour that breaks?")
MEDIUM_QUESTIONS = ("Is there a deadline for this fix?",
                    "Which Python version are you on?",
                    "Who first noticed this?")
HIGH_QUESTIONS = ("Which file and function should I fix?",
                  "Where is the code that needs the fix?")

_ITALIAN = {
    LOW_QUESTIONS[0]: "Che cosa esattamente non funziona come descritto nella documentazione?",
    LOW_QUESTIONS[1]: "Che cosa va storto quando viene chiamata?",
    LOW_QUESTIONS[2]: "Qual è il comportamento documentato che non funziona?",
    MEDIUM_QUESTIONS[0]: "C'è una scadenza per questa correzione?",
    MEDIUM_QUESTIONS[1]: "Quale versione di Python stai usando?",
    MEDIUM_QUESTIONS[2]: "Chi ha notato per primo questo problema?",
    HIGH_QUESTIONS[0]: "Quale file e quale funzione devo correggere?",
    HIGH_QUESTIONS[1]: "Dove si trova il codice da correggere?",
}
_MULTI = ("Hello, I have a question for you. Bonjour, j'ai une petite question pour vous. "
          "Hola, tengo una pregunta para usted. Hallo, ich habe eine kleine Frage an Sie. ")
_OPTIONS = " A) it returns a wrong result B) it raises an exception C) it ignores an argument"


def styled_question(intent: str, preference_id: str, follow: bool, vague_prompt: str = "") -> str:
    """The scripted question for `intent`, written to follow `preference_id` or not."""
    p, q = preference_id, intent
    if p == "concise_question":
        return q if follow else f"I have been reading the report and one detail is unclear to me. {q}"
    if p == "detail_question":
        return (f"I am trying to find the code behind this report, and so far I only have your "
                f"short description, so before I look further I need to know: {q[0].lower()}{q[1:]}"
                if follow else q)
    if p == "do_selection":
        return q + _OPTIONS if follow else q
    if p == "amateur":
        plain = q.replace("file and function", "part").replace("code", "part")
        return plain if follow else f"Quick technical question about the module: {q}"
    if p == "one_question":
        return q if follow else f"{q} And is it urgent?"
    if p == "lang_ita":
        return _ITALIAN.get(q, q) if follow else q
    if p == "lang_multi":
        return _MULTI + (_ITALIAN.get(q, q) + " " + q if follow else q) if follow else q
    if p == "capital":
        return q.upper() if follow else q
    if p == "commas":
        return q.replace(",", "") if follow else f"Sorry, quick one: {q}"
    if p == "json":
        return json.dumps({"question": q}) if follow else q
    if p == "joke":
        return f"{q} No pun intended, haha." if follow else q
    if p == "snippet":
        if not follow:
            return q
        words = vague_prompt.split()[:18]
        lines = [" ".join(words[i:i + 6]) for i in range(0, 18, 6)]
        return "From your report (report.txt):\n" + "".join(f"> {ln}\n" for ln in lines) + q
    if p == "length":
        return f"I read your report. I want to fix the right place. {q}" if follow else q
    return q  # no_preference, professional and trajectory-judged preferences: plain


# The scripted agent's answer when neither the prompt nor the user named the location: a fixed
# "don't know" location (scores 0). A random wrong location would be unlearnable noise for SFT.
GUESS = "unknown.py:unknown"

_DEFINED_RE = re.compile(r"`([\w.]+)\([^`]*\)`, defined in `([\w./-]+\.py)`")
_LOCATION_RE = re.compile(r"\b([\w./-]+\.py:[\w.]+)")


def _module_of(path: str) -> str:
    mod = path[:-3].replace("/", ".")
    return mod[: -len(".__init__")] if mod.endswith(".__init__") else mod


def find_location(text: str) -> str | None:
    """A `path.py:Qual.name` location named in `text` (a prompt or a user's reply), or None."""
    m = _LOCATION_RE.search(text)
    if m:
        return m.group(1)
    m = _DEFINED_RE.search(text)
    if m:
        dotted, path = m.group(1), m.group(2)
        mod = _module_of(path)
        qual = dotted[len(mod) + 1:] if dotted.startswith(mod + ".") else dotted.rsplit(".", 1)[-1]
        return f"{path}:{qual}"
    return None


@dataclasses.dataclass(frozen=True)
class BehaviourConfig:
    """Probabilities of the scripted agent (see `ppp_jax.config.run.SFTSection`)."""

    ask_vague: float = 0.5
    ask_precise: float = 0.1
    follow_preference: float = 0.5
    effort_mix: tuple[float, float, float] = (0.45, 0.2, 0.35)
    seed: int = 0


class InstructBehaviour:
    """A text policy (episode-runner `Policy`) scripted per episode from its task and user.

    Episodes are identified by the group key of `EpisodeRequest` (`<task_id>|<pref>|<kind>|<j>`),
    which `run_requests` puts in the episode id; decisions are drawn from a seed derived from the
    episode id, so the script is deterministic. Tool calls are written in `chat_format`.
    `guess` is the answer when no location was named: one fixed text, or candidates of which each
    episode draws one.
    """

    def __init__(self, tasks: Mapping[str, Task], cfg: BehaviourConfig,
                 guess: str | Sequence[str] = GUESS,
                 chat_format: str | ChatFormat = DEFAULT_FORMAT,
                 interface: AgentInterface = AgentInterface()):
        self.tasks = tasks
        self.interface = interface  # the ask tool's name and argument the script writes
        self.cfg = cfg
        self.guess = guess
        self.format = get_format(chat_format)

    def start(self, episode_id: str) -> _Script:
        _, task_id, pref, kind, *_ = episode_id.split("|")
        rng = random.Random(f"{self.cfg.seed}|{episode_id}")
        return _Script(self, self.tasks[task_id], pref, kind, rng)


class _Script(SessionDefaults):
    def __init__(self, owner: InstructBehaviour, task: Task, pref: str, kind: str, rng: random.Random):
        c = owner.cfg
        self.task, self.pref, self.kind = task, pref, kind
        self.follow = rng.random() < c.follow_preference
        ask = rng.random() < (c.ask_vague if kind == "vague" else c.ask_precise)
        n_questions = 1
        if pref == "no_ask" and self.follow:
            ask = False
        if pref == "answer_more" and self.follow:
            ask, n_questions = True, 3
        self.plan: list[tuple[str, str]] = []
        for _ in range(n_questions if ask else 0):
            bucket = rng.choices((LOW_QUESTIONS, MEDIUM_QUESTIONS, HIGH_QUESTIONS), c.effort_mix)[0]
            intent = rng.choice(bucket)
            self.plan.append((owner.interface.ask_tool,
                              styled_question(intent, pref, self.follow, task.vague_prompt)))
        self.ask_argument = owner.interface.ask_argument
        self.guess = owner.guess if isinstance(owner.guess, str) else rng.choice(owner.guess)
        self.format = self.chat_format = owner.format
        self.seen = ""
        self.stats: dict[str, int] = {}

    async def step(self, messages, tools, max_new_tokens: int) -> PolicyTurn:
        self.seen = "\n".join(str(m.get("content") or "") for m in messages if m["role"] != "system")
        if self.plan:
            name, question = self.plan.pop(0)
            return PolicyTurn(self.format.render_tool_call(name, {self.ask_argument: question}))
        answer = find_location(self.seen) or self.guess
        return PolicyTurn(self.format.render_tool_call(FINISH, {"answer": answer}))

    def token_view(self) -> None:
        return None

    async def close(self) -> None:
        return None


def scripted_requests(tasks: Sequence[Task], n: int, seed: int, preferences: Sequence[str],
                      precise_share: float = 0.25) -> list[EpisodeRequest]:
    """`n` single-episode requests over tasks × preferences × kinds, drawn with `seed`."""
    rng = random.Random(f"scripted|{seed}")
    reqs = []
    for j in range(n):
        task = tasks[j % len(tasks)]
        pref = rng.choice(list(preferences))
        kind = "precise" if rng.random() < precise_share else "vague"
        reqs.append(EpisodeRequest(task, pref, kind, f"{task.task_id}|{pref}|{kind}|{j}", 1))
    return reqs


def generate_scripted_episodes(tasks: Sequence[Task], domain: Any, simulator: Any, *,
                               num_episodes: int, behaviour: BehaviourConfig,
                               include_heldout_styles: bool = True,
                               episode: EpisodeConfig = EpisodeConfig(max_turns=6),
                               chat_format: str | ChatFormat = DEFAULT_FORMAT,
                               guess: str | Sequence[str] = GUESS,
                               ) -> list[EpisodeRecord]:
    """Runs the scripted agent on `tasks` through the real runner, domain and simulator
    (`guess`: its answer when no location was named, see `InstructBehaviour`)."""
    import asyncio

    prefs = list(TRAIN_IDS) + (list(HELDOUT_IDS) if include_heldout_styles else [])
    policy = InstructBehaviour({t.task_id: t for t in tasks}, behaviour, guess=guess,
                               chat_format=chat_format, interface=episode.interface)
    reqs = scripted_requests(tasks, num_episodes, behaviour.seed, prefs)
    groups = asyncio.run(run_requests(reqs, domain, policy, simulator, episode=episode,
                                      concurrency=32, max_retries=0, seed=behaviour.seed,
                                      counters=RolloutCounters()))
    return [r for g in groups for r in g]


def episode_tools(domain: Any, task: Task,
                  interface: AgentInterface = AgentInterface()) -> list[dict[str, Any]]:
    """The tools the chat template rendered in an episode, as the runner builds them: none when
    the interface writes them into the system prompt (that text is in the recorded messages)."""
    if interface.tools_in == "system_text":
        return []
    tools = list(domain.tool_schemas(task)) + [ask_schema(interface)]
    return with_finish_message(tools) if interface.finish_message else tools


def token_views(records: Sequence[EpisodeRecord], domain: Any, tasks: Mapping[str, Task],
                chat: ChatTokenizer, interface: AgentInterface = AgentInterface(),
                generation_prefix: str = "") -> list[TokenView]:
    """Token views of recorded (text-policy) episodes run with `interface`, each assistant turn
    opened with `generation_prefix` (the rollout policy's)."""
    return [render_token_view(r.messages, episode_tools(domain, tasks[r.task_id], interface), chat,
                              generation_prefix)
            for r in records]


def copy_drills(records: Sequence[EpisodeRecord], chat: ChatTokenizer, num: int, seed: int,
                generation_prefix: str = "") -> list[TokenView]:
    """`num` short conversations that practise one skill: copying a named location.

    Each is one line of the recorded episodes' prompts or user replies that names a location (a
    precise prompt's "... (location X) ..." sentence, the user's "It is in X"), as the only user
    turn, answered by `finish` with that location; no system prompt and no tools, so a drill is
    a few dozen tokens. Drawn with `seed`; loss on the answer as in any warm-start episode.
    When some lines end with their location (stdlib `location_last` prompts, a bare location as
    the reply), only those are drilled: the copy is then always from the same distance, the
    form a tiny policy learns (docs/demo.md). Raises ValueError when no line names a location.
    """
    lines = sorted({line.strip() for r in records for m in r.messages[1:]
                    if m["role"] not in ("system", "assistant")
                    for line in str(m.get("content") or "").splitlines() if find_location(line)})
    if not lines:
        raise ValueError("copy drills: no recorded prompt or reply names a location")
    lines = [ln for ln in lines if ln.endswith(find_location(ln))] or lines
    rng = random.Random(f"copy_drills|{seed}")
    views = []
    for _ in range(num):
        line = rng.choice(lines)
        call = chat.format.render_tool_call(FINISH, {"answer": find_location(line)})
        messages = [{"role": "system", "content": ""}, {"role": "user", "content": line},
                    {"role": "assistant", "content": call, "raw": call}]
        views.append(render_token_view(messages, [], chat, generation_prefix))
    return views


def episode_texts(records: Sequence[EpisodeRecord], domain: Any, tasks: Mapping[str, Task],
                  chat_format: str | ChatFormat = DEFAULT_FORMAT,
                  interface: AgentInterface = AgentInterface()) -> Iterator[str]:
    """Each record's whole conversation as chat-format text (a tokenizer-training corpus)."""
    for r in records:
        yield render_text(r.messages, episode_tools(domain, tasks[r.task_id], interface),
                          chat_format)


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------


def swap_locations(view: TokenView, location_ids: np.ndarray, rng: np.random.Generator) -> TokenView:
    """`view` with every location token it contains replaced, consistently, by a random one.

    `location_ids` int [N]: the tokenizer's location tokens (one id per location). Each distinct
    location id of the view maps to a distinct random location id (one draw without replacement),
    everywhere it occurs (prompt, the user's replies, the `finish` answer), so the episode stays
    coherent and its answer can only come from copying the conversation, not from memory. Other
    tokens, the loss mask and log-probs are unchanged; a view without location tokens is returned
    as it is.
    """
    ids = np.asarray(view.token_ids)
    present = np.unique(ids[np.isin(ids, location_ids)])
    if present.size == 0:
        return view
    new = rng.choice(location_ids, size=present.size, replace=False)
    lookup = dict(zip(present.tolist(), new.tolist()))
    swapped = tuple(lookup.get(t, t) for t in view.token_ids)
    return dataclasses.replace(view, token_ids=swapped)


class SFTBatches:
    """Deterministic, resumable batches of SFT token views (an iterator for `loop.run_loop`).

    Each epoch is a seeded permutation of the examples; `get_state`/`set_state` carry the number
    of batches consumed. `augment(view, rng)`, if given, rewrites each drawn view with a generator
    seeded by (seed, batch number), so a resumed run draws the same batches.
    """

    def __init__(self, views: Sequence[TokenView], batch_size: int, seed: int,
                 augment: Callable[[TokenView, np.random.Generator], TokenView] | None = None):
        if not views:
            raise ValueError("no SFT examples")
        self.views = list(views)
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.count = 0

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.views))

    def __iter__(self):
        return self

    def __next__(self) -> list[TokenView]:
        per_epoch = max(1, len(self.views) // self.batch_size)
        epoch, k = divmod(self.count, per_epoch)
        idx = self._order(epoch)[k * self.batch_size:(k + 1) * self.batch_size]
        batch = [self.views[i] for i in idx]
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.count, 1])
            batch = [self.augment(v, rng) for v in batch]
        self.count += 1
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"count": self.count, "n": len(self.views), "batch_size": self.batch_size}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("n") != len(self.views) or state.get("batch_size") != self.batch_size:
            raise ValueError(f"SFT data changed since the checkpoint: {state} vs "
                             f"n={len(self.views)} batch_size={self.batch_size}")
        self.count = int(state["count"])


def sft_batch(views: Sequence[TokenView], row_len: int, rows_multiple: int, pad_token_id: int = 0,
              weighted_ids: np.ndarray | None = None, weight: float = 1.0):
    """Packed token batch with advantage 1 and sampler log-probs 0 (see the module docstring).

    `weighted_ids` int [N], `weight`: a trained token whose id is one of these gets advantage
    `weight` instead of 1, i.e. that weight in the token-mean NLL (the denominator still counts
    it once). The demo weights its location tokens: with every answer token weighted 1, the
    one token that must be copied is learned far more slowly than the template around it
    (docs/demo.md, "A format the tiny policy can solve").
    """
    from ppp_jax.rl.batch import assemble_batch

    batch = assemble_batch(views, np.ones(len(views)), row_len=row_len,
                           rows_multiple=rows_multiple, pack=True, pad_token_id=pad_token_id)
    if weighted_ids is None or weight == 1.0:
        return batch
    hit = np.isin(batch.targets, weighted_ids) & (batch.loss_mask > 0)
    return batch.replace(advantages=np.where(hit, np.float32(weight), batch.advantages))


def train_sft(model: Any, views: Sequence[TokenView], *, run_dir: str | Path, num_steps: int,
              batch_size: int, learning_rate: float, warmup_steps: int = 0,
              weight_decay: float = 0.0, row_len: int, seed: int = 0, save_every: int = 50,
              progress: bool = True, num_micro_batches: int = 1, rows_multiple: int = 8,
              freeze: Any = None,
              augment: Callable[[TokenView, np.random.Generator], TokenView] | None = None,
              weighted_ids: np.ndarray | None = None, weight: float = 1.0) -> Any:
    """SFT of `model` on `views` through `make_train_step`; resumable from `<run_dir>/checkpoints`.

    Returns (final params (an `nnx.State`), steps done); fewer steps than `num_steps` means the
    run was stopped (SIGTERM or SIGINT) and can be resumed. Metrics go to
    `<run_dir>/metrics.jsonl`. Raises `loop.RunFolderError` when `run_dir` has metrics but no
    checkpoint, `CheckpointError` when no checkpoint is intact (two are kept). `freeze` (a
    `FreezeConfig`, default none) leaves the bottom layers / embeddings untouched, as in RL.
    `augment` rewrites each drawn example (`SFTBatches`; e.g. `swap_locations`).
    `weighted_ids` / `weight`: tokens whose NLL counts `weight` times (`sft_batch`).
    """
    import jax
    import jax.numpy as jnp

    from ppp_jax.config.rl import FreezeConfig, OptimConfig, RLConfig
    from ppp_jax.rl.optim import make_optimizer
    from ppp_jax.rl.train_step import TrainState, make_train_step, split_model
    from ppp_jax.train import loop
    from ppp_jax.train.checkpointing import CheckpointManager, abstract_like
    from ppp_jax.train.metrics import make_writer

    too_long = [i for i, v in enumerate(views) if len(v.token_ids) - 1 > row_len]
    if too_long:
        raise ValueError(f"{len(too_long)} SFT examples exceed row_len={row_len} tokens "
                         f"(longest {max(len(views[i].token_ids) for i in too_long)})")
    rl = RLConfig(optim=OptimConfig(learning_rate=learning_rate, weight_decay=weight_decay,
                                    warmup_steps=warmup_steps, total_steps=max(num_steps, 1),
                                    schedule="cosine", final_lr_ratio=0.1),
                  num_micro_batches=num_micro_batches, logprob_chunk_size=min(row_len, 512),
                  freeze=freeze if freeze is not None else FreezeConfig())
    graphdef, params = split_model(model)
    optimizer = make_optimizer(rl.optim)
    step = make_train_step(graphdef, rl, optimizer)
    pad = model.config.pad_token_id

    def init():
        return loop.LoopState(0, TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32),
                                            jnp.zeros((), jnp.int32)), jax.random.key(seed))

    def step_fn(state, batch_views):
        rows = math.lcm(rows_multiple, num_micro_batches)
        batch = jax.tree.map(jnp.asarray, sft_batch(batch_views, row_len, rows, pad,
                                                     weighted_ids, weight))
        new, m = step(state.train, batch)
        m = jax.device_get(m)
        out = {"train/nll": float(m["logp_abs_diff"]), "train/grad_norm": float(m["grad_norm"]),
               "train/learning_rate": float(m["learning_rate"]),
               "train/loss_tokens": float(m["loss_tokens"]), "train/rows": float(batch.shape[0])}
        return state.replace(train=new), out

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    scalar = jax.ShapeDtypeStruct((), jnp.int32)
    abstract = loop.LoopState(0, TrainState(abstract_like(params), jax.eval_shape(optimizer.init, params),
                                            scalar, scalar), jax.random.key(0))
    # keep=2: a damaged latest step falls back to the one before
    with CheckpointManager(run_dir / "checkpoints", save_every=save_every, keep=2) as ckpt:
        loop.check_run_folder(run_dir, ckpt, history=("metrics.jsonl",))
        final = loop.run_loop(init, SFTBatches(views, batch_size, seed, augment), step_fn,
                              num_steps=num_steps, ckpt=ckpt,
                              writer=make_writer(run_dir, tensorboard=False),
                              abstract_state=abstract, progress=progress)
    return final.train.params, final.step
