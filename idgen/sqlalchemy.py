"""``IdType``: a SQLAlchemy (2.0) column type for idgen IDs, stored as ``BIGINT``.

Binds an int or any string form (decimal, hex, base32, base58; see :mod:`idgen.encoding`), so
``Order.id == "0x0271065ac1020007"`` and ``Order(id="3dZx8K1sN2Q")`` work; results are ints. Junk raises
:class:`idgen.InvalidInput`, which SQLAlchemy wraps in a ``StatementError`` whose first line says why.

Primary keys default to idgen IDs with SQLAlchemy's own per-row Python default, which Core's multi-VALUES and
executemany inserts and the ORM's ``add_all`` and bulk ``insert()`` all call once per row::

    Column("id", IdType, primary_key=True, default=idgen.next_id)
    id: Mapped[int] = mapped_column(IdType, primary_key=True, default=idgen.next_id)

Not ``insert().from_select(...)``: SQLAlchemy calls a Python default once per statement there, so every row would
get the same ID. A Python default also keeps the column free of ``SERIAL`` / autoincrement.
"""

from __future__ import annotations

from typing import Any

from idgen.encoding import to_id
from idgen.errors import missing_extra

try:
    from sqlalchemy import BigInteger, Dialect, TypeDecorator
except ImportError as exc:
    raise missing_extra("idgen.sqlalchemy", "SQLAlchemy", "sqlalchemy") from exc

__all__ = ["IdType"]


class IdType(TypeDecorator[int]):
    """A ``BIGINT`` column of 63-bit IDs that accepts them as ints or in any string form."""

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else to_id(value)

    @property
    def python_type(self) -> type[int]:
        return int
