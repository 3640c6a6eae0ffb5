"""The operator CLI as operators use it: exit codes, one-line errors, JSON shapes, files it writes."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from mssecure.cli import main
from mssecure.config import load_config, render_config
from mssecure.directory.identifiers import luhn_check_digit
from tests.conftest import Operator

RPPS = "1010001000" + luhn_check_digit("1010001000")
FINESS = "59000001" + luhn_check_digit("59000001")
DOCTOR = "camille.lefevre@chu-nord.mssante.test"
ROOT = Path(__file__).resolve().parents[2]


def assert_one_line_error(output: str, *fragments: str) -> None:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("mssecure: error: "), output
    assert "Traceback" not in output
    for fragment in fragments:
        assert fragment in lines[0]


def add_doctor(op: Operator, *extra: str) -> None:
    result = op.run("directory", "add", DOCTOR, "--kind", "personal", "--rpps", RPPS, "--last-name", "LEFÈVRE",
                    "--first-name", "Camille", "--profession", "10", *extra)  # fmt: skip
    assert result.exit_code == 0, result.output


# -- configuration


def test_example_config_is_generated_from_the_declarations_and_loads() -> None:
    example = ROOT / "config" / "mssecure.example.toml"
    assert example.read_text(encoding="utf-8") == render_config()
    config = load_config(example, environ={})
    assert config.operator.domain == "chu-nord.mssante.test"


def test_init_creates_a_private_config_and_an_initialised_database(operator: Operator) -> None:
    assert stat.S_IMODE(operator.config.stat().st_mode) == 0o600
    assert stat.S_IMODE((operator.directory / "data").stat().st_mode) == 0o700
    assert stat.S_IMODE((operator.directory / "mssecure.db").stat().st_mode) == 0o600
    text = operator.config.read_text()
    assert 'domain = "chu-nord.mssante.test"' in text
    assert "# " in text
    assert operator.run("db", "current").exit_code == 0


def test_init_creates_secret_files_private_whatever_the_umask(tmp_path: Path) -> None:
    import sqlite3

    root = tmp_path / "op"
    previous = os.umask(0)  # the most permissive: a file created then chmod-ed would be world-readable a while
    try:
        result = CliRunner().invoke(main, ["init", str(root), "--domain", "chu-nord.mssante.test"])
        connection = sqlite3.connect(root / "mssecure.db")  # the WAL files SQLite creates take the database's mode
        try:
            connection.execute("CREATE TABLE probe (x)")
            wal = {n: stat.S_IMODE((root / n).stat().st_mode) for n in ("mssecure.db-wal", "mssecure.db-shm")}
        finally:
            connection.close()
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    secret = ["mssecure.toml", "mssecure.db", "data/master.key", *(f"data/keys/{k}.key" for k in ("ca", "tls"))]
    assert {name: stat.S_IMODE((root / name).stat().st_mode) for name in secret} == dict.fromkeys(secret, 0o600)
    assert wal == {"mssecure.db-wal": 0o600, "mssecure.db-shm": 0o600}
    assert stat.S_IMODE((root / "data" / "pki" / "ca.crt").stat().st_mode) == 0o644


@pytest.mark.parametrize("name", ["mssecure.toml", "mssecure.db"])
def test_init_never_writes_through_a_symbolic_link(tmp_path: Path, name: str) -> None:
    (tmp_path / "op").mkdir()
    target = tmp_path / "elsewhere"
    (tmp_path / "op" / name).symlink_to(target)  # dangling: exists() says no, a plain open would follow it
    result = CliRunner().invoke(main, ["init", str(tmp_path / "op"), "--domain", "chu-nord.mssante.test"])
    assert result.exit_code == 1
    assert_one_line_error(result.output, f"{name} already exists")
    assert not target.exists()
    assert [p.name for p in (tmp_path / "op").iterdir()] == [name]


def test_init_refuses_to_overwrite(operator: Operator) -> None:
    before = operator.config.read_bytes()
    result = CliRunner().invoke(main, ["init", str(operator.directory), "--domain", "other.mssante.test"])
    assert result.exit_code == 1
    assert_one_line_error(result.output, "already exists")
    assert operator.config.read_bytes() == before


def test_init_refuses_an_existing_database_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "op").mkdir()
    (tmp_path / "op" / "mssecure.db").write_bytes(b"someone else's")
    result = CliRunner().invoke(main, ["init", str(tmp_path / "op"), "--domain", "chu-nord.mssante.test"])
    assert result.exit_code == 1
    assert_one_line_error(result.output, "already exists")
    assert sorted(p.name for p in (tmp_path / "op").iterdir()) == ["mssecure.db"]


@pytest.mark.parametrize("domain", ["not a domain", "localhost", "chu..test", "-x.test", "a.123"])
def test_init_refuses_a_bad_domain(tmp_path: Path, domain: str) -> None:
    result = CliRunner().invoke(main, ["init", str(tmp_path / "op"), "--domain", domain])
    assert result.exit_code == 2
    assert "not a fully qualified domain name" in result.output
    assert not (tmp_path / "op").exists()


@pytest.mark.postgres
def test_init_on_postgresql(operator_on: Operator) -> None:
    add_doctor(operator_on)
    result = operator_on.run("directory", "show", DOCTOR, "--json")
    assert json.loads(result.output)["national_id"] == "8" + RPPS


def test_no_configuration_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MSSECURE_CONFIG", raising=False)
    result = CliRunner().invoke(main, ["directory", "list"])
    assert result.exit_code == 1
    assert_one_line_error(result.output, "--config", "MSSECURE_CONFIG", "./mssecure.toml", "mssecure init")


def test_the_error_says_where_the_missing_config_path_came_from(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.toml")
    result = CliRunner().invoke(main, ["--config", missing, "directory", "list"])
    assert_one_line_error(result.output, missing, "(from --config)")
    result = CliRunner().invoke(main, ["directory", "list"], env={"MSSECURE_CONFIG": missing})
    assert_one_line_error(result.output, missing, "(from $MSSECURE_CONFIG)")


def test_current_directory_config_is_found(operator: Operator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(operator.directory)
    monkeypatch.delenv("MSSECURE_CONFIG", raising=False)
    result = CliRunner().invoke(main, ["config", "check"])
    assert result.exit_code == 0
    assert str(operator.config) in result.output


def test_an_invalid_config_names_the_key(operator: Operator) -> None:
    operator.config.write_text(operator.config.read_text().replace("[paths]", "[paths]\ndata_dri = 'x'"))
    result = operator.run("directory", "list")
    assert result.exit_code == 1
    assert_one_line_error(result.output, "paths.data_dri")


def test_an_uninitialised_database_is_reported(operator: Operator) -> None:
    (operator.directory / "mssecure.db").unlink()
    result = operator.run("directory", "list")
    assert result.exit_code == 1
    assert_one_line_error(result.output, "not initialised", "mssecure db upgrade")
    assert operator.run("db", "upgrade").exit_code == 0
    assert operator.run("directory", "list").exit_code == 0


# -- directory


def test_add_show_json(operator: Operator) -> None:
    result = operator.run("directory", "add", DOCTOR, "--kind", "personal", "--rpps", RPPS, "--json")
    assert result.exit_code == 0
    added = json.loads(result.output)
    shown = json.loads(operator.run("directory", "show", DOCTOR.upper(), "--json").output)
    assert shown == added
    assert {"address", "kind", "status", "local", "identifier_type", "national_id", "created_at"} <= set(shown)
    assert (shown["status"], shown["local"], shown["national_id"]) == ("active", True, "8" + RPPS)


def test_add_fills_the_profession_label_from_its_code(operator: Operator) -> None:
    add_doctor(operator)
    assert json.loads(operator.run("directory", "show", DOCTOR, "--json").output)["profession_label"] == "Médecin"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--rpps", RPPS[:-1] + str((int(RPPS[-1]) + 1) % 10)], "Luhn"),
        (["--rpps", "123"], "11 digits"),
        ([], "RPPS or ADELI"),
        (["--rpps", RPPS, "--finess", "123456789"], "FINESS"),
    ],
)
def test_add_refuses_bad_identifiers(operator: Operator, args: list[str], fragment: str) -> None:
    result = operator.run("directory", "add", DOCTOR, "--kind", "personal", *args)
    assert result.exit_code == 1
    assert_one_line_error(result.output, fragment)
    assert operator.run("directory", "show", DOCTOR).exit_code == 1


def test_add_refuses_bad_addresses_and_duplicates(operator: Operator) -> None:
    result = operator.run("directory", "add", "pas-une-adresse", "--kind", "applicative")
    assert_one_line_error(result.output, "bad address")
    add_doctor(operator)
    result = operator.run("directory", "add", DOCTOR.upper(), "--kind", "personal", "--rpps", RPPS)
    assert result.exit_code == 1
    assert_one_line_error(result.output, "already in the directory")


def test_usage_errors_exit_2(operator: Operator) -> None:
    assert operator.run("directory", "add", DOCTOR, "--kind", "robot").exit_code == 2
    result = operator.run("directory", "add", DOCTOR, "--kind", "personal", "--rpps", RPPS, "--adeli", "123456789")
    assert result.exit_code == 2


def test_status_commands_and_history(operator: Operator) -> None:
    add_doctor(operator, "--reason", "new prescriber")
    assert operator.run("directory", "suspend", DOCTOR).exit_code == 2  # --reason is required
    assert operator.run("directory", "suspend", DOCTOR, "--reason", "card lost").exit_code == 0
    assert operator.run("directory", "reactivate", DOCTOR).exit_code == 0
    assert operator.run("directory", "revoke", DOCTOR, "--reason", "left").exit_code == 0
    result = operator.run("directory", "reactivate", DOCTOR)
    assert result.exit_code == 1
    assert_one_line_error(result.output, "revocation is final")
    history = json.loads(operator.run("directory", "history", DOCTOR, "--json").output)
    assert [h["action"] for h in history] == ["created", "suspended", "reactivated", "revoked"]
    assert {h["actor"] for h in history} == {"test-operator"}
    assert history[0]["reason"] == "new prescriber"
    assert set(history[0]) == {"at", "actor", "action", "source", "reason", "changes"}
    table = operator.run("directory", "history", DOCTOR).output
    assert "status: active → suspended" in table


def test_unknown_address_exit_1(operator: Operator) -> None:
    for command in (["show"], ["history"], ["suspend", "--reason", "x"], ["revoke", "--reason", "x"]):
        result = operator.run("directory", *command, "nobody@chu-nord.mssante.test")
        assert result.exit_code == 1
        assert_one_line_error(result.output, "no directory entry for nobody@chu-nord.mssante.test")


def test_list_and_search(operator: Operator) -> None:
    add_doctor(operator)
    operator.run("directory", "add", "pharmacie@ght-sud.mssante.test", "--kind", "organizational", "--finess", FINESS,
                 "--organization", "Pharmacie du Marché")  # fmt: skip
    listed = json.loads(operator.run("directory", "list", "--json").output)
    assert [e["address"] for e in listed] == [DOCTOR, "pharmacie@ght-sud.mssante.test"]
    assert [e["local"] for e in listed] == [True, False]
    remote = json.loads(operator.run("directory", "list", "--remote", "--json").output)
    assert [e["address"] for e in remote] == ["pharmacie@ght-sud.mssante.test"]
    assert json.loads(operator.run("directory", "list", "--kind", "applicative", "--json").output) == []
    table = operator.run("directory", "list").output
    assert table.splitlines()[0].split()[:3] == ["ADDRESS", "KIND", "STATUS"]
    assert "2 of 2 entries" in table
    found = json.loads(operator.run("directory", "search", "marche", "--json").output)
    assert [e["address"] for e in found] == ["pharmacie@ght-sud.mssante.test"]
    assert "LEFÈVRE" in operator.run("directory", "search", "lefevre").output
    assert operator.run("directory", "search", "zzz").exit_code == 0


def _sample(op: Operator, path: Path, lines: int = 200) -> Path:
    result = op.run("directory", "sample-extraction", str(path), "--lines", str(lines), "--with-errors")
    assert result.exit_code == 0, result.output
    return path


def test_import_json_summary_shape_and_idempotence(operator: Operator, tmp_path: Path) -> None:
    sample = _sample(operator, tmp_path / "extraction.txt")
    first = json.loads(operator.run("directory", "import", str(sample), "--json").output)
    assert set(first) == {"created", "updated", "unchanged", "duplicates", "rejected"}
    assert (first["created"], first["updated"], first["unchanged"], first["duplicates"]) == (200, 0, 0, 2)
    assert len(first["rejected"]) == 5
    assert all(set(r) == {"line", "reason"} and isinstance(r["line"], int) for r in first["rejected"])
    second = json.loads(operator.run("directory", "import", str(sample), "--json").output)
    assert (second["created"], second["unchanged"]) == (0, 200)


def test_import_text_report_lists_rejections(operator: Operator, tmp_path: Path) -> None:
    result = operator.run("directory", "import", str(_sample(operator, tmp_path / "x.txt", 20)))
    assert result.exit_code == 0
    assert "created" in result.output
    assert "rejected" in result.output
    assert "line 22: wrong column count: 20 columns, expected 31" in result.output


def test_import_dry_run_writes_nothing(operator: Operator, tmp_path: Path) -> None:
    sample = _sample(operator, tmp_path / "x.txt", 30)
    report = json.loads(operator.run("directory", "import", str(sample), "--dry-run", "--json").output)
    assert report["created"] == 30
    assert json.loads(operator.run("directory", "list", "--json").output) == []


def test_import_strict_writes_nothing_when_a_line_is_rejected(operator: Operator, tmp_path: Path) -> None:
    result = operator.run("directory", "import", str(_sample(operator, tmp_path / "x.txt", 30)), "--strict")
    assert result.exit_code == 1
    assert json.loads(operator.run("directory", "list", "--json").output) == []


@pytest.mark.parametrize(
    ("content", "fmt", "fragment"),
    [
        (b"not|the|header\n", "extraction", "not a national directory extraction"),
        (b"", "extraction", "not a national directory extraction"),
        (b"{}", "json", "expected an array"),
        (b'[{"address": ', "json", "malformed JSON"),
        (b"name,email\nx,y\n", "csv", "header must name address and kind"),
    ],
)
def test_import_refuses_unreadable_files(operator: Operator, tmp_path: Path, content: bytes, fmt: str,
                                         fragment: str) -> None:  # fmt: skip
    path = tmp_path / "bad"
    path.write_bytes(content)
    result = operator.run("directory", "import", str(path), "--format", fmt)
    assert result.exit_code == 1
    assert_one_line_error(result.output, fragment)


def test_import_of_a_missing_file_is_a_usage_error(operator: Operator, tmp_path: Path) -> None:
    result = operator.run("directory", "import", str(tmp_path / "missing.txt"))
    assert result.exit_code == 2
    assert "does not exist" in result.output


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_export_round_trips_through_import(operator: Operator, tmp_path: Path, fmt: str) -> None:
    operator.run("directory", "import", str(_sample(operator, tmp_path / "x.txt", 60)))
    add_doctor(operator, "--unlisted")
    operator.run("directory", "suspend", DOCTOR, "--reason", "x")
    out = tmp_path / f"export.{fmt}"
    assert operator.run("directory", "export", "--format", fmt, "--out", str(out)).exit_code == 0
    other = Operator(tmp_path / "other")
    imported = json.loads(other.run("directory", "import", str(out), "--json").output)
    assert (imported["created"], imported["rejected"]) == (61, [])
    ours = json.loads(operator.run("directory", "list", "--limit", "0", "--json").output)
    theirs = json.loads(other.run("directory", "list", "--limit", "0", "--json").output)
    volatile = {"created_at", "updated_at"}
    assert [{k: v for k, v in e.items() if k not in volatile} for e in theirs] == [
        {k: v for k, v in e.items() if k not in volatile} for e in ours
    ]
    assert json.loads(other.run("directory", "show", DOCTOR, "--json").output)["status"] == "suspended"


def test_export_can_leave_out_unlisted_entries(operator: Operator) -> None:
    add_doctor(operator, "--unlisted")
    exported = json.loads(operator.run("directory", "export", "--exclude-unlisted").output)
    assert exported == []
    assert len(json.loads(operator.run("directory", "export").output)) == 1


def test_demo_runs_end_to_end(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if os.geteuid() == 0:  # Dovecot opens mail as nobody, who cannot enter pytest's 0700 directories
        tmp_path = Path(tempfile.mkdtemp(prefix="mssecure-demo-test-"))
        tmp_path.chmod(0o755)
        request.addfinalizer(lambda: shutil.rmtree(tmp_path, ignore_errors=True))
    result = CliRunner().invoke(main, ["demo", "--dir", str(tmp_path / "demo"), "--lines", "40"])
    assert result.exit_code == 0, result.output
    assert "Demo complete." in result.output
    if shutil.which("dovecot", path="/usr/sbin:/usr/bin:/usr/local/sbin") or os.environ.get("CI") == "true":
        assert "(mail client) IMAPS to 127.0.0.1:" in result.output  # the CI installs Dovecot: IMAP for real
    # The evidence the demo wrote verifies with nothing but the operators' public keys.
    for name, operator in (("evidence-sent.json", "chu-nord"), ("evidence-received.json", "pharma-sud")):
        key = tmp_path / "demo" / operator / "data" / "archive.pub"
        checked = CliRunner().invoke(main, ["archive", "verify-evidence", str(tmp_path / "demo" / name),
                                            "--operator-key", str(key), "--json"])  # fmt: skip
        assert checked.exit_code == 0, checked.output
    config = tmp_path / "demo" / "chu-nord" / "mssecure.toml"
    shown = CliRunner().invoke(main, ["--config", str(config), "directory", "show", DOCTOR, "--json"])
    assert json.loads(shown.output)["status"] == "active"
    history = CliRunner().invoke(main, ["--config", str(config), "directory", "history", DOCTOR, "--json"])
    assert [h["action"] for h in json.loads(history.output)] == ["created", "suspended", "reactivated", "password set"]
    # The prescription crossed from one operator's relay to the other's, and its acknowledgment came back.
    pharmacy = tmp_path / "demo" / "pharma-sud" / "data" / "mail" / "pharma-sud.mssante.test" / "pharmacie.du-marche"
    (delivered,) = list((pharmacy / "new").iterdir())
    assert b"smime=pass body.smime-identifier=" + DOCTOR.encode() in delivered.read_bytes()
    assert b"IHE_XDM.ZIP" in delivered.read_bytes()  # sent with `mssecure send --xdm`
    peer_config = tmp_path / "demo" / "pharma-sud" / "mssecure.toml"
    verified = CliRunner().invoke(main, ["--config", str(peer_config), "verify", str(delivered), "--json"])
    assert verified.exit_code == 0, verified.output
    doctor = tmp_path / "demo" / "chu-nord" / "data" / "mail" / "chu-nord.mssante.test" / "camille.lefevre"
    (mdn,) = list((doctor / "new").iterdir())
    assert b"MDN-sent-automatically; dispatched" in mdn.read_bytes()
