"""The in-Pod control channel between the sidecar and the server: HTTP over a Unix socket.

``POST /v1/reload`` swaps the model that answers the world, so it must not be reachable from the
network at all, not even from inside the cluster: the server listens for it on a Unix socket in a
volume only the Pod's own containers mount (by default the shared model directory), never on the
public port. A socket file cannot be reached through a Service, a NetworkPolicy mistake, or
``kubectl port-forward``; its mode (0660) keeps other users on the node out as well.

Used by the server (:func:`bind_control_socket`) and by the sidecar (:class:`ControlClient`).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

DEFAULT_SOCKET_NAME = ".control.sock"
REVIEW_AUTH_SOCKET_NAME = ".review-auth.sock"
"""The other direction: the sidecar answers the server's "who is this reviewer?" here."""
REVIEW_AUTH_PATH = "/v1/review-auth"
SOCKET_MODE = 0o660
_MAX_SUN_PATH = 100  # sockaddr_un holds 108 bytes on Linux; stay clear of the edge

T = TypeVar("T")


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """A name for ``path`` that fits in ``sockaddr_un``.

    A Pod's emptyDir, or a pytest temp dir, can be deeper than the 108 bytes a socket address
    holds; ``/proc/self/fd/<dir fd>/<name>`` names the same file through an open directory.
    """
    if len(os.fsencode(str(path))) < _MAX_SUN_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _with_path(path: Path, use: Callable[[str], T]) -> T:
    with _short_path(path) as name:
        return use(name)


def bind_control_socket(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``; a stale socket left by a killed server is replaced.

    Anything else at ``path`` (a regular file, a directory) is left alone and refused: the
    setting points somewhere it should not.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
        else:
            raise OSError(f"{path} exists and is not a socket; set MODELLOOP_CONTROL_SOCKET to a free path")
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _with_path(path, sock.bind)
        os.chmod(path, SOCKET_MODE)
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            _with_path(self._path, sock.connect)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class ControlClient:
    """Requests to the server's control socket: ``(status, body)``; OSError when it cannot be reached."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def request(self, method: str, url: str, body: bytes | None = None, timeout: float = 120) -> tuple[int, bytes]:
        conn = _UnixConnection(self.path, timeout)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, url, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except http.client.HTTPException as e:
            raise OSError(f"bad answer on the control socket {self.path}: {e}") from e
        finally:
            conn.close()
