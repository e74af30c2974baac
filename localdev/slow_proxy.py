"""A TCP proxy on loopback that makes DynamoDB slow: each request waits `delay` seconds before it is forwarded, or
is never forwarded at all (`stall`), as a DynamoDB that stopped answering would behave."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from typing import Self


class SlowProxy:
    """Forwards 127.0.0.1:<port> to `upstream`, holding each chunk the client sends for `delay` seconds."""

    def __init__(self, upstream: tuple[str, int], delay: float = 0.0, stall: bool = False) -> None:
        self.upstream = upstream
        self.delay = delay
        self.stall = stall
        self.requests = 0
        self._closing = threading.Event()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._relay(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        """The proxy's URL, for a client's endpoint_url."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _relay(self, downstream: socket.socket) -> None:
        with socket.create_connection(self.upstream) as upstream:
            back = threading.Thread(target=_pump, args=(upstream, downstream), daemon=True)
            back.start()
            downstream.settimeout(0.2)
            while not self._closing.is_set():
                try:
                    chunk = downstream.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                self.requests += 1
                if self.stall:
                    self._closing.wait()  # hold it until the proxy closes: the client's read timeout fires first
                    return
                if self._closing.wait(self.delay):
                    return
                upstream.sendall(chunk)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        time.sleep(0.25)  # the relays notice the flag within their 0.2 s receive timeout


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        return
