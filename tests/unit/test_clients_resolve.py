"""The storage endpoint's name lookup is bounded: a slow resolver costs a pass seconds, not minutes."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from modelloop.clients.objectstore import check_resolvable


def test_a_resolver_that_hangs_is_reported_after_the_timeout() -> None:
    release = threading.Event()
    asked: list[tuple[str, int]] = []

    def hanging(host: str, port: int) -> object:
        asked.append((host, port))
        release.wait(30)
        return []

    started = time.monotonic()
    try:
        with pytest.raises(socket.gaierror, match=r"minio\.example did not resolve within 0s"):
            check_resolvable("minio.example:9000", 0.2, hanging)
    finally:
        release.set()
    assert time.monotonic() - started < 5
    assert asked == [("minio.example", 9000)]


def test_a_failed_lookup_is_raised_as_it_is() -> None:
    def nxdomain(host: str, port: int) -> object:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(socket.gaierror, match="Name or service not known"):
        check_resolvable("minio.invalid", 5, nxdomain)


def test_a_resolving_host_passes_and_the_port_defaults_to_https() -> None:
    asked: list[tuple[str, int]] = []
    check_resolvable("s3.example.com", 5, lambda host, port: asked.append((host, port)))
    assert asked == [("s3.example.com", 443)]
