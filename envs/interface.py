"""The agent's interface: what the ask tool is called, how tools are shown, in which role tool
outputs come back, and how many calls of a turn run (`AgentInterface`, the run config's
`rollout.episode.interface`).

Two settings of it matter (`ppp_jax.config.profiles`):

  paper (default)   `ask_user(question)`, `finish(answer)`; tools passed to the chat template's
                    `tools` (the model's own tool format); observations in the `tool` role;
                    every call of a turn runs, up to `finish`.
  released          the interface the released PPP-36B checkpoint learned (envs/userville.py,
                    envs/repo_env.py, agents/ppp_agent.py of sunnweiwei/PPP-Agent):
                    `ask_question(query)`, `finish(message, answer)`; tools described as text
                    in the system prompt, OpenHands style (`openhands_tool_text`), and none
                    passed to the template; observations as `user` messages; only the first
                    call of a turn runs.

Only the agent's side changes: the episode records every ask call as a `Question` whatever the
tool's name, and the trajectory judges accept both names (`envs.judges.ASK_TOOL_NAMES`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal, Mapping, Sequence

from ppp_jax.envs.domains.base import ASK_USER, FINISH, function_tool

ASK_QUESTION = "ask_question"


@dataclasses.dataclass(frozen=True)
class AgentInterface:
    """How the agent's tools are named, shown and run (see the module docstring).

    ask_tool: "ask_user" (argument `question`) or "ask_question" (argument `query`).
    finish_message: `finish` also takes an optional `message` (the released signature,
      finish(message, answer)); the answer is still `answer`.
    tools_in: "template" (the chat template's `tools`) or "system_text" (OpenHands-style text
      appended to the system prompt; the template gets no tools).
    observation_role: the role of tool outputs, simulator replies and nudges: "tool" or "user".
    calls_per_turn: "all" (every call, up to finish), "first" (only the first call runs) or
      "released" (the released environments: the first call alone when it is the ask tool or
      the task is SWE; in search every call but the ask calls). Calls not run are dropped and
      counted in `record.stats["dropped_extra_calls"]` (see `calls_to_run`).
    """

    ask_tool: Literal["ask_user", "ask_question"] = "ask_user"
    finish_message: bool = False
    tools_in: Literal["template", "system_text"] = "template"
    observation_role: Literal["tool", "user"] = "tool"
    calls_per_turn: Literal["all", "first", "released"] = "all"

    @property
    def ask_argument(self) -> str:
        """The ask tool's one argument: "question" or "query"."""
        return "question" if self.ask_tool == ASK_USER else "query"


def calls_to_run(names: Sequence[str], interface: AgentInterface, task_family: str) -> list[bool]:
    """Which of a message's calls (by tool name, in order) run under `interface.calls_per_turn`.

    "released" follows envs/userville.py (`fn_call[0]` is an ask_question: only it runs), then
    the base environment: envs/repo_env.py runs the first call only, envs/search_env.py loops
    over every call and has no branch for ask_question (so later ask calls do nothing).
    """
    mode = interface.calls_per_turn
    if mode == "all" or not names:
        return [True] * len(names)
    first_only = [True] + [False] * (len(names) - 1)
    if mode == "first" or names[0] == interface.ask_tool or task_family != "search":
        return first_only
    return [n != interface.ask_tool for n in names]


def ask_schema(interface: AgentInterface) -> dict[str, Any]:
    """The ask tool's schema under `interface` (OpenAI function-tool dict)."""
    arg = interface.ask_argument
    return function_tool(
        interface.ask_tool,
        "Ask the user a question when the task is unclear or information is missing. The user "
        "answers briefly. Asking costs the user effort: ask only when needed, and ask in the way "
        "the user prefers.",
        {arg: {"type": "string", "description": "The question for the user."}},
        [arg])


def with_finish_message(schemas: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`schemas` with an optional `message` parameter added to `finish` (a copy; other tools
    unchanged), as in the released finish(message, answer)."""
    out = []
    for s in schemas:
        s = json.loads(json.dumps(s))  # deep copy of plain JSON data
        fn = s.get("function", {})
        if fn.get("name") == FINISH:
            params = fn.setdefault("parameters", {"type": "object", "properties": {}})
            props = {"message": {"type": "string",
                                 "description": "A short message to the user about the result."}}
            props.update(params.get("properties", {}))
            params["properties"] = props
        out.append(s)
    return out


def openhands_tool_text(tools: Sequence[Mapping[str, Any]]) -> str:
    """The tools as text for the system prompt, in the layout of OpenHands' text tool calling
    (numbered BEGIN/END FUNCTION blocks, one line per parameter, then the call format
    `<function=NAME>\\n<parameter=K>V</parameter>\\n</function>`). Our wording."""
    lines = ["You can use the following functions:", ""]
    for i, tool in enumerate(tools, 1):
        fn = tool["function"]
        lines.append(f"---- BEGIN FUNCTION #{i}: {fn['name']} ----")
        lines.append(f"Description: {fn.get('description', '').strip()}")
        props = fn.get("parameters", {}).get("properties", {})
        required = set(fn.get("parameters", {}).get("required", []))
        if props:
            lines.append("Parameters:")
            for j, (name, spec) in enumerate(props.items(), 1):
                kind = spec.get("type", "string")
                need = "required" if name in required else "optional"
                desc = spec.get("description", "")
                enum = f" Allowed values: {spec['enum']}." if "enum" in spec else ""
                lines.append(f"  ({j}) {name} ({kind}, {need}): {desc}{enum}".rstrip())
        else:
            lines.append("No parameters are required for this function.")
        lines.append(f"---- END FUNCTION #{i} ----")
        lines.append("")
    lines += [
        "To call a function, reply with exactly this format and nothing after it:",
        "",
        "<function=example_function_name>",
        "<parameter=example_parameter_1>value_1</parameter>",
        "<parameter=example_parameter_2>",
        "a value that may span",
        "several lines",
        "</parameter>",
        "</function>",
        "",
        "Rules:",
        "- A call starts with <function= and ends with </function>.",
        "- Give every required parameter.",
        "- Call one function per message.",
        "- You may reason in plain text before the call, never after it.",
    ]
    return "\n".join(lines)
