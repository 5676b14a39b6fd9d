"""``IdField``: a Django model field for idgen IDs, and ``IdFormField``, its form field.

``IdField`` is a ``BigIntegerField``. ``IdField(primary_key=True)`` defaults new rows to ``idgen.next_id()`` and is
not editable (forms leave it out; :class:`idgen.django.admin.IdAdminMixin` shows it read-only). The default is
applied when a model is instantiated, and again by ``save()`` and ``bulk_create()`` for a primary key still
``None``, so every insert path gets an ID. Any field accepts an int or any string form (decimal, hex, base32,
base58) in ``full_clean()``, queries and ``save()``; junk is a ``ValidationError``, as for Django's ``UUIDField``.
Migrations record ``idgen.django.IdField(primary_key=True, serialize=False)``: the implied default is left out.
"""

from __future__ import annotations

from typing import Any

from idgen.encoding import to_id
from idgen.errors import InvalidInput, missing_extra

try:
    from django import forms
    from django.core.exceptions import ValidationError
    from django.db import models
except ImportError as exc:
    raise missing_extra("idgen.django", "Django", "django") from exc

__all__ = ["IdField", "IdFormField", "new_id"]


def new_id() -> int:
    """``idgen.next_id()``, looked up at call time: the default of ``IdField(primary_key=True)``."""
    import idgen

    return idgen.next_id()


def _parse(value: Any, message: str) -> int | None:
    """``value`` as an ID (None stays None); junk is a ``ValidationError`` with code ``invalid``."""
    if value is None:
        return None
    try:
        return to_id(value)
    except InvalidInput as exc:
        raise ValidationError(message, code="invalid", params={"value": value, "reason": str(exc)}) from None


class IdFormField(forms.CharField):
    """A text input for an ID in any string form; cleans to an ``int`` (``None`` when empty), shows decimal."""

    default_error_messages = {"invalid": "%(reason)s"}  # noqa: RUF012 (Django's convention)

    def to_python(self, value: Any) -> int | None:  # type: ignore[override]
        text = super().to_python(value)
        return None if text in self.empty_values else _parse(text, self.error_messages["invalid"])

    def prepare_value(self, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class IdField(models.BigIntegerField):
    """A ``BIGINT`` column of 63-bit idgen IDs; see the module docstring."""

    description = "A 63-bit idgen ID"
    default_error_messages = {"invalid": "%(reason)s"}  # noqa: RUF012 (Django's convention)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("primary_key"):
            kwargs.setdefault("default", new_id)
            kwargs.setdefault("editable", False)
        super().__init__(*args, **kwargs)

    def deconstruct(self) -> tuple[str, str, list[Any], dict[str, Any]]:
        name, _, args, kwargs = super().deconstruct()
        if self.primary_key:  # state only what differs from what __init__ implies for a primary key
            if kwargs.get("default") is new_id:
                del kwargs["default"]
            if kwargs.pop("editable", True):
                kwargs["editable"] = True
        return name, "idgen.django.IdField", args, kwargs

    def to_python(self, value: Any) -> int | None:
        return _parse(value, self.error_messages["invalid"])

    def get_prep_value(self, value: Any) -> int | None:
        return self.to_python(value)

    def formfield(self, **kwargs: Any) -> Any:
        # Field.formfield, past IntegerField's, which would add a number input and min/max bounds of its own.
        return models.Field.formfield(self, **{"form_class": IdFormField, **kwargs})
