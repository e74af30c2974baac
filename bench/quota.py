"""Lambda's CPU share for a memory size, enforced on a child process by a cgroup CPU quota, or modelled from CPU time.

Lambda gives a function CPU in proportion to its memory: 1,769 MB is one vCPU (one vCPU-second of credit per second;
https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html), so 256 MB buys 256/1769 of one. Where this
process may create a cgroup (v1's `cpu` controller, or v2's `cpu.max`), the measured handler's process is moved into
one whose CFS quota is that share of one CPU per period, before it starts work; DynamoDB Local and the harness stay
outside. Where it may not, the handler runs at full speed and its wall time is modelled: the process's CPU time is
stretched by 1769/MB, the time it spent waiting is kept (`modelled_seconds`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

FULL_VCPU_MB = 1769
PERIOD_US = 100_000
V1_ROOT = Path("/sys/fs/cgroup/cpu")
V2_ROOT = Path("/sys/fs/cgroup")
PREFIX = "email-checker-bench"
CGROUP_V1 = "cgroup v1 cpu quota"
CGROUP_V2 = "cgroup v2 cpu.max"
MODEL = "CPU-time model"
# Every group this process made and has not removed yet: removed at exit too, whatever happened before.
_LIVE: set[Path] = set()


def cpu_share(memory_mb: int) -> float:
    """The share of one vCPU Lambda gives a function of `memory_mb` (one vCPU at most: the handlers use one)."""
    return min(1.0, memory_mb / FULL_VCPU_MB)


def quota_us(memory_mb: int) -> int:
    """The CFS quota per `PERIOD_US` period for the memory size's share."""
    return round(PERIOD_US * cpu_share(memory_mb))


def modelled_seconds(wall_seconds: float, cpu_seconds: float, memory_mb: int) -> float:
    """Wall time at the memory size's share from a full-speed run: its CPU time stretched, its waiting kept."""
    return wall_seconds + cpu_seconds * (1 / cpu_share(memory_mb) - 1)


@dataclass
class CpuQuota:
    """One memory size's CPU share: a cgroup to put processes in, or none (`mode` MODEL)."""

    memory_mb: int
    mode: str
    path: Path | None = None
    reason: str = ""
    _v2: bool = field(default=False, repr=False)

    @property
    def enforced(self) -> bool:
        """Whether processes started with `command` run under a real quota."""
        return self.path is not None

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside the group: a stub moves its own process in, then execs `argv` (same pid, no threads, no
        work done yet). Unchanged in MODEL mode."""
        if self.path is None:
            return argv
        stub = "import os, sys; open(sys.argv[1], 'w').write(str(os.getpid())); os.execv(sys.argv[2], sys.argv[2:])"
        return [argv[0], "-c", stub, str(self.path / "cgroup.procs"), *argv]

    def throttling(self) -> dict[str, int]:
        """The group's cpu.stat counters so far (periods, throttled periods, throttled time); empty in MODEL mode."""
        if self.path is None:
            return {}
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line.strip())
        if self._v2:
            return {
                "nr_periods": int(stat.get("nr_periods", 0)),
                "nr_throttled": int(stat.get("nr_throttled", 0)),
                "throttled_ms": int(stat.get("throttled_usec", 0)) // 1000,
            }
        return {
            "nr_periods": int(stat.get("nr_periods", 0)),
            "nr_throttled": int(stat.get("nr_throttled", 0)),
            "throttled_ms": int(stat.get("throttled_time", 0)) // 1_000_000,
        }

    def remove(self) -> None:
        """Remove the group: any process of ours still in it is killed first (only the harness's children go in)."""
        if self.path is None:
            return
        _remove_group(self.path)
        self.path = None


def _remove_group(path: Path, attempts: int = 50) -> None:
    for _ in range(attempts):
        if not path.exists():
            break
        with contextlib.suppress(OSError):
            for pid in (path / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        try:
            path.rmdir()
            break
        except OSError:
            time.sleep(0.05)
    _LIVE.discard(path)


@atexit.register
def _remove_all() -> None:
    for path in list(_LIVE):
        _remove_group(path, attempts=10)


def _try_v1(name: str, memory_mb: int) -> Path:
    path = V1_ROOT / name
    path.mkdir()
    _LIVE.add(path)
    (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
    (path / "cpu.cfs_quota_us").write_text(str(quota_us(memory_mb)))
    return path


def _try_v2(name: str, memory_mb: int) -> Path:
    controllers = (V2_ROOT / "cgroup.controllers").read_text().split()
    if "cpu" not in controllers:
        raise OSError("the cgroup v2 root offers no cpu controller")
    if "cpu" not in (V2_ROOT / "cgroup.subtree_control").read_text().split():
        (V2_ROOT / "cgroup.subtree_control").write_text("+cpu")
    path = V2_ROOT / name
    path.mkdir()
    _LIVE.add(path)
    (path / "cpu.max").write_text(f"{quota_us(memory_mb)} {PERIOD_US}")
    return path


def _clear_stale() -> None:
    """Empty groups left by an earlier run of this harness that was killed before it could remove them."""
    for root in (V1_ROOT, V2_ROOT):
        with contextlib.suppress(OSError):
            for path in root.glob(f"{PREFIX}-*"):
                pid = path.name.removeprefix(f"{PREFIX}-").split("-")[0]
                if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                    with contextlib.suppress(OSError):
                        path.rmdir()


@contextlib.contextmanager
def cpu_quota(memory_mb: int, allow_cgroups: bool = True) -> Iterator[CpuQuota]:
    """A CPU quota for the memory size, removed on the way out (errors and Ctrl-C included): a cgroup v1 group, else a
    cgroup v2 group, else MODEL with the reason neither could be made."""
    name = f"{PREFIX}-{os.getpid()}-{memory_mb}mb"
    quota = CpuQuota(memory_mb, MODEL, reason="cgroups not tried")
    try:
        if allow_cgroups:
            _clear_stale()
            reasons = []
            for mode, create, v2, root in ((CGROUP_V1, _try_v1, False, V1_ROOT), (CGROUP_V2, _try_v2, True, V2_ROOT)):
                if not root.is_dir() or (v2 and not (root / "cgroup.controllers").exists()):
                    reasons.append(f"{mode}: {root} absent")
                    continue
                try:
                    quota = CpuQuota(memory_mb, mode, create(name, memory_mb), _v2=v2)
                    break
                except OSError as error:
                    _remove_group(root / name, attempts=1)
                    reasons.append(f"{mode}: {error.strerror or error}")
            else:
                quota = CpuQuota(memory_mb, MODEL, reason="; ".join(reasons))
        yield quota
    finally:
        quota.remove()
