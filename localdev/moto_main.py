"""`python -m moto.server`, plus the one Lambda call `status` makes that moto lacks: GetAccountSettings
(GET /2016-08-19/account-settings/). Without it every `status` on moto would rightly say the account's unreserved
concurrency is unknown, and so not ok.

The answer is AWS's for a default account (Lambda quotas: 1,000 concurrent executions per region, of which what no
function reserves is the unreserved pool): 1,000 minus the reservations of the region's functions on moto, the sum
moto itself checks reservations against (`MOTO_LAMBDA_CONCURRENCY_QUOTA`).
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

DEFAULT_CONCURRENCY_QUOTA = 1000
ACCOUNT_SETTINGS_PATH = r"{0}/(?P<api_version>[^/]+)/account-settings/?$"


def account_settings(request: Any, full_url: str, headers: Any) -> tuple[int, dict[str, str], str]:
    """GetAccountSettings as Lambda answers it, for the region and account the request is signed for."""
    from moto.awslambda.models import lambda_backends
    from moto.core import DEFAULT_ACCOUNT_ID

    scope = re.search(r"Credential=[^/]+/[^/]+/([^/]+)/lambda/", request.headers.get("Authorization", ""))
    region = scope.group(1) if scope else "us-east-1"
    backend = lambda_backends[DEFAULT_ACCOUNT_ID][region]
    functions = backend.list_functions()
    reserved = sum(int(function.reserved_concurrency or 0) for function in functions)
    body = {
        "AccountLimit": {
            "TotalCodeSize": 80_530_636_800,
            "CodeSizeUnzipped": 262_144_000,
            "CodeSizeZipped": 52_428_800,
            "ConcurrentExecutions": DEFAULT_CONCURRENCY_QUOTA,
            "UnreservedConcurrentExecutions": DEFAULT_CONCURRENCY_QUOTA - reserved,
        },
        "AccountUsage": {"TotalCodeSize": 0, "FunctionCount": len(functions)},
    }
    return 200, {"Content-Type": "application/json"}, json.dumps(body)


def main(argv: list[str] | None = None) -> None:
    """moto's server with GetAccountSettings routed (same arguments as `python -m moto.server`)."""
    import moto.awslambda.urls
    from moto.server import main as moto_main

    moto.awslambda.urls.url_paths[ACCOUNT_SETTINGS_PATH] = account_settings
    moto_main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
