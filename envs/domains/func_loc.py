"""The function-localization task domain shared by SWE-Func-Loc and the stdlib domain.

The agent reads a repository through the read-only tools of `repo_tools` and answers with
`finish(answer=...)`, one `path/to/file.py:function` or `path/to/file.py:Class.method` per line.
The score is the set F1 of `base.location_f1` (the reference's path normalization).

Subclasses (or callers) only say where each task's tree is: `FuncLocDomain(root_for=...)`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
from typing import Any, Callable, Literal, Mapping

from ppp_jax.envs.domains.base import FINISH, PromptKind, Task, function_tool, location_f1
from ppp_jax.envs.domains.repo_limits import CallBudget
from ppp_jax.envs.domains.repo_tools import Limits, RepoTools, repo_tool_schemas

TOOL_THREAD_NAME = "repo-tool"  # the worker thread of one repository tool call

ToolStyle = Literal["native", "openhands", "both"]


@dataclasses.dataclass(frozen=True)
class RepoToolsSection:
    """Config key shared by the function-localization domains (stdlib_loc, swe_func_loc).

    tool_style: "native" | "openhands" | "both" repository tools.
    shell_whitelist: execute_bash's commands: "paper" (ours) or "released" (adds cut, a subset
      of awk, and git, as the released server allows; `repo_limits.BASH_WHITELISTS`).
    """

    tool_style: ToolStyle = "native"
    shell_whitelist: Literal["paper", "released"] = "paper"


SYSTEM_PROMPT = """You are a software engineering agent that localizes problems in a code base.
You work in a read-only copy of the repository, mounted at /testbed; use the tools to explore it.
Nothing can be modified and no code can be run.

Your task: find the functions or methods that must be edited to resolve the user's issue.
When you are done, call `finish` with `answer` set to one location per line, each written as
`path/to/file.py:function_name` or `path/to/file.py:ClassName.method_name`, paths relative to the
repository root. List only the functions that need editing.

If the issue is unclear or information is missing, you may ask the user with `ask_user`, but
every question costs the user effort: ask only when needed, and in the way the user prefers.
Call tools one or more at a time; think before you act."""

FINISH_DESCRIPTION = ("Submit the final answer and end the task. `answer`: one location per line, "
                      "`path/to/file.py:function` or `path/to/file.py:Class.method`.")


class FuncLocDomain:
    """A function-localization domain over per-task repository trees.

    Args:
      name: the domain name stored in records ("swe_func_loc", "stdlib_loc").
      root_for: task -> directory the tools may read (materialized on first use by the caller).
      tool_style: "native" (view_file, list_dir, find_files, grep), "openhands" (execute_bash,
        str_replace_editor, think) or "both".
      limits: tool caps.
      system_prompt: override of the default system prompt.
    """

    def __init__(self, name: str, root_for: Callable[[Task], str], tool_style: ToolStyle = "native",
                 limits: Limits = Limits(), system_prompt: str = SYSTEM_PROMPT):
        self.name = name
        self.task_family = "swe"
        self._root_for = root_for
        self.tool_style = tool_style
        self.limits = limits
        self._system_prompt = system_prompt

    @functools.lru_cache(maxsize=64)  # noqa: B019 -- one RepoTools per tree, domain-lifetime cache
    def _tools_at(self, root: str) -> RepoTools:
        return RepoTools(root, self.limits)

    def tools_for(self, task: Task) -> RepoTools:
        """The confined tools over this task's tree."""
        return self._tools_at(str(self._root_for(task)))

    def system_prompt(self, task: Task) -> str:
        return self._system_prompt

    def first_message(self, task: Task, kind: PromptKind) -> str:
        return task.prompt(kind)

    def tool_schemas(self, task: Task) -> list[dict[str, Any]]:
        schemas = repo_tool_schemas(self.tool_style, self.limits.bash_commands)
        if self.tool_style != "native":
            schemas.append(function_tool("think", "Write down a thought; it has no effect.",
                                         {"content": {"type": "string"}}, ["content"]))
        schemas.append(function_tool(FINISH, FINISH_DESCRIPTION,
                                     {"answer": {"type": "string"}}, ["answer"]))
        return schemas

    async def run_tool(self, task: Task, name: str, args: Mapping[str, Any],
                       state: dict[str, Any]) -> str:
        """Runs a repository tool in its own worker thread (materializing the tree, file reads and
        regexes all block) under one `CallBudget` of `limits.call_timeout_s`, which starts once
        the tree is materialized (a one-off per snapshot, shared by every episode). If the caller
        stops waiting (the episode's tool timeout cancels this coroutine), the budget is cancelled
        and the thread stops at its next check instead of running on."""
        if name == "think":
            return "Your thought has been recorded. Please continue your work."
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()
        cancelled = threading.Event()

        def deliver(result: str | BaseException) -> None:
            if done.done():
                return
            if isinstance(result, BaseException):
                done.set_exception(result)
            else:
                done.set_result(result)

        def work() -> None:
            try:
                result: str | BaseException = self._call(task, name, args, state, cancelled)
            except BaseException as e:  # noqa: BLE001 -- handed to the awaiting coroutine
                result = e
            try:
                loop.call_soon_threadsafe(deliver, result)
            except RuntimeError:
                pass  # the loop has closed: nobody is waiting

        threading.Thread(target=work, name=TOOL_THREAD_NAME, daemon=True).start()
        try:
            return await done
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def _call(self, task: Task, name: str, args: Mapping[str, Any], state: dict[str, Any],
              cancelled: threading.Event | None = None) -> str:
        try:
            tools = self.tools_for(task)
        except Exception as e:  # noqa: BLE001 -- a missing checkout must not kill the episode
            return f"ERROR: the repository for this task is unavailable: {type(e).__name__}: {e}"
        return tools.call(name, args, state, CallBudget(self.limits.call_timeout_s, cancelled))

    async def score(self, task: Task, answer: str | None) -> float:
        return location_f1(answer, task.gold)

    def check_finish(self, task: Task, args: Mapping[str, Any], state: dict[str, Any]) -> None:
        return None  # any non-empty answer is scored
