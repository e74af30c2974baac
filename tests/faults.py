"""Faults DynamoDB Local can't produce on demand, as botocore hooks can answer them."""

from __future__ import annotations

import json

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
