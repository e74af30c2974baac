"""One `error: ...` line on stderr, never a traceback, for what a user can fix: no region, an endpoint that does not
answer (or not in time), a missing table, a bad setting. In tools/ (not localdev/) because the stage tool runs in
project copies that hold only app.py, chalicelib/ and tools/."""

from __future__ import annotations

import sys
from collections.abc import Callable


def report_errors(body: Callable[[], int], known: tuple[type[BaseException], ...] = ()) -> int:
    """`body()`; an error of the `known` kinds, or one `describe` knows, becomes one `error:` line on stderr and 2."""
    try:
        return body()
    except Exception as error:
        message = describe(error, known)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


def describe(error: BaseException, known: tuple[type[BaseException], ...] = ()) -> str | None:
    """One line for an error a user can fix (settings, region, endpoint, missing table, ...); None for a bug."""
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        ReadTimeoutError,
    )

    if isinstance(error, NoRegionError):
        # botocore reads AWS_DEFAULT_REGION, not AWS_REGION (which only the Lambda runtime and some SDKs read).
        return "no AWS region: set AWS_DEFAULT_REGION (or a region in your AWS profile)"
    if isinstance(error, NoCredentialsError):
        return "no AWS credentials: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    if isinstance(error, (ReadTimeoutError, ConnectTimeoutError, ConnectionClosedError)):
        # Raised only once botocore's retries are spent: the service (or a local engine) is stalled or overloaded.
        what = "did not answer in time" if not isinstance(error, ConnectionClosedError) else "closed the connection"
        return f"{error.kwargs.get('endpoint_url', 'the endpoint')} {what} after every retry: is it overloaded?"
    if isinstance(error, EndpointConnectionError):
        return f"cannot reach {error.kwargs.get('endpoint_url', 'the endpoint')}: is it running, is the URL right?"
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        operation = getattr(error, "operation_name", "the request")
        if details.get("Code") == "ResourceNotFoundException":
            return f"{operation}: {details.get('Message') or 'not found'} (check the name and the region)"
        return f"{operation} failed: {details.get('Code', 'error')}: {details.get('Message', '')}".rstrip(": ")
    if isinstance(error, known):
        return " ".join(str(error).split()) or type(error).__name__
    return None
