"""Child processes for the development environment that cannot outlive the run that started them.

A test run that is killed, interrupted or crashes must not leave etcd, kube-apiserver or MinIO
listening on the machine: the next run would meet stale state and the machine would fill up with
orphans. Three layers make sure of it: every child gets ``PR_SET_PDEATHSIG`` (the kernel kills it
when its parent dies, however the parent died), every child leads its own process group (so a stop
reaches anything it forked), and an ``atexit`` plus SIGINT/SIGTERM safety net kills whatever is
still registered when the interpreter leaves.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

PR_SET_PDEATHSIG = 1
_LIBC: Any = None
_lock = threading.Lock()
_running: set[ManagedProcess] = set()
_safety_net_installed = False


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    libc = _libc()

    def preexec() -> None:
        # Runs in the child between fork and exec: only async-signal-safe work belongs here.
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class ProcessFailed(RuntimeError):
    """A managed process exited, or did not become ready, when the run needed it."""


class ManagedProcess:
    """One long-running child: started in its own process group, logging to a file, stoppable.

    ``start()`` may be called again after ``stop()`` with the same arguments, which is how fault
    tests restart a server on the same port and data. PDEATHSIG follows the thread that forked the
    child, so start processes from a thread that lives as long as they should (the main thread).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = [os.fspath(a) for a in argv]
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    def start(self) -> ManagedProcess:
        if self.alive():
            raise ProcessFailed(f"{self.name} is already running (pid {self.pid})")
        _install_safety_net()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(f"==== {time.strftime('%H:%M:%S')} starting: {' '.join(self.argv)}\n".encode())
        self._log.flush()
        try:
            self._popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        except OSError as e:
            self._close_log()
            raise ProcessFailed(f"cannot start {self.name} ({self.argv[0]}): {e}") from e
        with _lock:
            _running.add(self)
        return self

    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def returncode(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the whole group, SIGKILL it after ``timeout``; returns the exit status."""
        p = self._popen
        if p is None:
            return None
        try:
            if p.poll() is None:
                _signal_group(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    _signal_group(p.pid, signal.SIGKILL)
                    p.wait(timeout)
            # the leader may be gone while something it forked still holds the group
            _signal_group(p.pid, signal.SIGKILL)
        finally:
            with _lock:
                _running.discard(self)
            self._close_log()
        return p.returncode

    def kill_now(self) -> None:
        """SIGKILL without waiting: for signal handlers and fault injection."""
        if self._popen is not None:
            _signal_group(self._popen.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __repr__(self) -> str:
        return f"ManagedProcess({self.name!r}, pid={self.pid}, log={self.log_path})"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_all() -> None:
    """SIGKILL every registered child: the last resort at interpreter exit or on a fatal signal."""
    with _lock:
        procs = list(_running)
    for p in procs:
        p.kill_now()


def _install_safety_net() -> None:
    global _safety_net_installed
    with _lock:
        if _safety_net_installed:
            return
        _safety_net_installed = True
    atexit.register(kill_all)
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread; PDEATHSIG still applies
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        signal.signal(sig, _chain(sig, previous))


def _chain(sig: signal.Signals, previous: Any) -> Callable[[int, FrameType | None], None]:
    """Kills the children, then behaves as before (pytest's Ctrl-C still runs its teardown)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        kill_all()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_IGN:
            return
        else:
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)

    return handler


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    process: ManagedProcess | None = None,
) -> None:
    """Polls ``predicate`` until it is true; a clear error (with the process log) if it never is.

    Exceptions from the predicate count as "not yet" (a server that is still starting refuses
    connections); the last one is reported. If ``process`` exits meanwhile, waiting stops at once.
    """
    deadline = time.monotonic() + timeout
    delay = 0.02
    last: BaseException | None = None
    while True:
        try:
            if predicate():
                return
            last = None
        except Exception as e:  # noqa: BLE001 — any failure of a probe means "not ready yet"
            last = e
        if process is not None and not process.alive():
            raise ProcessFailed(
                f"{process.name} exited with status {process.returncode()} while waiting for {what}; "
                f"log {process.log_path}:\n{process.log_tail()}"
            )
        if time.monotonic() >= deadline:
            detail = f" (last error: {last!r})" if last else ""
            tail = f"; log {process.log_path}:\n{process.log_tail()}" if process is not None else ""
            raise TimeoutError(f"{what} not reached within {timeout:.0f}s{detail}{tail}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def http_get(url: str, context: ssl.SSLContext | None = None, timeout: float = 5.0) -> bytes:
    """The body of a 2xx answer; any other status raises (with the socket closed, not leaked)."""
    try:
        with urllib.request.urlopen(url, context=context, timeout=timeout) as r:
            body: bytes = r.read()
            return body
    except urllib.error.HTTPError as e:
        detail = e.read(2048).decode(errors="replace").strip()
        e.close()
        raise ConnectionError(f"GET {url}: HTTP {e.code}: {detail}") from None


def free_port() -> int:
    """A loopback port nobody listens on now (the caller binds it soon; a clash makes start fail loudly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def hack_script_output(script: Path) -> Path:
    """The path a build script under hack/ prints on its last stdout line (instant when its cache is warm)."""
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        raise ProcessFailed(f"{script} failed with status {done.returncode}:\n{done.stderr[-4000:]}")
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise ProcessFailed(f"{script} printed no path on stdout")
    return Path(lines[-1])


def locate_tools(repo_root: Path) -> Path:
    """The directory holding etcd, kube-apiserver, kube-controller-manager, kubectl, minio, helm.

    ``MODELLOOP_TOOLS_BIN`` wins when set; otherwise ``hack/tools.sh`` is asked (instant when its
    cache is warm, a build from source when not) and its last stdout line is the directory.
    """
    override = os.environ.get("MODELLOOP_TOOLS_BIN")
    bin_dir = Path(override) if override else hack_script_output(repo_root / "hack" / "tools.sh")
    missing = [
        t
        for t in ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "minio")
        if not (bin_dir / t).is_file()
    ]
    if missing:
        raise ProcessFailed(f"tools directory {bin_dir} lacks {', '.join(missing)}; run `make tools`")
    return bin_dir
