"""The `local` sandbox backend: a private copy of the repository, every command under bubblewrap.

Per episode, `LocalSandbox.create` copies the read-only snapshot at `base_commit` into
`<work_root>/<id>/testbed` and records it as the base commit of a git directory kept *outside* that
tree (`<id>/git`), so nothing the agent writes can change how the host reads its diff. Each
`run(command)` starts `bwrap` afresh:

- file system: `/usr` (and the merged-/usr links), the Python environment and its interpreter
  read-only, the copy read-write at `/testbed`, the git directory read-only at `/testbed/.git`,
  a size-capped private `/tmp`, a minimal `/etc` (no host passwd, no secrets); the host's home,
  `/root`, `/work` and everything else simply do not exist inside;
- namespaces: network (none), PID (no other process is visible or killable), IPC, UTS, cgroup;
  an empty environment (`--clearenv`) plus PATH, HOME=/tmp and LANG;
- user: when the host process is root, the command runs as a user id of its own (the copy is
  chowned to it; bwrap keeps only CAP_SETUID/CAP_SETGID for `setpriv` to switch and drop every
  capability), so RLIMIT_NPROC counts this sandbox alone and no root privilege reaches the agent;
  when not root, bwrap makes an unprivileged user namespace and the limit is counted above what
  the user already runs;
- limits (`SandboxLimits`): processes, address space, CPU time, file size (all rlimits, set by
  `prlimit` around bwrap), wall time (the whole process tree killed at the deadline), captured
  output, the private /tmp, and disk: growth of the file system during a command is watched and
  the command killed past `max_tree_growth_bytes`, and the copy's size is checked after it.

Requires bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`) and, when not root, unprivileged
user namespaces; `check_bwrap()` says which is missing.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

from ppp_jax.envs.sandbox.base import (
    MOUNT,
    CommandResult,
    SandboxLimits,
    SandboxUnavailable,
    is_test_path,
)

# One id per sandbox when running as root: high, random per process, so parallel sandboxes (and
# parallel test processes) get distinct users and cannot signal or out-count each other.
_UID_BASE = 200_000 + random.Random(os.getpid()).randrange(0, 1_000_000, 1000)
_UIDS = itertools.count()
_UID_LOCK = threading.Lock()

_PASSWD = "root:x:0:0:root:/root:/bin/sh\nagent:x:{uid}:{uid}:agent:/tmp:/bin/bash\n"
_GROUP = "root:x:0:\nagent:x:{uid}:\n"
_SETUP_FILES = ("passwd", "group")


def check_bwrap() -> str:
    """The bwrap path; SandboxUnavailable naming what is missing otherwise (bubblewrap itself,
    `setpriv`/`prlimit` from util-linux, or unprivileged user namespaces)."""
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxUnavailable(
            "sandbox.backend 'local' needs bubblewrap: install it (Debian/Ubuntu: `apt-get "
            "install bubblewrap`, Fedora: `dnf install bubblewrap`) or use sandbox.backend: docker")
    for tool in ("prlimit", "setpriv") if os.geteuid() == 0 else ("prlimit",):
        if shutil.which(tool) is None:
            raise SandboxUnavailable(f"sandbox.backend 'local' needs `{tool}` (util-linux)")
    probe = subprocess.run([path, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent",
                            "true"], capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        raise SandboxUnavailable(
            f"bubblewrap cannot create namespaces here ({probe.stderr.strip()[:200]}); "
            "unprivileged user namespaces may be disabled (sysctl kernel.unprivileged_userns_clone"
            "=1, or user.max_user_namespaces > 0), or use sandbox.backend: docker")
    return path


def clean_git_env(home: str) -> dict[str, str]:
    """An environment for host-side git on agent-written trees: no user or system config, no
    inherited GIT_* variables, no prompts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(HOME=home, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull,
               GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    return env


# Host git never runs hooks, fsmonitor or configured filters on the agent's tree.
_GIT_SAFE = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false",
             "-c", "safe.directory=*", "-c", "core.symlinks=true", "-c", "core.autocrlf=false",
             "-c", "user.name=ppp", "-c", "user.email=ppp@localhost", "-c", "commit.gpgsign=false")


class LocalSandbox:
    """One episode's working copy and the bubblewrap runner over it (module docstring).

    Build with `LocalSandbox.create(snapshot, work_root, ...)`; `close()` removes everything.

    Args:
      home: the sandbox's own directory (`testbed/`, `git/`, `etc/` inside).
      limits: per-command limits.
      ro_paths: host paths mounted read-only at the same path (a Python environment and the
        interpreter it links to).
      path_prefix: directories put first on PATH inside (e.g. the environment's `bin`).
      writable_paths: host paths mounted read-write at the same path (building an environment).
      network: keep the host network (only for building environments, never for agent commands).
    """

    def __init__(self, home: Path | None, *, limits: SandboxLimits = SandboxLimits(),
                 ro_paths: Sequence[str] = (), path_prefix: Sequence[str] = (),
                 writable_paths: Sequence[str] = (), network: bool = False,
                 read_only_tree: str | os.PathLike | None = None):
        self.read_only = read_only_tree is not None
        if self.read_only:  # an existing tree, seen read-only: nothing copied, nothing removed
            self.home = None
            self.tree = Path(read_only_tree)
            self.git_dir = None
        else:
            self.home = Path(home)
            self.tree = self.home / "testbed"
            self.git_dir = self.home / "git"
        self.limits = limits
        self.ro_paths = tuple(os.path.abspath(p) for p in ro_paths)
        self.path_prefix = tuple(path_prefix)
        self.writable_paths = tuple(os.path.abspath(p) for p in writable_paths)
        self.network = network
        self.bwrap = check_bwrap()
        self.as_root = os.geteuid() == 0
        self.uid = self._read_uid()
        self.base_bytes = 0 if self.read_only or not self.tree.exists() else tree_bytes(self.tree)
        self.closed = False
        self.spoiled = ""  # set when the copy went over its disk quota; every later run refuses

    @classmethod
    def over_read_only(cls, tree: str | os.PathLike, **kwargs) -> "LocalSandbox":
        """A sandbox whose /testbed is an existing tree mounted read-only (e.g. a Func-Loc
        snapshot, for the released whitelist's `python -c "print..."`): no copy, no git
        directory, and `close()` leaves the tree alone. kwargs go to the constructor."""
        return cls(None, read_only_tree=tree, **kwargs)

    # --- creation -------------------------------------------------------------------------

    @classmethod
    def create(cls, snapshot: str | os.PathLike, work_root: str | os.PathLike, **kwargs
               ) -> "LocalSandbox":
        """Copies `snapshot` (the tree at base_commit) into a new sandbox under `work_root` and
        commits it as the base of the sandbox's git directory. kwargs go to the constructor."""
        work_root = Path(work_root)
        work_root.mkdir(parents=True, exist_ok=True)
        home = Path(tempfile.mkdtemp(prefix="sbx-", dir=work_root))
        try:
            tree = home / "testbed"
            shutil.copytree(snapshot, tree, symlinks=True)
            _make_writable(tree)
            git = clean_git_env(str(home))
            base = ["git", "--git-dir", str(home / "git"), "--work-tree", str(tree), *_GIT_SAFE]
            # `init` with no work tree, then a plain non-bare config: inside the sandbox git
            # finds this directory at /testbed/.git and the work tree at /testbed
            _run_git(["git", "--git-dir", str(home / "git"), *_GIT_SAFE, "init", "-q"], git)
            _run_git(["git", "--git-dir", str(home / "git"), "config", "core.bare", "false"], git)
            for args in (["add", "-A", "--force"],
                         ["commit", "-q", "--no-verify", "--allow-empty", "-m", "base_commit"]):
                _run_git(base + args, git)
            (tree / ".git").mkdir(mode=0o555)  # the mount point of the read-only git directory
            uid = cls._new_uid() if os.geteuid() == 0 else os.getuid()
            (home / "uid").write_text(str(uid))
            etc = home / "etc"
            etc.mkdir()
            (etc / "passwd").write_text(_PASSWD.format(uid=uid))
            (etc / "group").write_text(_GROUP.format(uid=uid))
            if os.geteuid() == 0:
                chown_tree(tree, uid)
                os.chown(tree / ".git", 0, 0)
            return cls(home, **kwargs)
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            raise

    @staticmethod
    def _new_uid() -> int:
        with _UID_LOCK:
            return _UID_BASE + next(_UIDS) % 1000

    def _read_uid(self) -> int:
        if self.home is None:
            return self._new_uid() if os.geteuid() == 0 else os.getuid()
        try:
            return int((self.home / "uid").read_text())
        except (OSError, ValueError):
            return os.getuid()

    # --- running ----------------------------------------------------------------------------

    def argv(self, command: str, cwd: str = MOUNT) -> list[str]:
        """The full argv of one command: prlimit, bwrap and its mounts, the user switch, bash."""
        lim = self.limits
        nproc = lim.max_processes if self.as_root else _processes_of(os.getuid()) + lim.max_processes
        argv = ["prlimit", f"--nproc={nproc}", f"--as={lim.memory_bytes}",
                f"--cpu={lim.cpu_s}", f"--fsize={lim.max_file_bytes}", "--core=0", "--",
                self.bwrap]
        argv += ["--ro-bind", "/usr", "/usr"]
        for top in ("/bin", "/lib", "/lib64", "/sbin", "/lib32", "/libx32"):
            if os.path.islink(top):
                argv += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                argv += ["--ro-bind", top, top]
        argv += ["--proc", "/proc", "--dev", "/dev",
                 "--perms", "1777", "--size", str(lim.tmp_bytes), "--tmpfs", "/tmp",
                 "--perms", "0755", "--dir", "/etc"]
        for name in _SETUP_FILES if self.home is not None else ():
            argv += ["--ro-bind", str(self.home / "etc" / name), f"/etc/{name}"]
        for extra in ("/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime"):
            argv += ["--ro-bind-try", extra, extra]
        made = {"/", "/usr", "/etc", "/tmp", "/proc", "/dev"}
        for path in self.ro_paths + self.writable_paths:
            for parent in _ancestors(path):  # bwrap would copy the host's 0700 (e.g. /root)
                if parent not in made:
                    argv += ["--perms", "0755", "--dir", parent]
                    made.add(parent)
            made.add(path)
        for path in self.ro_paths:
            argv += ["--ro-bind", path, path]
        for path in self.writable_paths:
            argv += ["--bind", path, path]
        if self.read_only:
            argv += ["--ro-bind", str(self.tree), MOUNT]
        else:
            argv += ["--bind", str(self.tree), MOUNT, "--ro-bind", str(self.git_dir),
                     MOUNT + "/.git"]
        argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                 "--hostname", "sandbox", "--die-with-parent", "--new-session", "--clearenv",
                 "--chdir", cwd]
        if not self.network:
            argv += ["--unshare-net"]
        path_var = ":".join([*self.path_prefix, "/usr/local/bin", "/usr/bin", "/bin"])
        env = {"PATH": path_var, "HOME": "/tmp", "LANG": "C.UTF-8", "TERM": "dumb",
               "USER": "agent", "PYTHONDONTWRITEBYTECODE": "1", "PIP_NO_INPUT": "1",
               # the git directory is root's and read-only: let the agent's git read it
               "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory",
               "GIT_CONFIG_VALUE_0": "*"}
        for k, v in env.items():
            argv += ["--setenv", k, v]
        if self.as_root:
            argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--",
                     "setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups",
                     "--inh-caps=-all", "--bounding-set=-all", "--"]
        else:
            argv += ["--unshare-user", "--disable-userns", "--"]
        return argv + ["/bin/bash", "-c", command]

    def run(self, command: str, *, cwd: str = MOUNT, timeout_s: float | None = None
            ) -> CommandResult:
        """Runs `command` with bash inside the sandbox. Never raises for what the command does:
        a deadline, the output cap or the disk quota shows up in the result."""
        if self.closed:
            return CommandResult(None, "ERROR: the sandbox is closed")
        if self.spoiled:
            return CommandResult(None, f"ERROR: {self.spoiled}")
        if not (cwd == MOUNT or cwd.startswith(MOUNT + "/") or cwd == "/tmp"):
            cwd = MOUNT
        wall = self.limits.wall_s if timeout_s is None else timeout_s
        proc = subprocess.Popen(self.argv(command, cwd), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        reader = _OutputReader(proc.stdout, self.limits.max_output_bytes)
        reader.start()
        deadline = time.monotonic() + wall
        free_at_start = _free_bytes(self.tree) if not self.read_only else 0
        timed_out, over_disk = False, False
        while True:
            try:
                proc.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() >= deadline:
                timed_out = True
            elif (not self.read_only
                  and free_at_start - _free_bytes(self.tree) > self.limits.max_tree_growth_bytes):
                over_disk = True
            if timed_out or over_disk:
                _kill_group(proc)
                break
        reader.join(timeout=5)
        output = reader.text()
        note = ""
        if timed_out:
            note = f"\n[command timed out after {wall:g} s; every process it started was killed]"
        grown = 0 if self.read_only else tree_bytes(self.tree) - self.base_bytes
        if over_disk or grown > self.limits.max_tree_growth_bytes:
            self.spoiled = (f"the working copy grew by {grown} bytes, over the sandbox's disk quota "
                            f"of {self.limits.max_tree_growth_bytes}; no further commands run")
            note += f"\n[{self.spoiled}]"
        code = None if (timed_out or over_disk) else proc.returncode
        return CommandResult(code, output + note, timed_out, reader.dropped)

    # --- the diff ---------------------------------------------------------------------------

    def git(self, *args: str, input: bytes | None = None, timeout: float = 120) -> bytes:
        """Host-side git on the sandbox's git directory and copy (hooks, filters and user config
        off); raises RuntimeError with git's message."""
        if self.git_dir is None:
            raise RuntimeError("a read-only sandbox has no git directory (no diff, no apply)")
        argv = ["git", "--git-dir", str(self.git_dir), "--work-tree", str(self.tree), *_GIT_SAFE,
                *args]
        # cwd = the copy: `git apply` resolves patch paths against the current directory
        return _run_git(argv, clean_git_env(str(self.home)), input=input, timeout=timeout,
                        cwd=self.tree)

    def diff(self, exclude_tests: bool = True) -> str:
        """The copy's changes against base_commit as a git patch (new files, deletions and
        binaries included), leaving out test files when `exclude_tests` (`is_test_path`)."""
        self.git("add", "-A", "--force")
        names = [n for n in self.git("diff", "--cached", "--name-only", "-z", "--no-renames",
                                     "HEAD").decode("utf-8", "surrogateescape").split("\0") if n]
        if exclude_tests:
            names = [n for n in names if not is_test_path(n)]
        if not names:
            return ""
        patch = b""
        for i in range(0, len(names), 500):  # argv stays short however many files changed
            patch += self.git("--literal-pathspecs", "diff", "--cached", "--binary", "--no-renames",
                              "--no-color", "--no-ext-diff", "HEAD", "--",
                              *names[i:i + 500])
        return patch.decode("utf-8", "surrogateescape")

    def apply(self, patch: str, what: str = "patch") -> str:
        """Applies a patch to the copy with `git apply` (refusing paths outside the tree);
        returns "" on success, else one line saying why it does not apply."""
        if not patch.strip():
            return ""
        try:
            self.git("apply", "--whitespace=nowarn", "-",
                     input=patch.encode("utf-8", "surrogateescape"))
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            return f"{what} does not apply: {first[0] if first else e}"[:300]
        if os.geteuid() == 0:
            chown_tree(self.tree, self.uid)
            os.chown(self.tree / ".git", 0, 0)
        return ""

    def close(self) -> None:
        """Removes the copy, its git directory and its files; idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.home is None:
            return
        _make_writable(self.home)
        shutil.rmtree(self.home, ignore_errors=True)


# --- helpers --------------------------------------------------------------------------------

class _OutputReader(threading.Thread):
    """Drains a pipe, keeping the first and the last `cap // 2` bytes and counting the rest, so a
    command that prints gigabytes neither blocks on a full pipe nor fills memory, and both the
    start of the output and its end (where errors and test summaries are) survive."""

    def __init__(self, pipe, cap: int):
        super().__init__(daemon=True, name="sandbox-output")
        self.pipe = pipe
        self.head_cap, self.tail_cap = cap - cap // 2, cap // 2
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def run(self) -> None:
        try:
            while chunk := self.pipe.read1(1 << 16):
                self.total += len(chunk)
                room = self.head_cap - len(self.head)
                if room > 0:
                    self.head += chunk[:room]
                    chunk = chunk[room:]
                if chunk and self.tail_cap:
                    self.tail += chunk
                    del self.tail[:max(0, len(self.tail) - self.tail_cap)]
        except (OSError, ValueError):
            pass
        finally:
            try:
                self.pipe.close()
            except OSError:
                pass

    @property
    def dropped(self) -> int:
        return self.total - len(self.head) - len(self.tail)

    def text(self) -> str:
        if not self.dropped:
            return (bytes(self.head) + bytes(self.tail)).decode("utf-8", errors="replace")
        return (bytes(self.head).decode("utf-8", errors="replace")
                + f"\n[... {self.dropped} bytes of output not shown ...]\n"
                + bytes(self.tail).decode("utf-8", errors="replace"))


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the command's process group (prlimit -> bwrap); bwrap's --die-with-parent then
    takes down the sandbox's PID namespace, so every process inside dies too."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _run_git(argv: list[str], env: dict[str, str], input: bytes | None = None,
             timeout: float = 120, cwd: str | os.PathLike | None = None) -> bytes:
    proc = subprocess.run(argv, input=input, capture_output=True, env=env, timeout=timeout,
                          check=False, cwd=cwd)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.decode("utf-8", "replace").strip()[:500]
                           or f"git exited with {proc.returncode}")
    return proc.stdout


def _ancestors(path: str) -> list[str]:
    parts = Path(path).parts[1:-1]
    return [os.path.join("/", *parts[:i + 1]) for i in range(len(parts))]


def _make_writable(root: Path) -> None:
    """u+w on every directory (snapshots are read-only), so the copy can be edited and removed."""
    for d, dirs, _ in os.walk(root):
        for p in [d, *(os.path.join(d, s) for s in dirs)]:
            if not os.path.islink(p):
                try:
                    os.chmod(p, os.stat(p).st_mode | 0o700)
                except OSError:
                    pass


def chown_tree(root: Path, uid: int) -> None:
    for d, dirs, files in os.walk(root):
        for p in [d, *(os.path.join(d, s) for s in dirs + files)]:
            try:
                os.lchown(p, uid, uid)
            except OSError:
                pass


def tree_bytes(root: Path) -> int:
    """Bytes of the regular files under `root` (symlinks not followed)."""
    total = 0
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif e.is_file(follow_symlinks=False):
                        total += e.stat(follow_symlinks=False).st_blocks * 512
        except OSError:
            continue
    return total


def _free_bytes(path: Path) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _processes_of(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


def running_python_paths() -> tuple[str, ...]:
    """The host paths a Python environment made from this interpreter needs inside a sandbox:
    the base installation (when outside /usr) and this interpreter's site-packages."""
    import site  # noqa: PLC0415

    paths = [sys.base_prefix] if not sys.base_prefix.startswith("/usr/") else []
    paths += [p for p in site.getsitepackages() if os.path.isdir(p)]
    return tuple(dict.fromkeys(os.path.realpath(p) for p in paths))
