"""The agent's view of a task domain: tools kept, system prompt replaced, the user's preference
appended to the first message (`PreferenceDomain`); the simulator still sees the task's
untouched precise prompt."""

from __future__ import annotations

import dataclasses
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
    """

    def __init__(self, domain: TaskDomain, *, tools: Sequence[str] = (), system_prompt: str = "",
                 show_preference: bool = True):
        self.inner = domain
        self.name = domain.name
        self.task_family = domain.task_family
        self.tools = tuple(tools)
        self._system_prompt = system_prompt
        self.show_preference = show_preference

    def system_prompt(self, task: Task) -> str:
        return self._system_prompt or self.inner.system_prompt(task)

    def first_message(self, task: Task, kind: PromptKind) -> str:
        text = self.inner.first_message(task, kind)
        pref = task.metadata.get("preference_id")
        if self.show_preference and pref:
            text += "\n\n" + PREFERENCE_NOTE.format(instruction=get_preference(pref).instruction)
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

    def check_finish(self, task: Task, args: Mapping[str, Any], state: dict[str, Any]) -> Any:
        return self.inner.check_finish(task, args, state)


def for_user(task: Task, preference_id: str) -> Task:
    """The task with the user's preference id in its metadata (read by `PreferenceDomain`)."""
    return dataclasses.replace(task, metadata={**dict(task.metadata), "preference_id": preference_id})
