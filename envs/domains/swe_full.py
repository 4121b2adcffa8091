"""SWE-Full: the agent edits the repository until the issue is fixed; the instance's tests decide.

Data: SWE-bench / SWE-Gym rows, the same as SWE-Func-Loc (`repo, instance_id, base_commit, patch,
test_patch, problem_statement, FAIL_TO_PASS, PASS_TO_PASS, version, environment_setup_commit`;
the test lists may be JSON strings), read and checked by `swe_func_loc.check_swe_rows`. A row
whose FAIL_TO_PASS is empty, whose commit is missing from the clone, or whose gold patch edits no
file is dropped and counted. Prompts as in Func-Loc (the row's `vague_prompt` or the rule
vaguenizer). The simulator's hidden information is the gold patch's files and functions and, for
high-effort answers, the gist of the fix (the gold patch's changed lines, cut to 40 lines).

Tools (OpenHands style): `execute_bash(command, timeout?)` runs in the episode's sandbox (one
bash per command; the working directory carries over between commands, shell variables do not),
`str_replace_editor` (view / create / str_replace / insert / undo_edit, `swe_editor.FileEditor`
on the same copy), `think`, and `finish(message?)`. The episode's answer is not text: at
`finish`, the copy's `git diff` against base_commit (test files left out) becomes the answer,
and that patch is graded (`swe_grading.grade_patch`, or the SWE-bench harness with the docker
backend). The score is 1 if resolved, else 0; the share of FAIL_TO_PASS passing and the reason
go into the episode's `score_details`. An episode that never calls finish submits nothing.

Sandboxes (`sandbox.backend`): `local` (bubblewrap, one private copy per episode, the
repository's Python environment built once per `repo@environment_setup_commit`) or `docker`
(the official SWE-bench images and harness). The sandbox is made at the episode's first tool
call and removed when the episode ends (`close_episode`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal, Mapping

from ppp_jax.envs.domains.base import FINISH, PromptKind, Task, function_tool, truncate_observation
from ppp_jax.envs.domains.gold_functions import PatchError, gold_functions
from ppp_jax.envs.domains.registry import register_domain
from ppp_jax.envs.domains.rows import DataError, DropReport
from ppp_jax.envs.domains.swe_editor import FileEditor, editor_schema
from ppp_jax.envs.domains.swe_func_loc import (
    RepoCache,
    check_swe_rows,
    load_located_swe_rows,
    parse_test_list,
)
from ppp_jax.envs.domains.swe_grading import GRADE_LIMITS, DEFAULT_TEST_COMMAND, Grade, grade_patch
from ppp_jax.envs.sandbox.base import MOUNT, SandboxLimits, SandboxUnavailable

log = logging.getLogger(__name__)

DOMAIN = "swe_full"
SANDBOX = "swe_full_sandbox"  # keys of the episode's `state`
EDITOR = "swe_full_editor"
CWD = "swe_full_cwd"

NO_TESTS = "lists no FAIL_TO_PASS test"
NO_COMMIT = "base_commit not in the local clone"
EMPTY_PATCH = "gold patch changes no file"

SYSTEM_PROMPT = """You are a software engineering agent. The user's repository is checked out at /testbed,
with a Python environment in which its code and tests run. Your task: edit the repository so
that the user's issue is resolved.

Work in steps: explore the code (`execute_bash`, `str_replace_editor view`), reproduce the
problem, make the smallest change to non-test files that fixes it (`str_replace_editor`), and
run the relevant tests to check it. Edits to test files are not kept: the maintainers' tests
decide. When you are done, call `finish`; your changes to the repository are your answer.
There is no network access.

If the issue is unclear or information is missing, you may ask the user with `ask_user`, but
every question costs the user effort: ask only when needed, and in the way the user prefers."""

_MARK = "__PPP_CWD__"


def _bash_schema() -> dict[str, Any]:
    return function_tool(
        "execute_bash",
        "Run a bash command in the repository's sandbox (no network). Each call starts a new "
        "shell in the directory the previous call ended in; variables do not carry over. "
        "Long-running commands are stopped at the timeout.",
        {"command": {"type": "string", "description": "The bash command to run."},
         "timeout": {"type": "integer",
                     "description": "Seconds before the command is stopped (optional)."}},
        ["command"])


@dataclasses.dataclass(frozen=True)
class SweFullSettings:
    """How SWE-Full episodes run (the `domain.swe_full_*` keys resolve to this).

    backend: "local" (bubblewrap) or "docker" (SWE-bench images and harness).
    work_dir: where episode copies, grading copies and environments live.
    command_timeout_s: default wall-clock limit of one `execute_bash` call (the agent may ask for
      less or up to `max_command_timeout_s`).
    max_command_timeout_s: the most an agent may ask for.
    grade_timeout_s: wall-clock limit of a grading test run.
    memory_gb: address space per process inside the sandbox.
    test_command: the local backend's test command; `{tests}` becomes the test files.
    env_setup_command / env_setup_network: run once per environment (`EnvironmentSettings`).
    """

    backend: Literal["local", "docker"] = "local"
    work_dir: str = ""
    command_timeout_s: float = 120.0
    max_command_timeout_s: float = 600.0
    grade_timeout_s: float = 1800.0
    memory_gb: float = 8.0
    test_command: str = DEFAULT_TEST_COMMAND
    env_setup_command: str = ""
    env_setup_network: bool = False


class SweFullDomain:
    """The SWE-Full task domain (module docstring)."""

    def __init__(self, repos: RepoCache, settings: SweFullSettings = SweFullSettings(),
                 system_prompt: str = SYSTEM_PROMPT):
        from ppp_jax.envs.sandbox.environment import EnvironmentCache, EnvironmentSettings  # noqa: PLC0415

        self.name = DOMAIN
        self.task_family = "swe"
        self.finish_needs_answer = False  # the answer is the copy's diff, made at finish
        self.repos = repos
        self.settings = settings
        self._system_prompt = system_prompt
        self.work_dir = Path(settings.work_dir or tempfile.mkdtemp(prefix="ppp-swefull-"))
        self.envs = EnvironmentCache(self.work_dir / "environments", EnvironmentSettings(
            setup_command=settings.env_setup_command, setup_network=settings.env_setup_network))
        self.limits = SandboxLimits(wall_s=settings.command_timeout_s,
                                    memory_bytes=int(settings.memory_gb * (1 << 30)))
        self.grade_limits = dataclasses.replace(GRADE_LIMITS, wall_s=settings.grade_timeout_s,
                                                memory_bytes=self.limits.memory_bytes)
        self.sandboxes_opened = 0
        self.sandboxes_closed = 0

    # --- what the agent sees --------------------------------------------------------------

    def system_prompt(self, task: Task) -> str:
        return self._system_prompt

    def first_message(self, task: Task, kind: PromptKind) -> str:
        return task.prompt(kind)

    def tool_schemas(self, task: Task) -> list[dict[str, Any]]:
        return [_bash_schema(), editor_schema(),
                function_tool("think", "Write down a thought; it has no effect.",
                              {"content": {"type": "string"}}, ["content"]),
                function_tool(FINISH, "End the task: your edits to /testbed are submitted. "
                              "`message`: an optional summary of what you changed; `answer`: "
                              "optional notes (not graded: the repository's changes are).",
                              {"message": {"type": "string"}, "answer": {"type": "string"}}, [])]

    # --- the sandbox of one episode ---------------------------------------------------------

    def _snapshot_and_env(self, task: Task):
        meta = task.metadata
        snap = self.repos.materialize(meta["repo"], meta["base_commit"])
        env_commit = meta.get("environment_setup_commit") or meta["base_commit"]
        env_snap = (snap if env_commit == meta["base_commit"]
                    else self.repos.materialize(meta["repo"], env_commit))
        return snap, self.envs.get(meta["repo"], env_commit, env_snap)

    def _open(self, task: Task) -> Any:
        if self.settings.backend == "docker":
            from ppp_jax.envs.sandbox.docker import DockerSandbox  # noqa: PLC0415

            return DockerSandbox.start(task.task_id, task.metadata["base_commit"],
                                       limits=self.limits)
        from ppp_jax.envs.sandbox.local import LocalSandbox  # noqa: PLC0415

        snap, env = self._snapshot_and_env(task)
        return LocalSandbox.create(snap, self.work_dir / "episodes", limits=self.limits,
                                   ro_paths=env.ro_paths, path_prefix=[env.bin_dir])

    async def _sandbox(self, task: Task, state: dict[str, Any]) -> Any:
        if SANDBOX not in state:
            box = await asyncio.to_thread(self._open, task)
            self.sandboxes_opened += 1
            state[SANDBOX] = box
            if hasattr(box, "tree"):
                state[EDITOR] = FileEditor(box.tree)
        return state[SANDBOX]

    async def run_tool(self, task: Task, name: str, args: Mapping[str, Any],
                       state: dict[str, Any]) -> str:
        """Runs one tool call; errors (a missing sandbox, bad arguments) are observations."""
        if name == "think":
            return "Your thought has been recorded. Please continue your work."
        if name not in ("execute_bash", "str_replace_editor"):
            return f"ERROR: unknown tool {name!r}."
        try:
            box = await self._sandbox(task, state)
        except (SandboxUnavailable, RuntimeError, OSError) as e:
            return f"ERROR: the sandbox for this task is unavailable: {e}"
        if name == "execute_bash":
            return await asyncio.to_thread(self._bash, box, args, state)
        editor = state.get(EDITOR)
        if editor is None:
            return "ERROR: str_replace_editor is not available with this sandbox backend; use execute_bash."
        return truncate_observation(await asyncio.to_thread(editor.call, args))

    def _bash(self, box: Any, args: Mapping[str, Any], state: dict[str, Any]) -> str:
        command = args.get("command")
        if not isinstance(command, str) or not command.strip():
            return "ERROR: execute_bash needs a non-empty string `command`."
        timeout = self.settings.command_timeout_s
        if args.get("timeout") not in (None, ""):
            try:
                timeout = float(args["timeout"])
            except (TypeError, ValueError):
                return f"ERROR: `timeout` must be a number of seconds, got {args['timeout']!r}."
            timeout = max(1.0, min(timeout, self.settings.max_command_timeout_s))
        # the working directory carries over: the shell reports where it ended
        wrapped = (f"{command}\n__ppp_rc=$?; printf '\\n{_MARK}%s\\n' \"$PWD\"; exit $__ppp_rc")
        result = box.run(wrapped, cwd=state.get(CWD, MOUNT), timeout_s=timeout)
        output = result.output
        m = re.search(rf"\n?{_MARK}(.*)\n?", output)
        if m:
            if m.group(1).startswith(MOUNT):
                state[CWD] = m.group(1)
            output = output[:m.start()] + output[m.end():]
        if result.timed_out:
            tail = f"[The command was stopped after {timeout:g} seconds.]"
        else:
            tail = f"[The command completed with exit code {result.exit_code}.]"
        return truncate_observation(f"{output.rstrip()}\n{tail}".lstrip("\n"))

    # --- the end of an episode ------------------------------------------------------------

    async def check_finish(self, task: Task, args: Mapping[str, Any], state: dict[str, Any]) -> None:
        """At `finish`, the copy's diff (test files left out) becomes the episode's answer."""
        from ppp_jax.envs.episode import ANSWER_OVERRIDE  # noqa: PLC0415

        box = state.get(SANDBOX)
        diff = "" if box is None else await asyncio.to_thread(box.diff, True)
        state[ANSWER_OVERRIDE] = diff
        return None

    async def close_episode(self, task: Task, state: dict[str, Any]) -> None:
        """Removes the episode's sandbox (its copy, processes and files)."""
        box = state.pop(SANDBOX, None)
        state.pop(EDITOR, None)
        if box is not None:
            await asyncio.to_thread(box.close)
            self.sandboxes_closed += 1

    # --- grading ----------------------------------------------------------------------------

    def grade(self, task: Task, patch: str | None) -> Grade:
        """The patch graded by the configured backend (blocking; see `swe_grading`)."""
        meta = task.metadata
        if not patch or not patch.strip():
            return Grade(False, {t: False for t in meta["FAIL_TO_PASS"]},
                         {t: False for t in meta["PASS_TO_PASS"]}, "empty patch")
        if self.settings.backend == "docker":
            from ppp_jax.envs.sandbox.docker import grade_with_harness  # noqa: PLC0415

            return grade_with_harness({task.task_id: patch}, self.work_dir / "harness")[task.task_id]
        snap, env = self._snapshot_and_env(task)
        return grade_patch(patch, snapshot=snap, work_root=self.work_dir / "grading",
                           test_patch=meta.get("test_patch", ""),
                           fail_to_pass=meta["FAIL_TO_PASS"], pass_to_pass=meta["PASS_TO_PASS"],
                           environment=env, test_command=self.settings.test_command,
                           limits=self.grade_limits)

    async def score_details(self, task: Task, answer: str | None) -> tuple[float, dict[str, Any]]:
        """(1.0 if resolved else 0.0, the grade as a dict: resolved, reason, FAIL_TO_PASS share)."""
        grade = await asyncio.to_thread(self.grade, task, answer)
        return float(grade.resolved), grade.to_dict()

    async def score(self, task: Task, answer: str | None) -> float:
        return (await self.score_details(task, answer))[0]


# --- tasks ------------------------------------------------------------------------------------

def _hidden_info(files: list[str], functions: list[str], patch: str) -> str:
    """What the simulator may reveal: files, functions, and the gist of the fix (its changed
    lines, at most 40) for high-effort answers."""
    changed = [ln for ln in patch.splitlines()
               if ln[:1] in "+-" and not ln.startswith(("+++", "---"))][:40]
    parts = ["Files to edit:", *files]
    if functions:
        parts += ["Functions to edit:", *functions]
    parts += ["Gist of the fix (changed lines of the maintainers' patch):", *changed]
    return "\n".join(parts)


def build_swe_full_tasks(rows: Any, repos: RepoCache, split: str = "test", vaguenizer: Any = None,
                         what: str = "swe rows") -> tuple[list[Task], DropReport]:
    """Tasks from SWE rows (checked as in Func-Loc: a malformed row refuses the set with
    `where: field: reason`); rows without FAIL_TO_PASS tests, whose commit is missing or whose
    gold patch changes nothing are dropped and counted."""
    if vaguenizer is None:
        from ppp_jax.envs.vaguenize import RuleVaguenizer  # noqa: PLC0415

        vaguenizer = RuleVaguenizer()
    located = check_swe_rows(rows, repos, what)
    drops = DropReport(what)
    tasks = []
    for _, row in located:
        drops.rows += 1
        iid = row["instance_id"]
        f2p = parse_test_list(row.get("FAIL_TO_PASS"))
        if not f2p:
            drops.drop(NO_TESTS, iid)
            continue
        if not repos.has_commit(row["repo"], row["base_commit"]):
            drops.drop(NO_COMMIT, iid)
            continue
        files = sorted(set(re.findall(r"^diff --git a/(\S+) b/", row["patch"], re.M)))
        if not files:
            drops.drop(EMPTY_PATCH, iid)
            continue
        try:
            functions = list(gold_functions(row["patch"], lambda p, row=row: repos.read_file(
                row["repo"], row["base_commit"], p)).functions)
        except (PatchError, FileNotFoundError, RuntimeError):
            functions = []
        precise = str(row["problem_statement"])
        vague = str(row.get("vague_prompt") or vaguenizer.vaguenize(precise))
        meta = {"repo": row["repo"], "base_commit": row["base_commit"], "instance_id": iid,
                "environment_setup_commit": row.get("environment_setup_commit") or row["base_commit"],
                "test_patch": row.get("test_patch") or "", "FAIL_TO_PASS": f2p,
                "PASS_TO_PASS": parse_test_list(row.get("PASS_TO_PASS")),
                "hints_text": row.get("hints_text") or "", "version": row.get("version")}
        tasks.append(Task(iid, DOMAIN, precise, vague, _hidden_info(files, functions, row["patch"]),
                          (row["patch"],), split, meta))
    drops.kept = len(tasks)
    drops.report()
    return tasks, drops


@dataclasses.dataclass(frozen=True)
class SweFullSection:
    """The `domain:` config keys of swe_full (the data keys are Func-Loc's).

    swe_rows / swe_split / swe_clone_root / swe_cache_dir: as for swe_func_loc.
    swe_full_example: build and use the offline example data set (simplejson with planted bugs,
      `swe_full_example.py`) under swe_cache_dir instead of swe_rows / swe_clone_root.
    swe_full_backend / swe_full_work_dir / swe_full_command_timeout_s /
    swe_full_max_command_timeout_s / swe_full_grade_timeout_s / swe_full_memory_gb /
    swe_full_test_command / swe_full_env_setup_command / swe_full_env_setup_network:
      `SweFullSettings` fields.
    """

    swe_rows: str = ""
    swe_split: Literal["train", "test"] = "train"
    swe_clone_root: str = ""
    swe_cache_dir: str = ""
    swe_full_example: bool = False
    # `SweFullSettings`' fields, prefixed; the defaults are its own (one place to change them)
    swe_full_backend: Literal["local", "docker"] = SweFullSettings.backend
    swe_full_work_dir: str = SweFullSettings.work_dir
    swe_full_command_timeout_s: float = SweFullSettings.command_timeout_s
    swe_full_max_command_timeout_s: float = SweFullSettings.max_command_timeout_s
    swe_full_grade_timeout_s: float = SweFullSettings.grade_timeout_s
    swe_full_memory_gb: float = SweFullSettings.memory_gb
    swe_full_test_command: str = SweFullSettings.test_command
    swe_full_env_setup_command: str = SweFullSettings.env_setup_command
    swe_full_env_setup_network: bool = SweFullSettings.env_setup_network

    def settings(self) -> SweFullSettings:
        prefix = "swe_full_"
        return SweFullSettings(**{f.name: getattr(self, prefix + f.name)
                                  for f in dataclasses.fields(SweFullSettings)})


def build_domain(section: SweFullSection) -> tuple[list[Task], SweFullDomain]:
    """(tasks, domain) of a `SweFullSection` (the registered builder)."""
    rows_path, clone_root = section.swe_rows, section.swe_clone_root
    if section.swe_full_example:
        from ppp_jax.envs.domains.swe_full_example import build_example  # noqa: PLC0415

        if not section.swe_cache_dir:
            raise ValueError("domain.swe_full_example needs domain.swe_cache_dir (where the "
                             "example repository and rows are written)")
        example = Path(section.swe_cache_dir) / "example"
        rows_path, clone_root = str(build_example(example)), str(example / "clones")
    if not (rows_path and clone_root and section.swe_cache_dir):
        raise ValueError("domain swe_full needs domain.swe_rows, domain.swe_clone_root and "
                         "domain.swe_cache_dir (SWE-bench rows and local repository clones), or "
                         "domain.swe_full_example: true with domain.swe_cache_dir")
    settings = section.settings()
    if settings.backend == "local":
        from ppp_jax.envs.sandbox.local import check_bwrap  # noqa: PLC0415

        check_bwrap()
    else:
        from ppp_jax.envs.sandbox.docker import check_docker  # noqa: PLC0415

        check_docker()
    if not settings.work_dir:
        settings = dataclasses.replace(settings, work_dir=os.path.join(section.swe_cache_dir, "work"))
    repos = RepoCache(Path(section.swe_cache_dir) / "snapshots", clone_root=clone_root)
    rows = load_located_swe_rows(rows_path)
    if not rows:
        raise DataError(rows_path, "", "no rows (domain.swe_rows)")
    tasks, drops = build_swe_full_tasks(rows, repos, split=section.swe_split, what=rows_path)
    if not tasks:
        raise DataError(rows_path, "", f"no usable SWE-Full instance among {drops.rows} rows")
    log.info("swe_full: %d tasks from %d rows (%s backend)", len(tasks), drops.rows,
             settings.backend)
    return tasks, SweFullDomain(repos, settings)


register_domain(DOMAIN, SweFullSection, build_domain)

