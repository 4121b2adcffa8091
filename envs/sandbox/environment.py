"""The Python environment the local sandbox runs a repository's code and tests in.

One environment per `repo@environment_setup_commit` (SWE-bench's key for "the same install"),
built once under `<cache_dir>/<owner>__<name>@<commit>` and shared read-only by every episode
and grading run of that key. It is a venv made from an interpreter of the user's choice:

- `inherit_site_packages`: the venv also sees the site-packages of the interpreter running
  ppp-jax (so pytest and the project's test requirements, when installed there, need no network);
- the repository itself is importable from `/testbed` (and `/testbed/src` when the repository has
  a src layout), wherever the episode's copy lives on the host: a `.pth` file in the venv, which
  is what an editable install of a pure-Python project amounts to;
- `setup_command` (optional) runs once at build time inside the sandbox, on a copy of the
  repository at the setup commit, with the venv writable and, if `setup_network`, the network
  (e.g. `python -m pip install -e .[test]` for projects with compiled parts or extra
  requirements).

Concurrent builders of the same key (parallel episodes, or several processes) serialize on a
file lock; a build counts as done only once its marker file is written last, so a crashed build
is started over, never used.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ppp_jax.envs.sandbox.base import MOUNT, SandboxLimits, SandboxUnavailable
from ppp_jax.envs.sandbox.local import LocalSandbox, chown_tree, running_python_paths

_DONE = ".ppp-environment-ok"


@dataclasses.dataclass(frozen=True)
class PythonEnvironment:
    """A built environment: the venv directory and the host paths a sandbox must mount
    read-only for it to work (the venv, its base interpreter, inherited site-packages)."""

    root: Path
    ro_paths: tuple[str, ...]

    @property
    def bin_dir(self) -> str:
        return str(self.root / "bin")


@dataclasses.dataclass(frozen=True)
class EnvironmentSettings:
    """How environments are built (the `domain.swe_full_env_*` config keys).

    python: the interpreter the venvs are made from ("" = the one running ppp-jax).
    inherit_site_packages: the venv sees the running interpreter's site-packages (test tools
      without network).
    setup_command: run once per environment at build time, inside the sandbox, at /testbed.
    setup_network: give setup_command the network (pip downloads); agent commands never have it.
    setup_timeout_s: wall-clock limit of setup_command.
    """

    python: str = ""
    inherit_site_packages: bool = True
    setup_command: str = ""
    setup_network: bool = False
    setup_timeout_s: float = 1800.0


class EnvironmentCache:
    """Builds and reuses `PythonEnvironment`s under `cache_dir` (module docstring)."""

    def __init__(self, cache_dir: str | os.PathLike,
                 settings: EnvironmentSettings = EnvironmentSettings()):
        self.cache_dir = Path(cache_dir)
        self.settings = settings
        self.python = settings.python or sys.executable
        self.builds = 0  # environments built by this object (the rest came from the cache)

    def path_for(self, repo: str, commit: str) -> Path:
        return self.cache_dir / f"{repo.replace('/', '__')}@{commit}"

    def get(self, repo: str, commit: str, snapshot: str | os.PathLike) -> PythonEnvironment:
        """The environment of `repo@commit`, built from `snapshot` (the repository tree at that
        commit) the first time. Raises SandboxUnavailable or RuntimeError naming the step that
        failed (venv creation, setup_command with its last output lines)."""
        target = self.path_for(repo, commit)
        if not (target / _DONE).exists():
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            with open(str(target) + ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not (target / _DONE).exists():
                    self._build(target, Path(snapshot))
        return PythonEnvironment(target, self._ro_paths(target))

    def _ro_paths(self, target: Path) -> tuple[str, ...]:
        base = _base_prefix(self.python)
        paths = [str(target)]
        if not base.startswith("/usr/"):
            paths.append(base)
        if self.settings.inherit_site_packages:
            paths += _site_packages(self.python)
        elif self.python == sys.executable:
            paths += [p for p in running_python_paths() if p == base]
        return tuple(dict.fromkeys(paths))

    def _build(self, target: Path, snapshot: Path) -> None:
        started = time.monotonic()
        if target.exists():  # a crashed build (no done marker): start over
            shutil.rmtree(target)
        try:
            # Built in place (venv scripts record absolute paths); only the done marker, written
            # last, makes it count as built.
            proc = subprocess.run([self.python, "-m", "venv", "--without-pip", str(target)],
                                  capture_output=True, text=True, timeout=300, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"creating the venv {target} with {self.python} failed: "
                                   f"{proc.stderr.strip()[-300:]}")
            site = _site_packages(str(target / "bin" / "python"))
            if not site:
                raise RuntimeError(f"the venv {target} has no site-packages directory")
            lines = [MOUNT]
            if (snapshot / "src").is_dir() and not (snapshot / "src" / "__init__.py").exists():
                lines.append(MOUNT + "/src")
            Path(site[0], "_ppp_0_testbed.pth").write_text("\n".join(lines) + "\n")
            if self.settings.inherit_site_packages:
                Path(site[0], "_ppp_1_inherited.pth").write_text(
                    "\n".join(_site_packages(self.python)) + "\n")
            if self.settings.setup_command:
                self._run_setup(target, snapshot)
            os.chmod(target, 0o755)
            (target / _DONE).write_text(f"built in {time.monotonic() - started:.1f} s\n")
            self.builds += 1
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise

    def _run_setup(self, target: Path, snapshot: Path) -> None:
        base = _base_prefix(self.python)
        ro = [base] if not base.startswith("/usr/") else []
        if self.settings.inherit_site_packages:
            ro += _site_packages(self.python)
        limits = SandboxLimits(wall_s=self.settings.setup_timeout_s)
        work = Path(tempfile.mkdtemp(prefix="setup-", dir=self.cache_dir))
        try:
            box = LocalSandbox.create(snapshot, work, limits=limits, ro_paths=ro,
                                      writable_paths=[str(target)],
                                      path_prefix=[str(target / "bin")],
                                      network=self.settings.setup_network)
            if os.geteuid() == 0:  # the sandbox user writes into the venv
                chown_tree(target, box.uid)
            try:
                result = box.run(self.settings.setup_command)
            finally:
                box.close()
                if os.geteuid() == 0:
                    chown_tree(target, 0)
            if result.exit_code != 0:
                tail = "\n".join(result.output.strip().splitlines()[-15:])
                raise RuntimeError(
                    f"setup_command {self.settings.setup_command!r} failed for {target.name} "
                    f"(exit {result.exit_code}{', timed out' if result.timed_out else ''}):\n{tail}")
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _query(python: str, code: str) -> str:
    try:
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60,
                              check=False)
    except OSError as e:
        raise SandboxUnavailable(f"cannot run the environment interpreter {python!r}: {e}") from None
    if proc.returncode != 0:
        raise SandboxUnavailable(f"the environment interpreter {python!r} failed: "
                                 f"{proc.stderr.strip()[-200:]}")
    return proc.stdout.strip()


def _base_prefix(python: str) -> str:
    if python == sys.executable:
        return os.path.realpath(sys.base_prefix)
    return os.path.realpath(_query(python, "import sys; print(sys.base_prefix)"))


def _site_packages(python: str) -> list[str]:
    out = _query(python, "import site; print('\\n'.join(site.getsitepackages()))")
    return [os.path.realpath(p) for p in out.splitlines() if p and os.path.isdir(p)]
