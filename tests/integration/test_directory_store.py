"""The directory on a real database, SQLite and PostgreSQL: lifecycle, history, search, import, export."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from mssecure.db import make_sessionmaker
from mssecure.directory import (
    Directory,
    EntryData,
    Format,
    ImportReport,
    Kind,
    Record,
    Rejection,
    Status,
    import_records,
    read_records,
    write_entries,
)
from mssecure.directory.formats import EXTRACTION_HEADER, read_chunks
from mssecure.directory.identifiers import luhn_check_digit
from mssecure.directory.importer import import_chunks
from mssecure.directory.synthetic import write_sample_extraction
from mssecure.errors import EntryExists, EntryNotFound, InvalidEntry, InvalidTransition
from mssecure.models import Base

LOCAL = frozenset({"chu-nord.mssante.test"})
RPPS = "1010001000" + luhn_check_digit("1010001000")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with make_sessionmaker(engine)() as session:
        yield session


@pytest.fixture
def book(session: Session) -> Directory:
    return Directory(session, local_domains=LOCAL, actor="alice", clock=Clock())


def doctor(address: str = "camille.lefevre@chu-nord.mssante.test", **fields: object) -> EntryData:
    values: dict[str, object] = {
        "address": address,
        "kind": Kind.PERSONAL,
        "identifier_type": "RPPS",
        "identifier": RPPS,
        "last_name": "LEFÈVRE",
        "first_name": "Camille",
        "profession_code": "10",
        "profession_label": "Médecin",
        "organization": "CHU Nord",
    }
    values.update(fields)
    return EntryData(**values)  # type: ignore[arg-type]


def test_migrations_produce_exactly_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_add_then_get_is_case_insensitive(book: Directory, session: Session) -> None:
    book.add(doctor("Camille.Lefevre@CHU-Nord.mssante.test"))
    session.commit()
    entry = book.get("CAMILLE.LEFEVRE@chu-nord.mssante.test")
    assert entry.address == "camille.lefevre@chu-nord.mssante.test"
    assert entry.national_id == "8" + RPPS
    assert entry.status == "active"
    assert book.is_local(entry)


def test_an_address_is_unique_whatever_its_case(book: Directory, session: Session) -> None:
    book.add(doctor())
    session.commit()
    with pytest.raises(EntryExists):
        book.add(doctor("CAMILLE.LEFEVRE@chu-nord.mssante.test"))


def test_the_database_itself_refuses_a_duplicate_address(book: Directory, session: Session) -> None:
    book.add(doctor())
    session.commit()
    from mssecure.directory.models import Entry

    now = datetime.now(UTC)
    session.add(
        Entry(address="camille.lefevre@chu-nord.mssante.test", domain="chu-nord.mssante.test", kind="personal",
              status="active", unlisted=False, search_text="", created_at=now, updated_at=now)
    )  # fmt: skip
    with pytest.raises(sa.exc.IntegrityError):
        session.commit()


def test_the_database_refuses_an_unknown_status(session: Session, engine: Engine) -> None:
    now = datetime.now(UTC)
    from mssecure.directory.models import Entry

    session.add(
        Entry(address="x@chu-nord.mssante.test", domain="chu-nord.mssante.test", kind="personal", status="deleted",
              unlisted=False, search_text="", created_at=now, updated_at=now)
    )  # fmt: skip
    with pytest.raises(sa.exc.IntegrityError):
        session.commit()


def test_invalid_entries_are_refused_before_storage(book: Directory) -> None:
    with pytest.raises(InvalidEntry, match="Luhn"):
        book.add(doctor(identifier="10100010000" if RPPS[-1] != "0" else "10100010001"))
    with pytest.raises(InvalidEntry, match="RPPS or ADELI"):
        book.add(doctor(identifier_type=None, identifier=None))


def test_lifecycle_and_history(book: Directory, session: Session) -> None:
    address = "camille.lefevre@chu-nord.mssante.test"
    book.add(doctor(), reason="new prescriber")
    book.suspend(address, reason="card lost")
    book.reactivate(address)
    book.revoke(address, reason="left the hospital")
    session.commit()
    history = book.history(address)
    assert [(c.action, c.actor, c.reason) for c in history] == [
        ("created", "alice", "new prescriber"),
        ("suspended", "alice", "card lost"),
        ("reactivated", "alice", None),
        ("revoked", "alice", "left the hospital"),
    ]
    assert history[1].changes == {"status": ["active", "suspended"]}
    assert [c.at for c in history] == sorted(c.at for c in history)
    assert all(c.at.tzinfo is not None for c in history)


@pytest.mark.parametrize("action", ["reactivate", "suspend", "revoke"])
def test_revoked_is_final(book: Directory, session: Session, action: str) -> None:
    address = "camille.lefevre@chu-nord.mssante.test"
    book.add(doctor())
    book.revoke(address, reason="gone")
    session.commit()
    with pytest.raises(InvalidTransition, match="revocation is final"):
        getattr(book, action)(address, reason="try")
    assert book.get(address).status == "revoked"


def test_a_transition_to_the_same_status_is_refused(book: Directory) -> None:
    book.add(doctor())
    with pytest.raises(InvalidTransition, match="already active"):
        book.reactivate("camille.lefevre@chu-nord.mssante.test")


def test_unknown_address(book: Directory) -> None:
    with pytest.raises(EntryNotFound):
        book.suspend("nobody@chu-nord.mssante.test", reason="x")
    assert book.find("not an address") is None


def test_update_records_what_changed(book: Directory, session: Session) -> None:
    address = "camille.lefevre@chu-nord.mssante.test"
    book.add(doctor())
    book.update(address, {"organization": "CHU Sud"}, reason="moved")
    book.update(address, {"organization": "CHU Sud"})  # no change, no history
    session.commit()
    history = book.history(address)
    assert [c.action for c in history] == ["created", "updated"]
    assert history[1].changes == {"organization": ["CHU Nord", "CHU Sud"]}
    with pytest.raises(InvalidEntry):
        book.update(address, {"status": "revoked"})


@pytest.mark.parametrize("query", ["lefevre", "LEFEVRE", "Lefèvre", "camille lefèvre", "CHU camille", RPPS, "médecin"])
def test_search_ignores_case_and_accents(book: Directory, session: Session, query: str) -> None:
    book.add(doctor())
    book.add(doctor("chloe.martin@chu-nord.mssante.test", last_name="MARTIN", first_name="Chloé",
                    identifier="1010002000" + luhn_check_digit("1010002000"), organization="Clinique",
                    profession_label="Sage-Femme"))  # fmt: skip
    session.commit()
    assert [e.address for e in book.search(query)] == ["camille.lefevre@chu-nord.mssante.test"]


def test_search_treats_like_wildcards_as_text(book: Directory, session: Session) -> None:
    book.add(doctor())
    session.commit()
    assert book.search("%") == []
    assert book.search("_") == []


def test_list_filters(book: Directory, session: Session) -> None:
    book.add(doctor())
    book.add(doctor("remote.doc@ght-sud.mssante.test", identifier="1010002000" + luhn_check_digit("1010002000")))
    book.add(EntryData(address="pharmacie@chu-nord.mssante.test", kind=Kind.ORGANIZATIONAL, organization="Pharmacie"))
    book.suspend("remote.doc@ght-sud.mssante.test", reason="x")
    session.commit()

    def addresses(**filters: object) -> list[str]:
        return [e.address for e in book.entries(**filters)]

    assert addresses(local=True) == ["camille.lefevre@chu-nord.mssante.test", "pharmacie@chu-nord.mssante.test"]
    assert addresses(local=False) == ["remote.doc@ght-sud.mssante.test"]
    assert addresses(kind=Kind.ORGANIZATIONAL) == ["pharmacie@chu-nord.mssante.test"]
    assert addresses(status=Status.SUSPENDED) == ["remote.doc@ght-sud.mssante.test"]
    assert addresses(domain="GHT-SUD.mssante.test") == ["remote.doc@ght-sud.mssante.test"]
    assert book.count(local=True) == 2
    assert len(addresses(limit=1)) == 1


# -- import


def _import(engine: Engine, fmt: Format, text: str, *, commit: bool = True, **options: object) -> ImportReport:
    """Import ``text`` as the CLI does (``read_chunks``, then ``import_chunks``)."""
    with engine.connect() as connection:
        transaction = connection.begin()
        report = import_chunks(
            connection,
            read_chunks(fmt, io.BytesIO(text.encode()).readlines()),
            actor="importer",
            source="test",
            **options,  # type: ignore[arg-type]
        )
        transaction.commit() if commit else transaction.rollback()
    return report


def _sample(lines: int = 300, *, with_errors: bool = True, seed: int = 7) -> str:
    out = io.StringIO()
    write_sample_extraction(out, lines, seed=seed, with_errors=with_errors)
    return out.getvalue()


def _line(**columns: str) -> str:
    values = ("PER|camille.lefevre@chu-nord.mssante.test|8|" + RPPS + "|8" + RPPS + "|1|203374061|||LEFÈVRE|"
              "Camille|C|Civil|10|Médecin|||1|CHU Nord||Bâtiment B||31|BIS|PL|des Écoles||59000 LILLE|59000|59|"
              "FRANCE").split("|")  # fmt: skip
    for position, value in columns.items():
        values[int(position[1:])] = value
    return "|".join(values)


def _extraction(*lines: str) -> str:
    return "\n".join(["|".join(EXTRACTION_HEADER), *lines]) + "\n"


def test_import_reports_each_line_once_and_is_idempotent(engine: Engine) -> None:
    text = _sample()
    first = _import(engine, Format.EXTRACTION, text)
    assert (first.created, first.updated, first.unchanged, first.duplicates) == (300, 0, 0, 2)
    assert [r.line for r in first.rejected] == [302, 303, 304, 305, 306]
    second = _import(engine, Format.EXTRACTION, text)
    assert second.to_json() == {**first.to_json(), "created": 0, "unchanged": 300}
    with engine.connect() as connection:
        entries = connection.execute(sa.text("SELECT count(*) FROM directory_entries")).scalar_one()
        changes = connection.execute(sa.text("SELECT count(*) FROM directory_changes")).scalar_one()
    assert (entries, changes) == (300, 300)


def test_import_rejections_name_line_and_reason(engine: Engine) -> None:
    text = _extraction(
        _line(),
        _line(c1="pas-une-adresse"),
        _line(c1=""),
        _line(c1="cle.fausse@chu-nord.mssante.test", c3="10000000000", c4="810000000000"),
        _line(c1="type.inconnu@chu-nord.mssante.test", c0="XYZ"),
        "|".join(_line(c1="court@chu-nord.mssante.test").split("|")[:20]),
        _line(c1="CAMILLE.LEFEVRE@chu-nord.mssante.test"),
    )
    report = _import(engine, Format.EXTRACTION, text)
    reasons = {r.line: r.reason for r in report.rejected}
    assert set(reasons) == {3, 4, 5, 6, 7}
    assert reasons[3].startswith("bad address")
    assert reasons[4] == "empty address"
    assert reasons[5].startswith("bad identifier key")
    assert reasons[6].startswith("unknown mailbox type")
    assert reasons[7].startswith("wrong column count")
    assert (report.created, report.duplicates) == (1, 1)


def test_reimport_with_changes_updates_and_records_the_difference(engine: Engine) -> None:
    _import(engine, Format.EXTRACTION, _extraction(_line()))
    report = _import(engine, Format.EXTRACTION, _extraction(_line(c18="Clinique des Lilas", c8="DR")))
    assert (report.created, report.updated, report.unchanged) == (0, 1, 0)
    with make_sessionmaker(engine)() as session:
        book = Directory(session, local_domains=LOCAL, actor="x")
        entry = book.get("camille.lefevre@chu-nord.mssante.test")
        assert entry.organization == "Clinique des Lilas"
        last = book.history(entry.address)[-1]
        assert last.action == "updated"
        assert last.actor == "importer"
        assert last.changes == {"civility": [None, "DR"], "organization": ["CHU Nord", "Clinique des Lilas"]}


def test_import_keeps_a_suspended_or_revoked_status(engine: Engine) -> None:
    _import(engine, Format.EXTRACTION, _extraction(_line()))
    with make_sessionmaker(engine)() as session:
        Directory(session, local_domains=LOCAL, actor="x").revoke("camille.lefevre@chu-nord.mssante.test", reason="r")
        session.commit()
    report = _import(engine, Format.EXTRACTION, _extraction(_line(c18="Ailleurs")))
    assert report.updated == 1
    with make_sessionmaker(engine)() as session:
        entry = Directory(session, local_domains=LOCAL, actor="x").get("camille.lefevre@chu-nord.mssante.test")
        assert (entry.status, entry.organization) == ("revoked", "Ailleurs")


def test_a_file_cannot_reactivate_a_revoked_entry(engine: Engine) -> None:
    _import(engine, Format.EXTRACTION, _extraction(_line()))
    with make_sessionmaker(engine)() as session:
        Directory(session, local_domains=LOCAL, actor="x").revoke("camille.lefevre@chu-nord.mssante.test", reason="r")
        session.commit()
    line = '[\n{"address": "camille.lefevre@chu-nord.mssante.test", "kind": "personal", "status": "active", ' \
        f'"identifier_type": "RPPS", "identifier": "{RPPS}"}}\n]\n'  # fmt: skip
    report = _import(engine, Format.JSON, line)
    assert [(r.line, r.reason) for r in report.rejected] == [
        (2, "camille.lefevre@chu-nord.mssante.test is revoked; revocation is final")
    ]


def test_an_import_stores_each_entry_as_read_with_its_history(engine: Engine) -> None:
    # Backslashes, and text like COPY's own null marker, must arrive as written (PostgreSQL writes new entries by
    # COPY, SQLite by executemany).
    odd = _line(c1="odd@chu-nord.mssante.test", c18="Cabinet \\N", c19="\\", c7="a\tb")
    text = _sample(1500, with_errors=False) + odd + "\n"
    clock = Clock()
    stamp = clock.now + timedelta(seconds=1)  # the first batch's time
    report = _import(engine, Format.EXTRACTION, text, clock=clock)
    read = [r.data for r in read_records(Format.EXTRACTION, io.BytesIO(text.encode()).readlines())]
    assert report.created == len(read) == 1501
    with make_sessionmaker(engine)() as session:
        book = Directory(session, local_domains=LOCAL, actor="x")
        entries = list(book.entries())
        assert sorted((e.to_data() for e in entries), key=lambda d: d.address) == sorted(
            (d for d in read if d is not None), key=lambda d: d.address
        )
        stored_odd = book.get("odd@chu-nord.mssante.test")
        assert (stored_odd.organization, stored_odd.trade_name, stored_odd.service) == ("Cabinet \\N", "\\", "a b")
        for entry in entries:
            data = entry.to_data()
            assert (entry.domain, entry.search_text) == (data.domain, data.search_text())
            assert entry.created_at == entry.updated_at
            [change] = entry.changes
            assert (change.action, change.actor, change.source, change.reason, change.changes) == (
                "created", "importer", "test", None, None
            )  # fmt: skip
            assert change.at == entry.created_at
        assert min(e.created_at for e in entries) == stamp
        assert max(e.created_at for e in entries) == stamp + timedelta(seconds=1)  # two batches
    if engine.dialect.name == "sqlite":  # timestamps in the text form the ORM writes, not the driver's own
        with engine.connect() as connection:
            raw = connection.exec_driver_sql("SELECT created_at, updated_at FROM directory_entries").all()
            raw += connection.exec_driver_sql("SELECT at, at FROM directory_changes").all()
        assert {row[0] for row in raw} | {row[1] for row in raw} == {
            "2026-11-23 09:00:01.000000",
            "2026-11-23 09:00:02.000000",
        }


def test_a_reimport_creates_updates_and_keeps_in_one_batch(engine: Engine) -> None:
    lines = _sample(40, with_errors=False).splitlines()
    _import(engine, Format.EXTRACTION, "\n".join(lines) + "\n")
    columns = lines[5].split("|")
    columns[18] = "Clinique des Lilas (nouveau nom)"
    lines[5] = "|".join(columns)
    lines.append(_line(c1="nouvelle@chu-nord.mssante.test"))
    progress: list[int] = []
    report = _import(engine, Format.EXTRACTION, "\n".join(lines) + "\n", progress=progress.append)
    assert (report.created, report.updated, report.unchanged, report.rejected) == (1, 1, 39, [])
    assert progress == [41]
    with make_sessionmaker(engine)() as session:
        book = Directory(session, local_domains=LOCAL, actor="x")
        assert [c.action for c in book.history("nouvelle@chu-nord.mssante.test")] == ["created"]
        changed = book.get(columns[1])
        assert changed.organization == "Clinique des Lilas (nouveau nom)"
        assert changed.search_text == changed.to_data().search_text()
        [created, updated] = book.history(changed.address)
        assert (created.action, updated.action) == ("created", "updated")
        assert list(updated.changes or {}) == ["organization"]


def test_an_import_calls_the_status_hook_for_each_status_it_changes(engine: Engine) -> None:
    def entry(address: str, status: str, organization: str = "CHU Nord") -> str:
        return (
            f'{{"address": "{address}@chu-nord.mssante.test", "kind": "organizational", "status": "{status}", '
            f'"organization": "{organization}"}}'
        )

    _import(engine, Format.JSON, "[\n" + ",\n".join(entry(a, "active") for a in "abcd") + "\n]\n")
    with make_sessionmaker(engine)() as session:
        Directory(session, local_domains=LOCAL, actor="x").revoke("d@chu-nord.mssante.test", reason="r")
        session.commit()
    changes: list[tuple[str, Status]] = []
    text = "[\n" + ",\n".join([entry("a", "suspended"), entry("b", "active", "Autre"), entry("c", "revoked"),
                                entry("d", "active"), "42"]) + "\n]\n"  # fmt: skip
    report = _import(engine, Format.JSON, text, on_status_change=lambda a, s: changes.append((a, s)))
    assert changes == [("a@chu-nord.mssante.test", Status.SUSPENDED), ("c@chu-nord.mssante.test", Status.REVOKED)]
    assert (report.updated, report.unchanged) == (3, 0)
    assert [(r.line, r.reason) for r in report.rejected] == [
        (5, "d@chu-nord.mssante.test is revoked; revocation is final"),
        (6, "expected an object"),
    ]
    with make_sessionmaker(engine)() as session:
        book = Directory(session, local_domains=LOCAL, actor="x")
        last = {a: book.history(f"{a}@chu-nord.mssante.test")[-1] for a in "abc"}
        assert {a: (c.action, c.changes) for a, c in last.items()} == {
            "a": ("suspended", {"status": ["active", "suspended"]}),
            "b": ("updated", {"organization": ["CHU Nord", "Autre"]}),
            "c": ("revoked", {"status": ["active", "revoked"]}),
        }


def test_import_records_takes_records_made_by_hand(engine: Engine) -> None:
    records = [Record(2, doctor()), Record(3, reason="no"), Record(4, doctor(organization="x"), sets_status=True)]
    with engine.connect() as connection, connection.begin():
        report = import_records(connection, records, actor="importer", source="test")
    assert (report.created, report.duplicates, report.rejected) == (1, 1, [Rejection(3, "no")])
    with make_sessionmaker(engine)() as session:
        assert Directory(session, local_domains=LOCAL, actor="x").get(doctor().address).to_data() == doctor()


def test_a_rolled_back_import_writes_nothing(engine: Engine) -> None:
    report = _import(engine, Format.EXTRACTION, _sample(50, with_errors=False), commit=False)
    assert report.created == 50
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM directory_entries")).scalar_one() == 0


@pytest.mark.parametrize("fmt", [Format.JSON, Format.CSV])
def test_export_round_trips_through_import(engine: Engine, tmp_path: object, fmt: Format) -> None:
    _import(engine, Format.EXTRACTION, _sample(120))
    with make_sessionmaker(engine)() as session:
        book = Directory(session, local_domains=LOCAL, actor="x")
        book.suspend(next(iter(book.entries(limit=1))).address, reason="r")
        book.add(EntryData(address="secret@chu-nord.mssante.test", kind=Kind.APPLICATIVE, unlisted=True))
        session.commit()
        before = [e.to_data() for e in book.entries()]
    out = io.StringIO()
    assert write_entries(fmt, ((e, True) for e in before), out) == len(before)
    # into the same database: nothing changes
    again = _import(engine, fmt, out.getvalue())
    assert (again.created, again.updated, again.unchanged, again.rejected) == (0, 0, len(before), [])


def test_export_imports_into_an_empty_database_identically(engine: Engine, tmp_path: object) -> None:
    from mssecure.db import make_engine, upgrade_schema

    _import(engine, Format.EXTRACTION, _sample(80))
    with make_sessionmaker(engine)() as session:
        before = [e.to_data() for e in Directory(session, local_domains=LOCAL, actor="x").entries()]
    out = io.StringIO()
    write_entries(Format.JSON, ((e, False) for e in before), out)
    other = make_engine(f"sqlite:///{tmp_path}/other.db")
    upgrade_schema(other)
    report = _import(other, Format.JSON, out.getvalue())
    assert report.created == len(before)
    with make_sessionmaker(other)() as session:
        after = [e.to_data() for e in Directory(session, local_domains=LOCAL, actor="x").entries()]
    other.dispose()
    assert after == before


def test_schema_revision_constant_is_the_newest_migration() -> None:
    from alembic.script import ScriptDirectory

    from mssecure.db import SCHEMA_REVISION, _alembic_config, make_engine

    scripts = ScriptDirectory.from_config(_alembic_config(make_engine("sqlite://")))
    assert scripts.get_current_head() == SCHEMA_REVISION


def test_parallel_parsing_gives_the_same_chunks_in_file_order() -> None:
    raw = io.BytesIO(_sample(5000).encode()).readlines()
    sequential = list(read_chunks(Format.EXTRACTION, raw))
    parallel = list(read_chunks(Format.EXTRACTION, raw, workers=2))
    assert len(parallel) == 3
    assert parallel == sequential


def test_an_import_parsed_in_parallel_stores_the_same_directory(engine: Engine, tmp_path: object) -> None:
    from mssecure.db import make_engine, upgrade_schema

    text = _sample(3000)
    other = make_engine(f"sqlite:///{tmp_path}/parallel.db")
    upgrade_schema(other)
    with other.connect() as connection, connection.begin():
        raw = io.BytesIO(text.encode()).readlines()
        chunks = read_chunks(Format.EXTRACTION, raw, workers=2)
        parallel = import_chunks(connection, chunks, actor="a", source="s")
    assert parallel.to_json() == _import(engine, Format.EXTRACTION, text).to_json()
    query = sa.text("SELECT address, search_text FROM directory_entries ORDER BY address")
    with engine.connect() as a, other.connect() as b:
        assert a.execute(query).all() == b.execute(query).all()
    other.dispose()
