"""Faults DynamoDB Local can't produce on demand, as botocore hooks can answer them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from botocore.awsrequest import AWSResponse


class _Body:
    """A raw HTTP body botocore can read."""

    def __init__(self, payload: bytes) -> None:
        self._payload = payload

    def stream(self, **_):
        yield self._payload


def dynamodb_error(url: str, status: int, code: str) -> AWSResponse:
    """The HTTP response DynamoDB sends for an error `code` (ThrottlingException, InternalServerError...)."""
    body = json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": "injected"}).encode()
    return AWSResponse(url, status, {"x-amzn-RequestId": "injected"}, _Body(body))


def fail_statements(client: Any, code_for: Callable[[dict[str, Any]], str | None]) -> Callable[[], None]:
    """Make BatchExecuteStatement answer chosen statements with a per-statement error, as DynamoDB can; the others
    reach the engine. `code_for(statement)` is the error code for a statement, or None to let it through. Returns the
    function that removes the fault."""

    def strip(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        statements = params["Statements"]
        codes = [code_for(statement) for statement in statements]
        context[_INJECTED] = codes
        kept = [statement for statement, code in zip(statements, codes, strict=True) if code is None]
        if kept:  # a request can't be empty: one whose every statement fails is answered in `answer` instead
            params["Statements"] = kept

    def answer(context: dict[str, Any], **_: Any) -> tuple[AWSResponse, dict[str, Any]] | None:
        if all(code is not None for code in context.get(_INJECTED, [None])):
            return AWSResponse("http://injected", 200, {}, None), {"Responses": [], "ResponseMetadata": {}}
        return None

    def merge(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        codes = context.get(_INJECTED)
        if codes is None or "Responses" not in parsed:
            return
        reached = iter(parsed["Responses"])
        parsed["Responses"] = [
            next(reached) if code is None else {"Error": {"Code": code, "Message": "injected"}} for code in codes
        ]

    events = client.meta.events
    events.register("before-parameter-build.dynamodb.BatchExecuteStatement", strip)
    events.register("before-call.dynamodb.BatchExecuteStatement", answer)
    events.register("after-call.dynamodb.BatchExecuteStatement", merge)

    def remove() -> None:
        events.unregister("before-parameter-build.dynamodb.BatchExecuteStatement", strip)
        events.unregister("before-call.dynamodb.BatchExecuteStatement", answer)
        events.unregister("after-call.dynamodb.BatchExecuteStatement", merge)

    return remove


_INJECTED = "injected_statement_errors"
