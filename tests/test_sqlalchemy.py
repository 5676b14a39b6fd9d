"""idgen.sqlalchemy.IdType on real SQLite and PostgreSQL: BIGINT columns, primary keys defaulted from
``idgen.next_id`` in every kind of insert but ``INSERT ... SELECT``, every string form accepted, junk a StatementError
that says why."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import idgen
from idgen.encoding import FORMS, format_id
from idgen.errors import InvalidInput
from idgen.sqlalchemy import IdType

metadata = sa.MetaData()
events = sa.Table(
    "events",
    metadata,
    sa.Column("id", IdType, primary_key=True, default=idgen.next_id),
    sa.Column("name", sa.String(40), nullable=False),
)


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(IdType, primary_key=True, default=idgen.next_id)
    item: Mapped[str] = mapped_column(sa.String(40))
    parent_id: Mapped[int | None] = mapped_column(IdType)
    base32_ref: Mapped[int | None] = mapped_column(IdType(form="base32"))


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(db_url)
    metadata.create_all(engine)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def test_insert_from_select_gives_every_row_the_same_default(engine: sa.Engine) -> None:
    """The one insert kind the docs warn about: SQLAlchemy calls a Python default once per statement in
    ``INSERT ... SELECT`` and binds that one value for every row, so keys collide (a non-key column would repeat)."""
    with engine.begin() as conn:
        conn.execute(events.insert(), [{"name": f"source-{i}"} for i in range(3)])
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(events.insert().from_select(["name"], sa.select(events.c.name)))


def test_the_column_is_a_plain_bigint_with_no_sequence(engine: sa.Engine) -> None:
    columns = {c["name"]: c for c in sa.inspect(engine).get_columns("events")}
    assert isinstance(columns["id"]["type"], sa.BigInteger)
    assert columns["id"]["default"] is None  # no SERIAL / autoincrement: the IDs come from idgen


def test_core_inserts_of_every_kind_take_their_keys_from_next_id(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        first = conn.execute(events.insert().values(name="one")).inserted_primary_key[0]
        conn.execute(events.insert().values([{"name": f"multi-{i}"} for i in range(50)]))  # one multi-VALUES
        conn.execute(events.insert(), [{"name": f"many-{i}"} for i in range(50)])  # executemany
        rows = conn.execute(sa.select(events.c.id, events.c.name).order_by(events.c.id)).all()
    ids = [row.id for row in rows]
    assert len(ids) == len(set(ids)) == 101
    assert ids[0] == first and all(isinstance(i, int) for i in ids)
    assert [row.name for row in rows][:2] == ["one", "multi-0"]  # minted in insert order: time-ordered keys
    assert idgen.decode(first)["timestamp_ms"] > 0


def test_orm_add_all_and_bulk_insert_take_their_keys_from_next_id(engine: sa.Engine) -> None:
    with Session(engine) as session, session.begin():
        orders = [Order(item=f"added-{i}") for i in range(30)]
        session.add_all(orders)
        session.flush()
        added = {o.id for o in orders}
        assert all(isinstance(i, int) for i in added)
        session.execute(sa.insert(Order), [{"item": f"bulk-{i}"} for i in range(30)])  # ORM bulk insert
        returned = session.scalars(sa.insert(Order).returning(Order.id), [{"item": "r1"}, {"item": "r2"}]).all()
    with Session(engine) as session:
        ids = session.scalars(sa.select(Order.id)).all()
    assert len(ids) == len(set(ids)) == 62
    assert set(returned) <= set(ids) and added <= set(ids)


def test_every_string_form_is_stored_as_the_same_bigint(engine: sa.Engine) -> None:
    value = idgen.next_id()
    with Session(engine) as session, session.begin():
        for n, form in enumerate(FORMS):
            session.add(Order(id=format_id(value + n, form), item=form, parent_id=format_id(value, form)))
    with Session(engine) as session:
        rows = session.execute(sa.select(Order.id, Order.item, Order.parent_id).order_by(Order.id)).all()
        found = session.scalars(sa.select(Order.item).where(Order.id == format_id(value + 1, "hex"))).one()
    assert [tuple(r) for r in rows] == [(value + n, form, value) for n, form in enumerate(FORMS)]
    assert found == "hex"


ALL_DIGIT_BASE32 = "0737185780000"  # base32 for 255826949459410944; decimal for 737185780000


def test_an_all_digit_base32_id_is_refused_unless_the_column_names_its_form(engine: sa.Engine) -> None:
    with Session(engine) as session, session.begin():
        session.add(Order(id=idgen.next_id(), item="pinned", base32_ref=ALL_DIGIT_BASE32))
    with Session(engine) as session:
        assert session.scalars(sa.select(Order.base32_ref).where(Order.item == "pinned")).one() == 255826949459410944
        where = sa.select(Order.item).where(Order.base32_ref == ALL_DIGIT_BASE32)
        assert session.scalars(where).one() == "pinned"
    with Session(engine) as session, pytest.raises(sa.exc.StatementError, match="ambiguous ID") as caught:
        session.add(Order(id=idgen.next_id(), item="guessed", parent_id=ALL_DIGIT_BASE32))
        session.flush()
    assert caught.value.orig.readings == {"decimal": 737185780000, "base32": 255826949459410944}
    with Session(engine) as session, pytest.raises(sa.exc.StatementError, match="not a base32 ID"):
        session.add(Order(id=idgen.next_id(), item="decimal", base32_ref="175928847299117063"))
        session.flush()
    with pytest.raises(InvalidInput, match="unknown ID format 'octal'"):
        IdType(form="octal")


@pytest.mark.parametrize("junk", ["junk", "0x12", -1, 2**63, 1.5, True])
def test_a_junk_id_is_a_statement_error_saying_why(engine: sa.Engine, junk: object) -> None:
    with Session(engine) as session, pytest.raises(sa.exc.StatementError) as caught:
        session.add(Order(id=junk, item="junk"))
        session.flush()
    assert isinstance(caught.value.orig, InvalidInput)
    assert "ID" in str(caught.value).splitlines()[0]
    with engine.connect() as conn, pytest.raises(sa.exc.StatementError, match="not an ID"):
        conn.execute(sa.select(events).where(events.c.id == "junk"))
