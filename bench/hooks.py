"""Instruments for the handlers' DynamoDB clients: a write counter, a simulated round trip, a delaying proxy."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any


def _is_write(statement: dict[str, Any]) -> bool:
    return not statement.get("Statement", "").lstrip().upper().startswith("SELECT")


# The write operations a handler may send, and how many item writes each request carries (PartiQL SELECTs are reads).
WRITE_OPERATIONS = {
    "UpdateItem": lambda params: 1,
    "ExecuteStatement": lambda params: int(_is_write(params)),
    "BatchExecuteStatement": lambda params: sum(map(_is_write, params.get("Statements", ()))),
}


class CallCounter:
    """Counts what a botocore DynamoDB client sends, whatever API the handler uses: `count` is item writes (one per
    UpdateItem or ExecuteStatement, one per statement of a BatchExecuteStatement: each is a conditional write, and one
    write request unit; counted once per API call, as the handler's parameters are built), `requests` is HTTP requests
    of any operation (a `before-send` hook: retries included)."""

    def __init__(self, client: Any) -> None:
        self.count = 0
        self.requests = 0
        self._lock = threading.Lock()
        for operation in WRITE_OPERATIONS:
            client.meta.events.register(f"before-parameter-build.dynamodb.{operation}", self._count_writes)
        client.meta.events.register("before-send.dynamodb", self._count_request)

    def _count_writes(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        writes = WRITE_OPERATIONS[model.name](params)
        with self._lock:
            self.count += writes

    def _count_request(self, **_: Any) -> None:
        with self._lock:
            self.requests += 1


@contextlib.contextmanager
def added_latency(client: Any, seconds: float) -> Iterator[None]:
    """Every request the client sends waits `seconds` first (a `before-send` hook; it runs on the calling thread,
    so concurrent requests wait concurrently, as round trips to a real endpoint do)."""

    def wait(**_: Any) -> None:
        time.sleep(seconds)

    if seconds <= 0:
        yield
        return
    client.meta.events.register("before-send.dynamodb", wait)
    try:
        yield
    finally:
        client.meta.events.unregister("before-send.dynamodb", wait)


class DelayingProxy:
    """A loopback TCP proxy that delivers every request byte `delay` seconds after it arrives, for clients in other
    processes whose hooks can't be reached (the cold-start interpreters). Responses pass straight through."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delaying-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def __enter__(self) -> DelayingProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *_: object) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    @property
    def endpoint(self) -> str:
        """The URL a client uses instead of the engine's."""
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(
            self._pump(client_reader, upstream_writer, self.delay),
            self._pump(upstream_reader, client_writer, 0.0),
            return_exceptions=True,
        )
        for writer in (client_writer, upstream_writer):
            writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    writer.close()
                    return
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(chunk)
                await writer.drain()

        delivering = asyncio.ensure_future(deliver())
        try:
            while chunk := await reader.read(65536):
                # Each chunk keeps its own arrival time: a request sent in two writes is late once, not twice.
                await queue.put((time.monotonic() + delay, chunk))
        finally:
            await queue.put((0.0, b""))
            await delivering
