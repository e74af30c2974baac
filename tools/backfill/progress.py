"""The backfill's progress bar and closing summary (counts and segment numbers only, never a key)."""

from __future__ import annotations

import threading
from typing import Any

from chalicelib.backfill import Counts
from tools.backfill.checkpoint import Checkpoint


class Progress:
    """The progress bar: items scanned, with written / already correct / superseded; tqdm when available."""

    def __init__(self, total: int | None, initial: Counts, enabled: bool, dry_run: bool) -> None:
        self._lock = threading.Lock()
        self._counts = Counts()
        self._counts.add(initial)
        self._dry_run = dry_run
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total or None, initial=initial.scanned, unit=" items", dynamic_ncols=True)
            self._bar.set_postfix_str(self.postfix(), refresh=False)

    def postfix(self) -> str:
        """The counts after the bar."""
        c = self._counts
        written = f"would write {c.to_write}" if self._dry_run else f"written {c.written}"
        return (
            f"{written}, already correct {c.already_correct}, superseded {c.superseded}, gone {c.gone}, "
            f"failed {c.failed}"
        )

    def add(self, counts: Counts) -> None:
        """Count a page."""
        with self._lock:
            self._counts.add(counts)
            if self._bar is not None:
                self._bar.update(counts.scanned)
                self._bar.set_postfix_str(self.postfix(), refresh=False)

    def close(self) -> None:
        """Finish the bar."""
        if self._bar is not None:
            self._bar.close()


def summary(totals: Counts, checkpoint: Checkpoint, seconds: float, interrupted: bool, failed_left: int = 0) -> str:
    """The closing report: counts, rates, and what is left (never a key). Every item of a finished page is counted
    once, as already correct, fixed, superseded, gone or rejected; `failed_left` counts the writes still failing on the
    pages left to redo (their other items are counted when those pages are)."""
    left = checkpoint.unfinished()
    lines = [
        f"backfill of {checkpoint.table_name}{' (dry run)' if checkpoint.dry_run else ''}: "
        f"{checkpoint.total_segments - len(left)}/{checkpoint.total_segments} segments done",
        f"  scanned          {totals.scanned}   (each item once: already correct + "
        f"{'would write' if checkpoint.dry_run else 'needed a write'})",
        f"  already correct  {totals.already_correct}",
        f"  {'would write' if checkpoint.dry_run else 'needed a write':<17}{totals.to_write}"
        + ("" if checkpoint.dry_run else "   (fixed + superseded + gone + rejected)"),
    ]
    if not checkpoint.dry_run:
        lines += [
            f"  fixed            {totals.written}",
            f"  superseded       {totals.superseded}   (changed since the scan: the stream handler has them)",
            f"  gone             {totals.gone}   (deleted since the scan: nothing to write)",
            f"  rejected         {totals.rejected}   (refused by DynamoDB: a retry can't succeed)",
            f"  failed           {failed_left}   (writes still failing on the pages left to redo: they are scanned "
            "again on resume)",
        ]
    lines.append(f"  read units       {totals.read_units:.1f}   write units {totals.write_units:.1f}")
    if seconds > 0:
        lines.append(f"  this run: {seconds:.1f} s")
    if left:
        reason = "interrupted" if interrupted else "not finished"
        lines.append(f"  {reason}: {len(left)} segment(s) left; run the same command again to resume")
    return "\n".join(lines)
