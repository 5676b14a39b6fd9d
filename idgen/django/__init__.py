"""``IdField``: a Django model field for idgen IDs; ``IdAutoField``, the same for ``DEFAULT_AUTO_FIELD``; and
``IdFormField``, their form field.

``IdField`` is a ``BigIntegerField``. ``IdField(primary_key=True)`` defaults new rows to ``idgen.next_id()`` and is
not editable (forms leave it out; :class:`idgen.django.admin.IdAdminMixin` shows it read-only). The default is
applied when a model is instantiated, and again by ``save()`` and ``bulk_create()`` for a primary key still
``None``, so every insert path gets an ID. Any field accepts an int or a string in the one form it reads in (decimal,
hex, base32, base58) in ``full_clean()``, queries and ``save()``; ``IdField(form="base32")`` reads strings in that
form only (an all-digit base32 or base58 string is a decimal number too: without a form it is refused, never
guessed). Junk is a ``ValidationError``, as for Django's ``UUIDField``. Migrations record
``idgen.django.IdField(primary_key=True, serialize=False)``: the implied default is left out.

``IdAutoField`` is an ``IdField`` primary key that Django accepts as ``DEFAULT_AUTO_FIELD`` (which must name an
``AutoField`` subclass): a ``BigAutoField`` whose column is a plain ``bigint`` (no sequence, no identity, no
autoincrement) and whose keys are minted on instantiation like ``IdField``'s.
"""

from __future__ import annotations

from typing import Any

from idgen.encoding import check_form, format_id, to_id
from idgen.errors import InvalidInput, missing_extra

try:
    from django import forms
    from django.core.exceptions import ValidationError
    from django.db import models
except ImportError as exc:
    raise missing_extra("idgen.django", "Django", "django") from exc

__all__ = ["IdAutoField", "IdField", "IdFormField", "new_id"]


def new_id() -> int:
    """``idgen.next_id()``, looked up at call time: the default of ``IdField(primary_key=True)``."""
    import idgen

    return idgen.next_id()


def _parse(value: Any, form: str | None, message: str) -> int | None:
    """``value`` as an ID read in ``form`` (None stays None); junk is a ``ValidationError`` with code ``invalid``."""
    if value is None:
        return None
    try:
        return to_id(value, form)
    except InvalidInput as exc:
        raise ValidationError(message, code="invalid", params={"value": value, "reason": str(exc)}) from None


class IdFormField(forms.CharField):
    """A text input for an ID written in ``form`` (``None``: the one form it reads in); cleans to an ``int``
    (``None`` when empty), shows ``form`` (``None``: decimal)."""

    default_error_messages = {"invalid": "%(reason)s"}  # noqa: RUF012 (Django's convention)

    def __init__(self, *, form: str | None = None, **kwargs: Any) -> None:
        self.form = check_form(form)
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> int | None:
        text = super().to_python(value)
        return None if text in self.empty_values else _parse(text, self.form, self.error_messages["invalid"])

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return format_id(value, self.form or "decimal")
        return value


class IdField(models.BigIntegerField):
    """A ``BIGINT`` column of 63-bit idgen IDs; see the module docstring."""

    description = "A 63-bit idgen ID"
    default_error_messages = {"invalid": "%(reason)s"}  # noqa: RUF012 (Django's convention)

    def __init__(self, *args: Any, form: str | None = None, **kwargs: Any) -> None:
        self.form = check_form(form)
        if kwargs.get("primary_key"):
            kwargs.setdefault("default", new_id)
            kwargs.setdefault("editable", False)
        super().__init__(*args, **kwargs)

    def deconstruct(self) -> tuple[str, str, list[Any], dict[str, Any]]:
        name, path, args, kwargs = super().deconstruct()
        if self.primary_key:  # state only what differs from what __init__ implies for a primary key
            if kwargs.get("default") is new_id:
                del kwargs["default"]
            if kwargs.pop("editable", True):
                kwargs["editable"] = True
        if self.form is not None:
            kwargs["form"] = self.form
        return name, path, args, kwargs

    def to_python(self, value: Any) -> int | None:
        return _parse(value, self.form, self.error_messages["invalid"])

    def get_prep_value(self, value: Any) -> int | None:
        return self.to_python(value)

    def formfield(self, **kwargs: Any) -> Any:
        # Field.formfield, past IntegerField's, which would add a number input and min/max bounds of its own.
        return models.Field.formfield(self, **{"form_class": IdFormField, "form": self.form, **kwargs})


class IdAutoField(IdField, models.BigAutoField):
    """``DEFAULT_AUTO_FIELD = "idgen.django.IdAutoField"``: every implicit primary key is an idgen ID, minted on
    instantiation (see the module docstring). The column is a ``bigint`` without a sequence: the database never
    numbers rows itself, so a row inserted without a key is refused (``NOT NULL``), never given a small number."""

    description = "A 63-bit idgen ID, the automatic primary key"

    def get_internal_type(self) -> str:
        return "BigIntegerField"  # the column type; "BigAutoField" would add a sequence, identity or autoincrement

    def formfield(self, **kwargs: Any) -> Any:
        return None  # an automatic key is never edited, as for every AutoField
