"""The backfill fan-out's invoker for tests: the function run the way Lambda would, through Chalice's test client."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from tools.backfill.fanout import InvocationFailed
from tools.backfill.local import FUNCTION_NAME


class ChaliceInvoker:
    """Synchronous invocations of `backfill_segment` through `chalice.test.Client` (the test client gives it 3 s)."""

    def __init__(self, stage: str, project_dir: Path) -> None:
        from chalice.test import Client

        from app import app

        self._client = Client(app, stage_name=stage, project_dir=str(project_dir))
        self._lock = threading.Lock()
        self.invocations = 0

    def invoke(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Run the function with `payload` as JSON crosses Lambda's boundary; InvocationFailed when it raises."""
        # One call at a time: Chalice's test client sets the stage's variables in os.environ for each call and puts
        # back what it found, so two calls at once from the fan-out's threads would leave one's variables behind.
        with self._lock:
            self.invocations += 1
            try:
                response = self._client.lambda_.invoke(FUNCTION_NAME, json.loads(json.dumps(payload))).payload
            except Exception as error:
                raise InvocationFailed(type(error).__name__) from None
        return json.loads(json.dumps(response))
