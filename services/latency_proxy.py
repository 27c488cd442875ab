"""A TCP proxy that adds a fixed delay to every request: an object store as far away as a real S3 region.

Stdlib only (asyncio), for the tests (tests/integration/test_chaos.py) and the benchmarks alike. The delay is
applied once per request/response turn of each connection: the first bytes the client sends after the server
last answered (or on a new connection) wait `delay` seconds before going upstream; the rest of the same request
(a PUT's body arriving in many reads) follows at once, in order. An HTTP request therefore pays the delay once
(twice for a PUT sent with `Expect: 100-continue`: the head, then the body after the server's go-ahead), as it
would pay a network round trip. Responses are passed back untouched.

    with LatencyProxy("http://127.0.0.1:8333", delay=0.02) as proxy:
        fs = s3fs.S3FileSystem(endpoint_url=proxy.url, ...)

From a shell (a benchmark run in another process):

    python services/latency_proxy.py --upstream http://127.0.0.1:8333 --delay-ms 20 [--port 0]

prints `http://127.0.0.1:PORT` on its first line, then serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
import urllib.parse
from collections import Counter
from types import TracebackType

CHUNK = 65536
# A turn that starts with one of these is a new HTTP request (the others: a body sent after `100 Continue`).
HTTP_METHODS = frozenset(b"GET HEAD PUT POST DELETE PATCH OPTIONS".split())
# What an S3 request of kingest's is about, from its path: the folders of the offsets manifest, else data.
_KINDS = ("manifest", "pending-v2", "checkpoints", "retired", "_delta_log")


def request_kind(head: bytes) -> str:
    """``PUT manifest``, ``GET pending-v2``, ``LIST``, ``DELETE-MANY``, ``PUT data``...: what an HTTP request
    (its first bytes) is, for the benchmark's breakdown of the requests a run makes."""
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) < 2:
        return "other"
    method, target = parts[0], urllib.parse.unquote(parts[1])
    path, _, query = target.partition("?")
    if method == "GET" and ("list-type=" in query or "prefix=" in query):
        return "LIST"
    if method == "POST" and "delete" in query:
        return "DELETE-MANY"
    segments = path.split("/")
    kind = next((k for k in _KINDS if k in segments), "data" if path.endswith(".parquet") else "other")
    return f"{method} {kind}"


def _host_port(upstream: str) -> tuple[str, int]:
    """`http://host:port`, `host:port` -> (host, port); a URL without a port gets its scheme's."""
    parsed = urllib.parse.urlsplit(upstream if "//" in upstream else f"tcp://{upstream}")
    if parsed.hostname is None:
        raise ValueError(f"not a host:port or URL: {upstream!r}")
    port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme)
    if port is None:
        raise ValueError(f"no port in {upstream!r}")
    return parsed.hostname, port


class LatencyProxy:
    """Listens on 127.0.0.1 (a free port unless given), forwards to `upstream` with `delay` seconds added to
    each request. Runs its own event loop in a daemon thread: start()/close(), or use it as a context manager.
    `requests` counts the delayed turns (one per HTTP request, two for a PUT sent with `Expect: 100-continue`),
    `http_requests` the turns that start an HTTP request."""

    def __init__(self, upstream: str, delay: float = 0.02, port: int = 0, host: str = "127.0.0.1") -> None:
        if delay < 0:
            raise ValueError("delay must be >= 0")
        self.upstream = _host_port(upstream)
        self.delay = delay
        self.host = host
        self.port = port
        self.requests = 0
        self.http_requests = 0
        self.connections = 0
        self.kinds: Counter[str] = Counter()  # HTTP requests by request_kind
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> LatencyProxy:
        if self._thread is not None:
            raise RuntimeError("the proxy is already started")
        self._thread = threading.Thread(target=self._run, name=f"latency-proxy-{self.upstream[1]}", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError(f"the latency proxy could not start: {self._error}") from self._error
        if not self._ready.is_set():
            raise RuntimeError("the latency proxy did not start within 30 s")
        return self

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
        self._thread = None

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(asyncio.start_server(self._serve, self.host, self.port))
            self.port = int(self._server.sockets[0].getsockname()[1])
        except BaseException as e:  # reported by start()
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(asyncio.gather(*self._tasks, return_exceptions=True))
            loop.close()

    # ------------------------------------------------------------------------------------------- proxying

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            if task is not None:
                self._tasks.discard(task)
            return
        # True when the next bytes from the client start a new request: on a new connection, and each time the
        # server has answered since the client last sent something.
        new_turn = [True]
        try:
            await asyncio.gather(
                self._client_to_upstream(client_reader, upstream_writer, new_turn),
                self._upstream_to_client(upstream_reader, client_writer, new_turn),
            )
        finally:
            for writer in (client_writer, upstream_writer):
                writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _client_to_upstream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, new_turn: list[bool]
    ) -> None:
        try:
            while data := await reader.read(CHUNK):
                if new_turn[0]:
                    new_turn[0] = False
                    self.requests += 1
                    if data.split(b" ", 1)[0] in HTTP_METHODS:
                        self.http_requests += 1
                        self.kinds[request_kind(data)] += 1
                    if self.delay:
                        await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, asyncio.IncompleteReadError):
            writer.close()

    async def _upstream_to_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, new_turn: list[bool]
    ) -> None:
        try:
            while data := await reader.read(CHUNK):
                new_turn[0] = True
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A TCP proxy adding a fixed delay to each request.")
    parser.add_argument("--upstream", required=True, help="host:port or http://host:port to forward to")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="milliseconds added to each request")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with LatencyProxy(args.upstream, delay=args.delay_ms / 1000, port=args.port) as proxy:
        print(proxy.url, flush=True)
        stop.wait()
        print(
            f"latency proxy: {proxy.requests} turns delayed ({proxy.http_requests} HTTP requests) over "
            f"{proxy.connections} connections",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
