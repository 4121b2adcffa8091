"""The agent's view of a task domain: tools kept, system prompt replaced, the user's preference
appended to the first message (`PreferenceDomain`); the simulator still sees the task's
untouched precise prompt."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Mapping, Sequence

from ppp_jax.envs.domains.base import FINISH, PromptKind, Task, TaskDomain
from ppp_jax.envs.preferences import get_preference

PREFERENCE_NOTE = ("About the user: this is how they describe what they want from you when you "
                   "ask them something (\"you\" is the user): {instruction}")


class PreferenceDomain:
    """A task domain as the agent sees it in PPP (see the module docstring).

    Args:
      domain: the underlying domain (tools, scoring).
      tools: names of the domain tools to keep (finish always kept); empty = all.
      system_prompt: replacement system prompt; "" = the domain's.
      show_preference: append `PREFERENCE_NOTE` for the task's `metadata["preference_id"]`.
      preference_first: put the note before the task text instead (the message then ends with
        the task's own last sentence).
    """

    def __init__(self, domain: TaskDomain, *, tools: Sequence[str] = (), system_prompt: str = "",
                 show_preference: bool = True, preference_first: bool = False):
        self.inner = domain
        self.name = domain.name
        self.task_family = domain.task_family
        self.finish_needs_answer = getattr(domain, "finish_needs_answer", True)
        self.tools = tuple(tools)
        self._system_prompt = system_prompt
        self.show_preference = show_preference
        self.preference_first = preference_first

    def system_prompt(self, task: Task) -> str:
        return self._system_prompt or self.inner.system_prompt(task)

    def first_message(self, task: Task, kind: PromptKind) -> str:
        text = self.inner.first_message(task, kind)
        pref = task.metadata.get("preference_id")
        if self.show_preference and pref:
            note = PREFERENCE_NOTE.format(instruction=get_preference(pref).instruction)
            text = f"{note}\n\n{text}" if self.preference_first else f"{text}\n\n{note}"
        return text

    def tool_schemas(self, task: Task) -> list[dict[str, Any]]:
        schemas = self.inner.tool_schemas(task)
        if not self.tools:
            return schemas
        keep = set(self.tools) | {FINISH}
        return [s for s in schemas if s["function"]["name"] in keep]

    async def run_tool(self, task: Task, name: str, args: Mapping[str, Any],
                       state: dict[str, Any]) -> str:
        if self.tools and name not in set(self.tools) | {FINISH}:
            return f"ERROR: unknown tool '{name}'."
        return await self.inner.run_tool(task, name, args, state)

    async def score(self, task: Task, answer: str | None) -> float:
        return await self.inner.score(task, answer)

    async def score_details(self, task: Task, answer: str | None) -> tuple[float, Any]:
        """The inner domain's (score, details) when it explains its scores, else (score, None)."""
        inner = getattr(self.inner, "score_details", None)
        if inner is not None:
            return await inner(task, answer)
        return await self.inner.score(task, answer), None

    async def close_episode(self, task: Task, state: dict[str, Any]) -> None:
        """The inner domain's end-of-episode cleanup, if it has one."""
        close = getattr(self.inner, "close_episode", None)
        if close is not None:
            result = close(task, state)
            if inspect.isawaitable(result):
                await result

    def check_finish(self, task: Task, args: Mapping[str, Any], state: dict[str, Any]) -> Any:
        return self.inner.check_finish(task, args, state)


def for_user(task: Task, preference_id: str) -> Task:
    """The task with the user's preference id in its metadata (read by `PreferenceDomain`)."""
    return dataclasses.replace(task, metadata={**dict(task.metadata), "preference_id": preference_id})
