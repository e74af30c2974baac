"""One cold start, in the fresh interpreter it runs in: import the handler's module, then handle the first batch.

python -m bench.coldstart {email-checker|baseline} EVENT.json RESULT.json

Only the standard library is imported before the clock starts. The handler's module is imported the way Lambda's
runtime imports it (by name, from the folder that holds it); the environment (stage variables, endpoint) is the
parent's business.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    """Time the import and the first batch; write them, with the handler's answer, as JSON."""
    kind, event_path, result_path = argv
    event = json.loads(Path(event_path).read_text())
    cpu_started = time.process_time()
    started = time.perf_counter()
    if kind == "email-checker":
        sys.path.insert(0, str(ROOT))
        import app

        handler = app.sync_is_personal_email
    else:
        sys.path.insert(0, str(ROOT / "bench" / "baseline"))
        import lambda_function

        handler = lambda_function.lambda_handler
    imported = time.perf_counter()
    if kind == "email-checker":
        # What the first invocation builds before it reads a record (botocore, the client, Powertools), timed on its
        # own: the handler's own call to processor_for then finds it built. The baseline builds its resource at import.
        import os

        from chalicelib.config import Settings
        from chalicelib.runtime import processor_for

        processor_for(Settings.from_environ(os.environ))
    set_up = time.perf_counter()
    answer = handler(event, None)
    finished = time.perf_counter()
    result = {
        "import_s": imported - started,
        "client_setup_s": set_up - imported,
        "first_batch_s": finished - started,
        "cpu_s": time.process_time() - cpu_started,
        "answer": answer,
    }
    Path(result_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
