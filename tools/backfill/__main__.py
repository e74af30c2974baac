"""`python -m tools.backfill`: the backfill's command line (tools/backfill/cli.py)."""

import sys

from tools.backfill.cli import main

sys.exit(main())
