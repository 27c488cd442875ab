"""services/latency_proxy.py: bytes pass through both ways, and each request/response turn pays the delay once."""

from __future__ import annotations

import http.server
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from services.latency_proxy import LatencyProxy, request_kind


class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: several requests on one connection

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_requests_pass_through_and_each_pays_the_delay(upstream: str) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB: many reads on the proxy's side, still one request
    with LatencyProxy(upstream, delay=0.05) as proxy:
        started = time.monotonic()
        for _ in range(4):
            request = urllib.request.Request(proxy.url + "/echo", data=body, method="PUT")
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.read() == body
        took = time.monotonic() - started
    assert proxy.requests == 4  # one delay per request, not per chunk of its body
    assert proxy.http_requests == 4
    assert took >= 4 * 0.05  # a lower bound only: the delay was applied


def test_a_put_sent_with_expect_100_continue_pays_the_delay_twice(upstream: str) -> None:
    """The head, then the body after the server's go-ahead: two turns, one HTTP request (as botocore sends
    its PUTs, each paying two round trips to a far-away store)."""
    body = b"x" * 1000
    with LatencyProxy(upstream, delay=0.01) as proxy:
        host, port = proxy.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as conn:
            head = f"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
            conn.sendall(head.encode())
            assert conn.recv(1024).startswith(b"HTTP/1.1 100")
            conn.sendall(body)
            answer = b""
            while not answer.endswith(body):
                answer += conn.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200")
    assert (proxy.requests, proxy.http_requests) == (2, 1)


def test_no_delay_and_bad_upstreams() -> None:
    with pytest.raises(ValueError):
        LatencyProxy("http://127.0.0.1:8333", delay=-1)
    with pytest.raises(ValueError):
        LatencyProxy("no-port-here")


def test_an_upstream_that_refuses_closes_the_client(upstream: str) -> None:
    with LatencyProxy("127.0.0.1:1", delay=0) as proxy:
        with pytest.raises(OSError):
            urllib.request.urlopen(proxy.url + "/", timeout=10)


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"PUT /kingest/lake/_kingest/p/manifest/topic=t/partition=0/0002.json HTTP/1.1\r\n", "PUT manifest"),
        (b"PUT /kingest/lake/_kingest/p/pending-v2/topic=t/partition=0/0002-w.json HTTP/1.1\r\n", "PUT pending-v2"),
        (b"GET /kingest/lake/_kingest/p/checkpoints/topic=t/partition=0/25.json HTTP/1.1\r\n", "GET checkpoints"),
        (b"PUT /kingest/lake/topic=t/partition=0/t-0-1-2-w-0.parquet HTTP/1.1\r\n", "PUT data"),
        (b"GET /kingest?list-type=2&prefix=lake%2F_kingest%2F HTTP/1.1\r\n", "LIST"),
        (b"POST /kingest?delete HTTP/1.1\r\n", "DELETE-MANY"),
        (b"HEAD /kingest HTTP/1.1\r\n", "HEAD other"),
    ],
)
def test_requests_are_counted_by_what_they_are_about(head, kind):
    assert request_kind(head) == kind
