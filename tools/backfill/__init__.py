"""The local backfill: bring every existing item of a users table under the invariant from this machine (local.py,
with the sweep's page logic, chalicelib/backfill.py); checkpoint.py, table.py, ratelimit.py, progress.py are its
parts, cli.py the command line (`python -m tools.backfill`), urgent.py the deployed sweep's urgent pass. Docs:
docs/backfill.md."""
