"""The docs' shell commands, and one run of those marked `<!-- docs-test: run -->` in a fresh clone of the committed
project, shared by every test that asserts on them (the demo, the benchmark's smoke run and the trial run once each)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.projects import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(?P<marker><!-- docs-test: run -->\s*\n\s*)?```(?P<lang>sh|bash)\n(?P<body>.*?)```", re.S)
# Every test that uses the clone's runs is in this xdist group, so they share one worker and so one run.
GROUP = "documented-runs"


def shell_blocks(page: Path) -> list[tuple[bool, list[str]]]:
    """(marked to run, the commands) of each sh block; continuation lines joined, comments dropped."""
    blocks = []
    for match in FENCE.finditer(page.read_text()):
        joined = re.sub(r"\\\n\s*", " ", match.group("body"))
        commands = [line.split(" #")[0].strip() for line in joined.splitlines()]
        blocks.append((bool(match.group("marker")), [c for c in commands if c and not c.startswith("#")]))
    return blocks


def marked_commands() -> list[str]:
    """Every command the docs mark to run, in page order."""
    return [c for page in PAGES for run, commands in shell_blocks(page) if run for c in commands]


def fresh_clone(target: Path) -> Path:
    """A clone of the committed project, sharing this checkout's installed .venv and node_modules (read only)."""
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)], check=True, timeout=120)
    for name in (".venv", "node_modules"):
        (target / name).symlink_to(ROOT / name)
    # The clone's files are newer than the install stamps: age them, so make reuses the installs instead of redoing
    # them (npm ci would empty the shared node_modules).
    for name in ("requirements.txt", "requirements-dev.txt", "package.json", "package-lock.json"):
        os.utime(target / name, (0, 0))
    return target


def run_verbatim(
    clone: Path, command: str, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a documented command as a user would, in its own process group, ended with the group on a time-out (the
    output then ends with a line saying so)."""
    process = subprocess.Popen(
        ["bash", "-c", command],
        cwd=clone,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=env,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        output += f"\n[did not finish in {timeout:.0f} s]"
    return subprocess.CompletedProcess(command, process.returncode, output, "")


@dataclass
class DocumentedRuns:
    """The clone, and each marked command's result; `temp` is the runs' TMPDIR (the smoke bench writes there)."""

    clone: Path
    temp: Path
    results: dict[str, subprocess.CompletedProcess[str]]

    def of(self, prefix: str) -> subprocess.CompletedProcess[str]:
        """The one run whose command starts with `prefix`."""
        [found] = [result for command, result in self.results.items() if command.startswith(prefix)]
        return found


def run_marked(target: Path) -> DocumentedRuns:
    """Clone the project into `target` and run every marked command there once, in order."""
    clone = fresh_clone(target / "email-checker")
    temp = target / "tmp"
    temp.mkdir()
    environment = {**os.environ, "TMPDIR": str(temp)}
    results = {command: run_verbatim(clone, command, timeout=300, env=environment) for command in marked_commands()}
    return DocumentedRuns(clone, temp, results)
