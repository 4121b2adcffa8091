"""Engine policies of the rollout: seeds derived from episode ids (order-independent), and GRPO
groups pinned to engine replicas by a stable hash."""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

from ppp_jax.envs.policy import EnginePolicy, EngineSampling, EngineSession


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from any printable parts (stable across processes and runs)."""
    h = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


class SeededEnginePolicy(EnginePolicy):
    """`EnginePolicy` whose per-episode sampling seed is `derive_seed(base, episode_id)`.

    The base policy numbers sessions in the order they start; under concurrency and retries that
    order is not a function of the data, so seeds are derived from the episode id instead.
    """

    def __init__(self, engine: Any, tokenizer: Any, sampling: EngineSampling = EngineSampling(),
                 base_seed: int = 0, generation_prefix: str = ""):
        super().__init__(engine, tokenizer, sampling, generation_prefix)
        self.base_seed = base_seed

    def start(self, episode_id: str) -> EngineSession:
        seed = derive_seed(self.base_seed, episode_id)
        return EngineSession(self, f"{episode_id}@{seed}", seed)


def episode_group_key(episode_id: str) -> str:
    """The part of an episode id that all of its group's episodes share.

    `run_requests` names episodes "{seed}|{group}|{sample}|{attempt}"; this drops the last two
    fields, so the G samples of a group and their retries map to the same key. An id of another
    shape is its own key.
    """
    head, sep, _ = episode_id.rpartition("|")
    head, sep2, _ = head.rpartition("|")
    return head if sep and sep2 and head else episode_id


def replica_for(key: str, num_replicas: int) -> int:
    """The engine replica, in [0, num_replicas), that serves `key`: a stable hash (the same in
    every process and run), so a run is reproducible for a fixed replica count."""
    if num_replicas < 1:
        raise ValueError(f"replica_for: num_replicas={num_replicas} must be >= 1")
    return derive_seed("replica", key) % num_replicas


class _OnReplica:
    """What an `EngineSession` reads from its policy (chat, sampling, generation_prefix), taken
    from `parent`, with `engine` one replica: the session then generates and ends its KV
    session on that replica only."""

    def __init__(self, parent: EnginePolicy, engine: Any):
        self._parent = parent
        self.engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parent, name)


class ReplicaEnginePolicy(SeededEnginePolicy):
    """`SeededEnginePolicy` over several engine replicas (`rollout.engine_layout: sampling`).

    Each episode runs on one replica, chosen by `replica_for(episode_group_key(episode_id))`:
    all samples of a GRPO group (and their retries) land on the same replica, where they share
    the cached prefix of their common first prompt, and the choice does not depend on the order
    in which concurrent episodes start. Seeds are `SeededEnginePolicy`'s (from the episode id),
    so a sample's tokens do not depend on which replica runs it beyond the replica's numerics.
    The price of hashing groups is load balance: with few groups per replica some replicas get
    more groups than others (the slowest one sets the rollout time).

    Args:
      engines: the replicas (each with `generate` and `end_session`, like `Engine`).
      tokenizer / sampling / base_seed / generation_prefix: as `SeededEnginePolicy`.

    `sessions_per_replica[i]` counts the episodes (attempts included) started on replica i.
    `engine` is the first replica (for code that reads one engine's config).
    """

    def __init__(self, engines: Sequence[Any], tokenizer: Any,
                 sampling: EngineSampling = EngineSampling(), base_seed: int = 0,
                 generation_prefix: str = ""):
        if not engines:
            raise ValueError("ReplicaEnginePolicy needs at least one engine")
        super().__init__(engines[0], tokenizer, sampling, base_seed, generation_prefix)
        self.engines = list(engines)
        self._views = [_OnReplica(self, e) for e in self.engines]
        self.sessions_per_replica = [0] * len(self.engines)

    def replica_of(self, episode_id: str) -> int:
        """Index of the replica that runs `episode_id`."""
        return replica_for(episode_group_key(episode_id), len(self.engines))

    def start(self, episode_id: str) -> EngineSession:
        seed = derive_seed(self.base_seed, episode_id)
        i = self.replica_of(episode_id)
        self.sessions_per_replica[i] += 1
        return EngineSession(self._views[i], f"{episode_id}@{seed}", seed)
