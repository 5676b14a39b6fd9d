"""``IdType``: a SQLAlchemy (2.0) column type for idgen IDs, stored as ``BIGINT``.

Binds an int or a string in the one form it reads in (decimal, hex, base32, base58; see :mod:`idgen.encoding`), so
``Order.id == "0x0271065ac1020007"`` and ``Order(id="3dZx8K1sN2Q")`` work; results are ints. ``IdType(form="base32")``
binds strings in that form only: an all-digit base32 or base58 string is a decimal number too, and ``IdType`` refuses
it rather than guess. Junk raises :class:`idgen.InvalidInput`, which SQLAlchemy wraps in a ``StatementError`` whose
first line says why.

Primary keys default to idgen IDs with SQLAlchemy's own per-row Python default, which Core's multi-VALUES and
executemany inserts and the ORM's ``add_all`` and bulk ``insert()`` all call once per row::

    Column("id", IdType, primary_key=True, default=idgen.next_id)
    id: Mapped[int] = mapped_column(IdType, primary_key=True, default=idgen.next_id)

Not ``insert().from_select(...)``: SQLAlchemy calls a Python default once per statement there, so every row would
get the same ID. A Python default also keeps the column free of ``SERIAL`` / autoincrement.
"""

from __future__ import annotations

from typing import Any

from idgen.encoding import check_form, to_id
from idgen.errors import missing_extra

try:
    from sqlalchemy import BigInteger, Dialect, TypeDecorator
except ImportError as exc:
    raise missing_extra("idgen.sqlalchemy", "SQLAlchemy", "sqlalchemy") from exc

__all__ = ["IdType"]


class IdType(TypeDecorator[int]):
    """A ``BIGINT`` column of 63-bit IDs that binds them as ints or as strings in ``form`` (``None``: the one form a
    string reads in)."""

    impl = BigInteger
    cache_ok = True

    def __init__(self, form: str | None = None) -> None:
        super().__init__()
        self.form = check_form(form)

    def process_bind_param(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else to_id(value, self.form)

    @property
    def python_type(self) -> type[int]:
        return int
