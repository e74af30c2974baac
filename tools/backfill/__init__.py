"""The backfill: bring every existing item of a users table under the invariant, from this machine (local.py) or
fanned out over the Lambda function (fanout.py); checkpoint.py, table.py, ratelimit.py, progress.py are their
parts, cli.py the command line (`python -m tools.backfill`). Docs: docs/backfill.md."""
