"""The README cannot rot: its shell blocks run here in order, as a user would type them, against a real
``idgen serve`` (for the ``curl`` and ``--url`` lines) and a real ZooKeeper (for the ``--zk`` lines), in a temporary
home directory, with the README's ports replaced by the ones the test servers got. Its ``serve`` synopsis names
every option ``idgen serve`` has.

Not run, and why (:data:`NOT_RUN`): installing the checkout (the tests run against the one installed in their
environment already: reinstalling would replace it), ``bash tests/run.sh`` (it runs this very suite), and the load
test and benchmarks (minutes each; tests/test_loadtest.py runs the load test's runner). None needs a network.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from serverproc import ServerProcess
from zkharness import TEST_CREDENTIALS, ZkServer

from idgen.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = [m["code"] for m in re.finditer(r"^```sh\n(?P<code>.*?)^```$", README, re.MULTILINE | re.DOTALL)]
# Commands of the README's blocks that are not run, each with its reason.
NOT_RUN = {
    "python3 -m pip install .": "the tests run against the checkout installed in their environment",
    "bash tests/run.sh": "it runs this suite",
    "python loadtest/run.py": "the load test runs for minutes (tests/test_loadtest.py runs its runner)",
    "python loadtest/run.py --duration 600 --servers 4 --users 200": "the load test runs for 10 minutes",
    "python bench/bench_generator.py": "a benchmark",
    "python bench/bench_http.py": "a benchmark",
}
SERVE = "idgen serve"  # the Set up block's server: started as a real process on a free port instead of 8080

# A stand-in for curl where it is not installed: GET with -H headers, body to stdout, exit 22 on an HTTP error.
CURL = """\
import sys, urllib.error, urllib.request
args, headers, url = sys.argv[1:], {}, None
while args:
    arg = args.pop(0)
    if arg == "-H":
        name, _, value = args.pop(0).partition(":")
        headers[name.strip()] = value.strip()
    elif not arg.startswith("-"):
        url = arg if "://" in arg else "http://" + arg
try:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
        sys.stdout.buffer.write(response.read())
except urllib.error.HTTPError as exc:
    sys.exit(f"curl: HTTP {exc.code}")
"""


def commands() -> list[str]:
    """Every command of the README's shell blocks, in order: a line's comment dropped, ``a && b`` split."""
    found = []
    for block in BLOCKS:
        for line in block.splitlines():
            command = line.split(" #")[0].strip() if not line.lstrip().startswith("#") else ""
            found += [part.strip() for part in command.split("&&") if part.strip()]
    return found


def test_the_readme_has_the_blocks_this_test_runs() -> None:
    listed = commands()
    assert set(NOT_RUN) <= set(listed), set(NOT_RUN) - set(listed)
    assert SERVE in listed
    assert sum(c.startswith("curl ") for c in listed) >= 5
    assert sum(c.startswith("idgen ") for c in listed) >= 10


@pytest.fixture
def shell_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A user's shell: a home of its own (so the default state directory is fresh), idgen and curl on the PATH,
    ZooKeeper credentials set as DEPLOY.md says, no other ``IDGEN_*`` variable."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "idgen").write_text(f'#!/bin/sh\nexec {sys.executable} -m idgen.cli "$@"\n')
    (bin_dir / "idgen").chmod(0o755)
    if shutil.which("curl") is None:
        (bin_dir / "curl").write_text(f"#!{sys.executable}\n{CURL}")
        (bin_dir / "curl").chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDGEN_") and k != "XDG_STATE_HOME"}
    yield {**env, "HOME": str(home), "PATH": f"{bin_dir}:{env['PATH']}", "IDGEN_ZK_AUTH": TEST_CREDENTIALS}


def test_the_readme_shell_blocks_run_in_order(shell_env: dict[str, str], fresh_zk: ZkServer, tmp_path: Path) -> None:
    ran = []
    server: ServerProcess | None = None
    try:
        for command in commands():
            if command in NOT_RUN:
                continue
            if command == SERVE:
                server = ServerProcess(env=shell_env).started()  # `idgen serve` on a free port, state in ~
                continue
            assert server is not None, f"{command!r} comes before the README starts the server"
            line = command.replace("localhost:8080", f"127.0.0.1:{server.port}")
            line = line.replace("127.0.0.1:2181", fresh_zk.hosts)
            if line.startswith("curl "):
                line = "curl -fsS " + line.removeprefix("curl ")  # an HTTP error fails the line
            result = subprocess.run(
                ["bash", "-c", line], cwd=tmp_path, env=shell_env, capture_output=True, text=True, timeout=60
            )
            assert result.returncode == 0, f"README: {command!r} exited {result.returncode}:\n{result.stderr}"
            assert result.stdout.strip(), f"README: {command!r} printed nothing"
            ran.append(command)
    finally:
        if server is not None:
            server.close()
    assert len(ran) == len(commands()) - len(NOT_RUN) - 1


def test_the_serve_synopsis_names_every_option_of_idgen_serve() -> None:
    synopsis = re.search(r"`idgen serve (\[.*?)`", README, re.DOTALL)
    assert synopsis is not None
    in_readme = re.findall(r"--[a-z][a-z-]*", synopsis[1])
    parser = build_parser()
    serve = next(a for a in parser._subparsers._group_actions if a.dest == "command").choices["serve"]  # type: ignore[union-attr]
    options = {o for a in serve._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
    assert sorted(in_readme) == sorted(options)  # each once
