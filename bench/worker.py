"""A handler in its own process, as a Lambda execution environment holds one: the harness sends it events.

python -m bench.worker   (one JSON request a line on stdin, one JSON answer a line on the original stdout)

Requests: {"load": NAME, "table": TABLE} builds the handler (email-checker, or the walkthrough's function bound to
TABLE) under the process's environment; {"invoke": EVENT, "table": TABLE, "latency": SECONDS} runs one invocation with
that round trip added to every request, and answers its wall and CPU time, item writes and requests. The process is
started inside its CPU quota (bench.quota) before it reads a request, so everything it does runs at Lambda's share.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO

from bench.hooks import added_latency
from bench.subjects import Subject, subject


def serve(requests: TextIO, answers: TextIO) -> None:
    """Answer requests until stdin closes."""
    handlers: dict[str, Subject] = {}
    for line in requests:
        request = json.loads(line)
        table = request["table"]
        if "load" in request:
            handlers[table] = subject(request["load"], table)
            answer: dict[str, Any] = {"loaded": request["load"]}
        else:
            handler = handlers[table]
            writes, sent = handler.writes.count, handler.writes.requests
            with added_latency(handler.client, request.get("latency", 0.0)):
                cpu_started = time.process_time()
                started = time.perf_counter()
                result = handler.invoke(request["invoke"])
                wall = time.perf_counter() - started
                cpu = time.process_time() - cpu_started
            answer = {
                "wall_s": wall,
                "cpu_s": cpu,
                "writes": handler.writes.count - writes,
                "requests": handler.writes.requests - sent,
                "answer": result,
            }
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def main() -> int:
    """Keep the protocol on a private copy of stdout; whatever the handlers print goes nowhere."""
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    serve(sys.stdin, answers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
