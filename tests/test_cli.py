"""The ``idgen`` command, run as users run it: a real process, its stdout, stderr and exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import pytest
from serverproc import ServerProcess
from zkharness import TEST_CREDENTIALS

from idgen import decode, format_id
from idgen.layout import iso_ms


def idgen(
    *args: str, state_dir: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``idgen ARGS`` with no inherited ``IDGEN_*`` variable, plus ``env``, in a scratch working directory (a state
    directory that resolves to the working directory must not land in the checkout)."""
    env_args = ["--state-dir", str(state_dir)] if state_dir else []
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IDGEN_")}
    return subprocess.run(
        [sys.executable, "-m", "idgen.cli", *args, *env_args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **(env or {})},
        cwd=tempfile.gettempdir(),
    )


def test_mint_prints_n_increasing_decimal_ids(tmp_path: Path) -> None:
    result = idgen("mint", "-n", "5000", state_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    ids = [int(line) for line in result.stdout.splitlines()]
    assert len(ids) == 5000
    assert ids == sorted(set(ids))


def test_mint_respects_layout_worker_range_and_format(tmp_path: Path) -> None:
    result = idgen(
        "mint", "-n", "3", "--layout", "twitter", "--worker-ids", "40-41", "--format", "base32", state_dir=tmp_path
    )
    assert result.returncode == 0, result.stderr
    fields = [decode(line, layout="twitter") for line in result.stdout.split()]
    assert {f["worker"] for f in fields} == {40}
    assert {(f["datacenter_id"], f["worker_id"]) for f in fields} == {(1, 8)}


def test_decode_json_has_the_documented_fields() -> None:
    result = idgen("decode", "175928847299117063", "--layout", "discord", "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {
        "id": "175928847299117063",
        "layout": "discord",
        "timestamp_ms": 1462015105796,
        "time": "2016-04-30T11:18:25.796Z",
        "worker_id": 1,
        "process_id": 0,
        "sequence": 7,
        "worker": 32,
    }


@pytest.mark.parametrize("form", ["decimal", "hex", "base32", "base58"])
def test_decode_accepts_every_string_form(form: str) -> None:
    text = format_id(175928847299117063, form)
    result = idgen("decode", text, "--layout", "discord", "--json")
    assert json.loads(result.stdout)["id"] == "175928847299117063"


def test_decode_refuses_an_all_digit_base32_id_in_one_line_unless_format_says_which() -> None:
    """``0737185780000`` is base32 for 255826949459410944 and decimal for 737185780000: never a guess."""
    refused = idgen("decode", "0737185780000", "--json")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "ambiguous ID" in refused.stderr
    assert "decimal 737185780000 and base32 255826949459410944" in refused.stderr
    read = idgen("decode", "0737185780000", "--format", "base32", "--json")
    assert json.loads(read.stdout)["id"] == "255826949459410944"
    assert json.loads(idgen("decode", "0737185780000", "--format", "decimal", "--json").stdout)["id"] == "737185780000"


def test_decode_reads_a_string_in_the_one_form_that_fits_the_layout(tmp_path: Path) -> None:
    decoded = idgen("decode", "1234567890123", "--layout", "js53", "--json")
    assert json.loads(decoded.stdout)["id"] == "1234567890123", decoded.stderr
    assert idgen("decode", "1234567890123", "--json").returncode == 2  # 63 bits: base32 fits too
    with ServerProcess("--state-dir", str(tmp_path), "--layout", "js53") as server:  # the servers know the layout
        asked = idgen("decode", "1234567890123", "--json", "--url", f"http://127.0.0.1:{server.port}")
        assert json.loads(asked.stdout)["id"] == "1234567890123", asked.stderr
    narrow = "time:30,worker_id:4,sequence:4;epoch=2025-01-01"  # 38 bits: neither reading of 0737185780000 fits
    refused = idgen("decode", "0737185780000", "--layout", narrow)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "is no ID of 38 bits: it reads as decimal 737185780000 and base32" in refused.stderr, refused.stderr


def test_decode_plain_text_is_readable() -> None:
    result = idgen("decode", "175928847299117063", "--layout", "discord")
    assert "time          2016-04-30T11:18:25.796Z" in result.stdout


def test_version_is_the_installed_distribution_s() -> None:
    result = idgen("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"idgen {version('idgen-service')}\n"


def test_layouts_lists_every_preset_with_its_end_date_and_explains_specs() -> None:
    result = idgen("layouts")
    presets, _, explained = result.stdout.partition("\n\n")
    assert [line.split()[0] for line in presets.splitlines()] == [
        "idgen",
        "twitter",
        "discord",
        "sonyflake",
        "instagram",
        "js53",
    ]
    assert "runs out 2094-09-07" in presets
    assert "time:41,worker_id:10,sequence:12;epoch=2025-01-01;unit=1ms" in explained  # the grammar, by example
    assert "js53" in explained and "2**53" in explained and "64 workers" in explained  # its trade-offs
    described = json.loads(idgen("layouts", "--json").stdout)
    assert described[0]["expires"] == "2094-09-07T15:47:35.551Z"
    assert described[0]["spec_string"] == "time:41,worker_id:10,sequence:12;epoch=2025-01-01"


SPEC = "time:40,shard:8,sequence:15;epoch=2025-06-01;unit=2ms"


def test_mint_and_decode_take_a_layout_spec_from_the_option_or_the_variable(tmp_path: Path) -> None:
    minted = idgen("mint", "-n", "3", "--layout", SPEC, state_dir=tmp_path)
    assert minted.returncode == 0, minted.stderr
    first = minted.stdout.split()[0]
    shown = json.loads(idgen("decode", first, "--json", env={"IDGEN_LAYOUT": SPEC}).stdout)
    assert shown == decode(first, SPEC) and shown["layout"] == SPEC and "shard" in shown


def test_mint_js53_ids_are_safe_javascript_integers(tmp_path: Path) -> None:
    minted = idgen("mint", "-n", "2000", "--layout", "js53", state_dir=tmp_path)
    assert minted.returncode == 0, minted.stderr
    assert all(int(line) <= 2**53 - 1 for line in minted.stdout.split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["decode", "abc"], "'abc' is not an ID"),
        (["decode", "--", "-5"], "'-5' is not an ID"),
        (["decode", "9223372036854775808"], "is not a 63-bit ID"),
        (["decode", "123", "--layout", "nope"], "unknown layout 'nope'"),
        (["mint", "-n", "0"], "'0' is not a positive whole number (1 to inf)"),
        (["mint", "-n", "x"], "'x' is not a positive whole number"),
        (["mint", "--layout", "nope"], "unknown layout 'nope'"),
        (["mint", "--worker-ids", "9-2"], "must satisfy 0 <= A <= B"),
        (["mint", "--worker-ids", "0-5000"], "do not fit layout 'idgen'"),
        # ZooKeeper hands out worker IDs: a local range with --zk was silently ignored (refused before connecting)
        (["mint", "--zk", "127.0.0.1:1", "--worker-ids", "0-3"], "--worker-ids (IDGEN_WORKER_IDS) is for the local"),
        (["frobnicate"], "invalid choice"),
        ([], "the following arguments are required"),
        (["mint", "--layout", "time:41,worker_id:10,sequence:12"], "epoch=YYYY-MM-DD is required"),
        (["decode", "1", "--layout", "time:41,wid:9,sequence:12;epoch=2025-01-01;unit=1s"], "'1s' is not a unit"),
        (["leases"], "ZooKeeper hosts are required: --zk HOSTS or IDGEN_ZK=HOSTS"),
        # digits of other scripts: int() reads Arabic-Indic 3 as 3
        (["mint", "-n", "\u0663"], "'\u0663' is not a positive whole number"),
        (["mint", "--worker-ids", "\u0663-\u0664"], "are not of the form A-B"),
        (["mint", "--worker-ids", "\uff13"], "are not of the form A-B"),  # fullwidth 3
        (["mint", "-n", "1_000"], "'1_000' is not a positive whole number"),
        (["serve", "--port", "\u0668\u0660"], "is not a port number"),
        (["serve", "--max-lead", "\u0661"], "is not a number of seconds"),
        (["serve", "--census-interval", "0.5"], "'0.5' is not a number of seconds (1 to 3600)"),
        (["serve", "--census-interval", "nan"], "'nan' is not a number of seconds"),
        (["serve", "--idle-timeout", "2"], "'2' is not a number of seconds (5 to 3600)"),
        (["serve", "--zk-session-timeout", "\u0665"], "is not a positive number"),
        (["decode", "\u0661\u0662\u0663"], "is not an ID"),
        # idgen() adds --state-dir
        (["mint", "--url", "http://127.0.0.1:1"], "leave --state-dir (IDGEN_STATE_DIR) unset"),
        (["decode", "1", "--layout", "discord", "--url", "http://127.0.0.1:1"], "leave --layout (IDGEN_LAYOUT) unset"),
        (["mint", "--layout", "time:\u0664\u0661,worker_id:10,sequence:12;epoch=2025-01-01"], "is not name:bits"),
        (["mint", "--state-dir", ""], "an empty path is not a directory"),  # was the working directory
        (["mint", "--state-dir", "  "], "an empty path is not a directory"),
        # an option given twice was silently the last one
        (["mint", "-n", "3", "--count", "5"], "-n/--count is given twice"),
        (["serve", "--port", "1", "--port", "2"], "--port is given twice"),
        (["decode", "1", "--layout", "idgen", "--layout", "discord"], "--layout is given twice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = idgen(*args, state_dir=tmp_path if args[:1] == ["mint"] else None)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "variable", "value"),
    [
        (["mint"], "IDGEN_LAYOUT", "nope"),
        (["mint"], "IDGEN_WORKER_IDS", "seven"),
        (["decode", "123"], "IDGEN_LAYOUT", "time:41"),
        (["serve"], "IDGEN_PORT", "eighty"),
        (["serve"], "IDGEN_MAX_COUNT", "0"),
        (["serve"], "IDGEN_PROCESSES", "-2"),
        (["serve"], "IDGEN_ACCESS_LOG", "maybe"),
        (["serve"], "IDGEN_ZK_SESSION_TIMEOUT", "soon"),
        (["serve"], "IDGEN_MAX_LEAD", "-1"),
        # every command validates every variable it uses, options or not (mint used to ignore IDGEN_MAX_LEAD)
        (["mint"], "IDGEN_MAX_LEAD", "-1"),
        (["mint"], "IDGEN_MAX_LEAD", "\u0661"),
        (["mint"], "IDGEN_WORKER_IDS", "\u0663-\u0664"),
        (["mint"], "IDGEN_ZK_SESSION_TIMEOUT", "soon"),
        (["mint"], "IDGEN_URL", "ftp://127.0.0.1:1"),
        (["decode", "123"], "IDGEN_URL", "nowhere"),
        (["serve"], "IDGEN_PORT", "\u0668\u0660"),
        (["serve"], "IDGEN_MAX_COUNT", "\u0661\u0660"),
        (["serve"], "IDGEN_PROCESSES", "\u0662"),
        (["mint"], "IDGEN_STATE_DIR", ""),  # was the default directory, while --state-dir '' was the working one
        (["serve"], "IDGEN_STATE_DIR", " "),
    ],
)
def test_a_bad_variable_is_one_line_that_names_it(tmp_path: Path, args: list[str], variable: str, value: str) -> None:
    result = idgen(*args, env={"IDGEN_STATE_DIR": str(tmp_path), variable: value})
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and f"{variable}: " in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["mint"], ["decode", "1"], ["leases"], ["zk-secure"]])
@pytest.mark.parametrize("auth", ["user:", ":password", "user"])
def test_zookeeper_credentials_without_a_user_or_a_password_are_refused(
    tmp_path: Path, command: list[str], auth: str
) -> None:
    """``IDGEN_ZK_AUTH=user:`` was taken as a user with an empty password; refused before any connection."""
    result = idgen(*command, env={"IDGEN_STATE_DIR": str(tmp_path), "IDGEN_ZK_AUTH": auth, "IDGEN_ZK": "127.0.0.1:1"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "must look like user:password" in result.stderr, result.stderr


def test_an_empty_state_dir_variable_is_refused_by_the_python_api_too(tmp_path: Path) -> None:
    code = "import idgen\ntry:\n    idgen.Generator()\nexcept idgen.InvalidInput as e:\n    print(e)"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IDGEN_")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={**clean, "IDGEN_STATE_DIR": ""}
    )
    assert result.stdout.startswith("IDGEN_STATE_DIR: an empty path is not a directory"), result


def test_an_option_wins_over_its_variable(tmp_path: Path) -> None:
    result = idgen("mint", "--layout", "twitter", env={"IDGEN_LAYOUT": "nope", "IDGEN_STATE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert decode(result.stdout.strip(), layout="twitter")["layout"] == "twitter"


def test_a_state_dir_it_cannot_write_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = idgen("mint", state_dir=blocker / "sub")
    assert result.returncode == 1
    assert result.stderr.startswith("idgen: error:") and result.stderr.count("\n") == 1


def test_mint_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    result = subprocess.run(
        f"{sys.executable} -m idgen.cli mint -n 200000 --state-dir {tmp_path} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip().isdigit()
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe garbage", "is unreadable: not JSON"),
        (b'{"layout": 3}', "is unreadable: not a layout spec"),
        (b'{"name": "x", "fields": [["time", 41]], "epoch_ms": 1e999, "unit_ms": 1}', "not a layout spec"),
    ],
)
def test_a_garbage_layout_file_is_one_line_and_exit_1(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "layout.json").write_bytes(content)
    result = idgen("mint", state_dir=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_a_corrupt_record_is_never_used_and_the_other_worker_ids_still_mint(tmp_path: Path) -> None:
    first = idgen("mint", "--worker-ids", "0-1", state_dir=tmp_path)
    assert decode(first.stdout.strip())["worker_id"] == 0
    (tmp_path / "worker-00000.json").write_text('{"fence_ms": "soon"')  # torn
    for _ in range(2):
        again = idgen("mint", "--worker-ids", "0-1", state_dir=tmp_path)
        assert again.returncode == 0, again.stderr
        assert decode(again.stdout.strip())["worker_id"] == 1
        assert "worker ID 0 quarantined" in again.stderr and "Traceback" not in again.stderr
    only_corrupt = idgen("mint", "--worker-ids", "0-0", state_dir=tmp_path)
    assert only_corrupt.returncode == 1
    assert "quarantined" in only_corrupt.stderr.splitlines()[-1] and "Traceback" not in only_corrupt.stderr


def test_mint_with_idgen_url_or_url_takes_its_ids_from_the_servers(tmp_path: Path) -> None:
    """``idgen mint`` with ``IDGEN_URL`` used to lease a worker ID of its own, in its own state directory, and
    handed out IDs the server handed out too. Three real mints (two by the variable, one by ``--url``) and direct
    ``GET /id`` calls, all at once: every ID comes from the server's worker ID, and none is handed out twice."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IDGEN_")}
    home = tmp_path / "home"  # a default state directory of the mints' own, as a user's shell has
    with ServerProcess("--state-dir", str(tmp_path / "server"), "--worker-ids", "7-7") as server:
        url = f"http://127.0.0.1:{server.port}"
        env = {**clean, "HOME": str(home)}
        command = [sys.executable, "-m", "idgen.cli", "mint", "-n", "30000"]
        runs = [(command, {"IDGEN_URL": url}), (command, {"IDGEN_URL": url}), ([*command, "--url", url], {})]
        outputs = [tmp_path / f"mint-{i}.txt" for i in range(len(runs))]  # files: a full pipe would stall a mint
        mints = [
            subprocess.Popen(argv, stdout=out.open("w"), stderr=subprocess.PIPE, text=True, env=env | extra)
            for (argv, extra), out in zip(runs, outputs, strict=True)
        ]
        direct: list[int] = []
        while any(m.poll() is None for m in mints):
            direct += map(int, server.get("/id?count=1000").json()["ids"])
    for mint in mints:
        assert mint.wait(60) == 0, mint.communicate()[1]
    minted = [int(line) for out in outputs for line in out.read_text().split()]
    assert len(minted) == 90000 and direct
    everything = minted + direct
    assert len(set(everything)) == len(everything), f"{len(everything) - len(set(everything))} IDs handed out twice"
    assert {decode(i)["worker"] for i in minted} == {7}
    assert not home.exists()  # no local lease was taken


def test_decode_with_idgen_url_asks_the_server(tmp_path: Path) -> None:
    """The servers know their layout and their lease history: ``decode`` with ``IDGEN_URL`` shows theirs."""
    with ServerProcess("--state-dir", str(tmp_path), "--layout", "twitter") as server:
        url = f"http://127.0.0.1:{server.port}"
        minted = server.get("/id").json()["id"]
        shown = idgen("decode", minted, "--json", env={"IDGEN_URL": url})
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout) == server.get(f"/decode/{minted}").json()
        assert json.loads(shown.stdout)["layout"] == "twitter"
        plain = idgen("decode", minted, "--url", url)
        assert plain.returncode == 0, plain.stderr
        node = next(line for line in plain.stdout.splitlines() if line.startswith("node "))
        assert json.loads(node.removeprefix("node"))["pid"] == server.pid  # JSON, not a Python repr
        junk = idgen("decode", "abc", "--url", url)
        assert junk.returncode == 2 and junk.stderr.count("\n") == 1 and "'abc' is not an ID" in junk.stderr
    down = idgen("decode", minted, "--url", url)
    assert down.returncode == 1 and down.stderr.count("\n") == 1 and url in down.stderr, down.stderr


@pytest.mark.parametrize("args", [["serve"], ["leases", "--zk", "127.0.0.1:1"], ["zk-secure", "--zk", "127.0.0.1:1"]])
def test_commands_that_take_no_ids_from_servers_refuse_idgen_url(args: list[str]) -> None:
    """``serve`` leases worker IDs of its own and ``leases``/``zk-secure`` read ZooKeeper: an ``IDGEN_URL`` they
    would ignore is refused in one line."""
    result = idgen(*args, env={"IDGEN_URL": "http://127.0.0.1:1"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "IDGEN_URL" in result.stderr, result.stderr


def test_leases_text_shows_every_holder_of_the_history(zk_hosts: str, zk_namespace: str) -> None:
    """The README promises live leases, fences and history; the text output showed no history."""
    env = {"IDGEN_ZK_AUTH": TEST_CREDENTIALS, "IDGEN_ZK": zk_hosts, "IDGEN_NAMESPACE": zk_namespace}
    for _ in range(3):  # three holders, one after the other
        assert idgen("mint", env=env).returncode == 0
    described = json.loads(idgen("leases", "--json", env=env).stdout)
    text = idgen("leases", env=env)
    assert text.returncode == 0, text.stderr
    holders = [h for worker_holders in described["history"].values() for h in worker_holders]
    assert len(holders) == 3, described
    history = text.stdout.partition("\nhistory")[2]
    rows = [line for line in history.splitlines() if line.split()[:1] and line.split()[0].isdigit()]
    assert len(rows) == 3, text.stdout
    for row, holder in zip(rows, holders, strict=True):
        assert row.split()[0] == str(holder["worker_id"]), row
        assert f"pid {holder['pid']}" in row and holder["host"] in row, row
        assert iso_ms(holder["after_ms"]) in row and iso_ms(holder["fence_ms"]) in row, row
