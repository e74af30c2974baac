"""The docs can't rot: their links resolve, every project command they show parses, and the ones that run on this
machine alone run verbatim from a fresh clone."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"(?P<marker><!-- docs-test: run -->\s*\n\s*)?```(?P<lang>sh|bash)\n(?P<body>.*?)```", re.S)
# Make targets whose recipe is one of our modules: their ARGS are that module's arguments.
MAKE_MODULES = {"run": "localdev.run", "backfill": "tools.backfill", "backfill-bench": "tools.backfill_bench"}


def shell_blocks(page: Path) -> list[tuple[bool, list[str]]]:
    """(marked to run, the commands) of each sh block; continuation lines joined, comments dropped."""
    blocks = []
    for match in FENCE.finditer(page.read_text()):
        joined = re.sub(r"\\\n\s*", " ", match.group("body"))
        commands = [line.split(" #")[0].strip() for line in joined.splitlines()]
        blocks.append((bool(match.group("marker")), [c for c in commands if c and not c.startswith("#")]))
    return blocks


def project_command(command: str) -> list[str] | None:
    """The `--help` form of a command that runs one of the project's own modules or make targets; None otherwise."""
    words = shlex.split(command.split("&&")[0])
    while words and "=" in words[0] and not words[0].startswith("-"):
        words = words[1:]  # VAR=value prefixes
    if words[:2] == [".venv/bin/python", "-m"] and len(words) > 2:
        module, rest = words[2], words[3:]
        subcommand = [rest[0]] if rest and not rest[0].startswith("-") and module.startswith("tools.") else []
        return [sys.executable, "-m", module, *subcommand, "--help"]
    if words[:1] == ["make"] and len(words) > 1:
        target = words[1]
        arguments = [w.split("=", 1)[1] for w in words[2:] if w.startswith("ARGS=")]
        if target in MAKE_MODULES:
            rest = shlex.split(arguments[0]) if arguments else []
            subcommand = [rest[0]] if rest and not rest[0].startswith("-") and target == "backfill" else []
            return [sys.executable, "-m", MAKE_MODULES[target], *subcommand, "--help"]
        return ["make", "-n", target]
    return None


@pytest.mark.stage_config
def test_the_front_page_is_short_and_every_link_resolves():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 12_000
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^## (.+)$", readme, re.M)}
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            if path:
                assert (page.parent / path).exists(), f"{page.name} links to {target}, which does not exist"
            elif page.name == "README.md":
                assert anchor in anchors, f"README links to #{anchor}, no such section"


@pytest.mark.stage_config
def test_every_project_command_the_docs_show_parses():
    checked = 0
    for page in PAGES:
        for _, commands in shell_blocks(page):
            for command in commands:
                help_form = project_command(command)
                if help_form is None:
                    continue  # the AWS CLI, chalice against AWS, cfn-lint on a generated file
                done = subprocess.run(help_form, cwd=ROOT, capture_output=True, text=True, timeout=120)
                assert done.returncode == 0, f"{page.name}: `{command}` does not parse: {done.stderr[-500:]}"
                checked += 1
    assert checked >= 10


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory):
    """A clone of the committed project, sharing this checkout's installed .venv and node_modules (read only)."""
    clone = tmp_path_factory.mktemp("clone") / "email-checker"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    for name in (".venv", "node_modules"):
        (clone / name).symlink_to(ROOT / name)
    # The clone's files are newer than the install stamps: age them, so make reuses the installs instead of redoing
    # them (npm ci would empty the shared node_modules).
    for name in ("requirements.txt", "requirements-dev.txt", "package.json", "package-lock.json"):
        os.utime(clone / name, (0, 0))
    return clone


def run_verbatim(clone: Path, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a documented command as a user would, in its own process group, ended with the group on a time-out."""
    process = subprocess.Popen(
        ["bash", "-c", command],
        cwd=clone,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        pytest.fail(f"`{command}` did not finish in {timeout:.0f} s:\n{output[-2000:]}")
    return subprocess.CompletedProcess(command, process.returncode, output, "")


def test_the_commands_marked_to_run_run_verbatim_in_a_fresh_clone(fresh_clone):
    marked = [c for page in PAGES for run, commands in shell_blocks(page) if run for c in commands]
    assert marked, "no block is marked <!-- docs-test: run -->"
    for command in marked:
        done = run_verbatim(fresh_clone, command, timeout=300)
        assert done.returncode == 0 and "Traceback" not in done.stdout, f"`{command}`:\n{done.stdout[-3000:]}"


def test_the_tour_make_run_then_one_write_through_the_aws_cli(fresh_clone):
    if shutil.which("aws") is None:
        pytest.skip("the AWS CLI is not installed here (the tour says any AWS CLI will do)")
    tour = (ROOT / "README.md").read_text()
    [write] = [c for _, commands in shell_blocks(ROOT / "README.md") for c in commands if c.startswith("AWS_")]
    assert "make run" in tour
    run = subprocess.Popen(
        ["make", "run"],
        cwd=fresh_clone,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while not any("Ctrl-C to stop" in line for line in lines):
            assert time.monotonic() < deadline and run.poll() is None, "".join(lines)
            lines.append(run.stdout.readline())
        # The tour's command is the line `make run` prints when port 8000 is free; it runs the printed one, which
        # names the port in use (8000, or the one `make run` said it moved to).
        [printed] = [line.strip() for line in lines if "aws dynamodb put-item" in line]
        endpoint = re.search(r"--endpoint-url (\S+)", printed).group(1)
        assert shlex.split(write) == shlex.split(printed.replace(endpoint, "http://127.0.0.1:8000")), printed
        if endpoint != "http://127.0.0.1:8000":
            assert any(line.startswith("warning: port 8000 is in use") for line in lines), "".join(lines)
        write = printed
        wrote = run_verbatim(fresh_clone, write, timeout=60)
        assert wrote.returncode == 0, wrote.stdout
        while not any("write(s)" in line for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            lines.append(run.stdout.readline())
        assert any(re.search(r"\b1 write\(s\)", line) for line in lines), "".join(lines)
    finally:
        os.killpg(run.pid, signal.SIGINT)
        rest, _ = run.communicate(timeout=60)
    assert "Traceback" not in "".join(lines) + rest
