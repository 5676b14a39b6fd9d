"""``IdSerializerField``: IDs in Django REST framework, rendered as strings (JavaScript numbers lose precision past
2**53) and parsed from an int or a string: in the field's ``form`` if it has one, else in the one form the string
reads in (an all-digit base32 or base58 string is a decimal number too, and is refused rather than guessed). Junk is
DRF's ``ValidationError``. ``IdModelSerializer`` maps every ``IdField`` of its model to it, with the model field's
``form``.
"""

from __future__ import annotations

from typing import Any

from idgen.encoding import check_form, format_id, to_id
from idgen.errors import InvalidInput, missing_extra

try:
    from rest_framework import serializers
except ImportError as exc:
    raise missing_extra("idgen.django.rest_framework", "djangorestframework", "drf") from exc

from idgen.django import IdField

__all__ = ["IdModelSerializer", "IdSerializerField"]


class IdSerializerField(serializers.Field):
    """An ID as a string of ``form`` on the way out (``None``: decimal) and an int or a string in ``form`` on the way in
    (``None``: in the one form it reads in), so what it renders always reads back."""

    default_error_messages = {"invalid": "{reason}"}  # noqa: RUF012 (DRF's convention)

    def __init__(self, *, form: str | None = None, min_value: int | None = None, max_value: int | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        # min_value and max_value come from ModelSerializer's mapping of a BigIntegerField; an ID has its own range.
        self.form = check_form(form)  # an unknown form fails here, at class definition
        super().__init__(**kwargs)

    def to_representation(self, value: int) -> str:
        return format_id(value, self.form or "decimal")

    def to_internal_value(self, data: Any) -> int:
        try:
            return to_id(data, self.form)
        except InvalidInput as exc:
            self.fail("invalid", reason=str(exc))
            raise  # unreachable: fail() raises


class IdModelSerializer(serializers.ModelSerializer):
    """A ``ModelSerializer`` whose model ``IdField``s are :class:`IdSerializerField`s, and whose relations to a model
    keyed by an ``IdField`` render and parse that key as one too (DRF would send the bare int)."""

    serializer_field_mapping = {  # noqa: RUF012 (DRF's convention)
        **serializers.ModelSerializer.serializer_field_mapping,
        IdField: IdSerializerField,
    }

    def build_standard_field(self, field_name: str, model_field: Any) -> tuple[type, dict[str, Any]]:
        field_class, kwargs = super().build_standard_field(field_name, model_field)
        if isinstance(model_field, IdField) and issubclass(field_class, IdSerializerField):
            kwargs["form"] = model_field.form
        return field_class, kwargs

    def build_relational_field(self, field_name: str, relation_info: Any) -> tuple[type, dict[str, Any]]:
        field_class, kwargs = super().build_relational_field(field_name, relation_info)
        key = relation_info.related_model._meta.pk
        if issubclass(field_class, serializers.PrimaryKeyRelatedField) and isinstance(key, IdField):
            kwargs.setdefault("pk_field", IdSerializerField(form=key.form))
        return field_class, kwargs
