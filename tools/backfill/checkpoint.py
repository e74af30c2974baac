"""The backfill's checkpoint file: each segment's resume key, done flag and counts, saved atomically."""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chalicelib.backfill import Counts, SegmentResult, key_from_json, key_to_json
from tools.project import ROOT

CHECKPOINT_VERSION = 1


def default_checkpoint_path(table_name: str, dry_run: bool) -> Path:
    """Where a backfill keeps its checkpoint unless told: one file per table and mode, so a dry run never blocks
    (or resumes) a real one."""
    return ROOT / ".state" / f"backfill-{table_name}{'-dry-run' if dry_run else ''}.json"


class CheckpointMismatch(ValueError):
    """The checkpoint file belongs to another backfill (table, segments or mode differ)."""


@dataclass
class SegmentState:
    """Where one segment stands: the key to resume after (None: from the start, or finished when `done`)."""

    last_evaluated_key: dict[str, Any] | None = None
    done: bool = False
    counts: Counts = field(default_factory=Counts)


@dataclass
class Checkpoint:
    """Per-segment resume points and counts, saved atomically as JSON (keys in DynamoDB JSON, binary as base64)."""

    path: Path | None
    table_name: str
    total_segments: int
    dry_run: bool
    segments: dict[int, SegmentState]
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(cls, path: Path | None, table_name: str, total_segments: int, dry_run: bool) -> Checkpoint:
        """The checkpoint at `path` if there is one for this backfill, a fresh one otherwise."""
        if path is not None and path.exists():
            raw = json.loads(path.read_text())
            found = (raw.get("table_name"), raw.get("total_segments"), raw.get("dry_run"))
            if found != (table_name, total_segments, dry_run) or raw.get("version") != CHECKPOINT_VERSION:
                raise CheckpointMismatch(
                    f"{path} is the checkpoint of another backfill (table, --segments or --dry-run differ): "
                    "use the same options to resume, or another --checkpoint to start afresh"
                )
            segments = {
                int(number): SegmentState(
                    key_from_json(state["last_evaluated_key"]), state["done"], Counts.from_dict(state["counts"])
                )
                for number, state in raw["segments"].items()
            }
            return cls(path, table_name, total_segments, dry_run, segments)
        return cls(path, table_name, total_segments, dry_run, {n: SegmentState() for n in range(total_segments)})

    def record(self, result: SegmentResult, counts: Counts) -> None:
        """Note where a segment stands and add what it did; then save."""
        with self._lock:
            state = self.segments[result.segment]
            state.last_evaluated_key = result.last_evaluated_key
            state.done = result.done
            state.counts.add(counts)
            self._save()

    def totals(self) -> Counts:
        """The counts of every segment added up."""
        with self._lock:
            total = Counts()
            for state in self.segments.values():
                total.add(state.counts)
            return total

    def unfinished(self) -> list[int]:
        """The segments not done yet, in order."""
        return sorted(number for number, state in self.segments.items() if not state.done)

    def to_json(self) -> dict[str, Any]:
        """The file's content."""
        totals = Counts()
        for state in self.segments.values():
            totals.add(state.counts)
        return {
            "version": CHECKPOINT_VERSION,
            "table_name": self.table_name,
            "total_segments": self.total_segments,
            "dry_run": self.dry_run,
            "totals": totals.to_dict(),
            "segments": {
                str(number): {
                    "last_evaluated_key": key_to_json(state.last_evaluated_key),
                    "done": state.done,
                    "counts": state.counts.to_dict(),
                }
                for number, state in sorted(self.segments.items())
            },
        }

    def save(self) -> None:
        """Write the file atomically (a crash leaves the old one or the new one, never half of one)."""
        with self._lock:
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, scratch = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as out:
                json.dump(self.to_json(), out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(scratch, 0o600)  # it holds keys
            os.replace(scratch, self.path)
        except BaseException:
            Path(scratch).unlink(missing_ok=True)
            raise
