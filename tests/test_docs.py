"""The docs can't rot: their links resolve, every project command they show parses, and the ones that run on this
machine alone run verbatim from a fresh clone."""

from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import shlex
import signal
import subprocess
import sys
import time
import warnings

import pytest

from tests.documented import GROUP, PAGES, run_verbatim, shell_blocks
from tests.projects import ROOT

# Make targets whose recipe is one of our modules: their ARGS are that module's arguments.
MAKE_MODULES = {"run": "localdev.run", "backfill": "tools.backfill", "backfill-bench": "bench.backfill_bench"}


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


def parses(help_form: list[str]) -> tuple[int, str]:
    """Run a `--help` form: a module's in this process (its `__main__`, as `python -m` runs it: argparse prints the help
    and exits), make's dry run as a command in the checkout (it has the Makefile); (exit code, what it said)."""
    if help_form[0] == "make":
        done = subprocess.run(help_form, cwd=ROOT, capture_output=True, text=True, timeout=120)
        return done.returncode, done.stdout + done.stderr
    saved, said = sys.argv, io.StringIO()
    sys.argv = [help_form[2], *help_form[3:]]
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said), warnings.catch_warnings():
            # A module the tests imported already runs again as __main__: runpy warns, as it should, and it's harmless.
            warnings.simplefilter("ignore", RuntimeWarning)
            runpy.run_module(help_form[2], run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        return exit.code or 0, said.getvalue()
    finally:
        sys.argv = saved
    return 0, said.getvalue()


def test_every_project_command_the_docs_show_parses():
    forms = {}  # each distinct --help form once, with the first command that showed it
    for page in PAGES:
        for _, commands in shell_blocks(page):
            for command in commands:
                help_form = project_command(command)
                if help_form is not None:  # else the AWS CLI, chalice against AWS, cfn-lint on a generated file
                    forms.setdefault(tuple(help_form), f"{page.name}: `{command}`")
    for help_form, shown in forms.items():
        code, said = parses(list(help_form))
        assert code == 0 and ("usage" in said or help_form[0] == "make"), f"{shown} does not parse: {said[-500:]}"
    assert len(forms) >= 10


@pytest.mark.xdist_group(GROUP)
def test_the_commands_marked_to_run_run_verbatim_in_a_fresh_clone(documented_runs):
    assert documented_runs.results, "no block is marked <!-- docs-test: run -->"
    for command, done in documented_runs.results.items():
        assert done.returncode == 0 and "Traceback" not in done.stdout, f"`{command}`:\n{done.stdout[-3000:]}"


@pytest.mark.xdist_group(GROUP)
def test_the_tour_make_run_then_one_write_through_the_aws_cli(documented_runs, port_8000):
    fresh_clone = documented_runs.clone
    tour = (ROOT / "README.md").read_text()
    [write] = [c for _, commands in shell_blocks(ROOT / "README.md") for c in commands if c.startswith("AWS_")]
    [make_run] = [c for _, commands in shell_blocks(ROOT / "README.md") for c in commands if c.startswith("make run")]
    assert "make run" in tour
    run = subprocess.Popen(
        shlex.split(make_run),
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
        # The AWS CLI `make` installs (requirements-dev.txt pins it) first on the PATH, as the README says.
        with_cli = {**os.environ, "PATH": f"{fresh_clone / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
        wrote = run_verbatim(fresh_clone, write, timeout=60, env=with_cli)
        assert wrote.returncode == 0, wrote.stdout
        while not any("write(s)" in line for line in lines):
            assert time.monotonic() < deadline, "".join(lines)
            lines.append(run.stdout.readline())
        assert any(re.search(r"\b1 write\(s\)", line) for line in lines), "".join(lines)
    finally:
        os.killpg(run.pid, signal.SIGINT)
        rest, _ = run.communicate(timeout=60)
    assert "Traceback" not in "".join(lines) + rest
