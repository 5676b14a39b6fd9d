"""``IdSerializerField``: IDs in Django REST framework, rendered as strings (JavaScript numbers lose precision past
2**53) and parsed from an int or any string form; junk is DRF's ``ValidationError``. ``IdModelSerializer`` maps every
``IdField`` of its model to it.
"""

from __future__ import annotations

from typing import Any

from idgen.encoding import format_id, to_id
from idgen.errors import InvalidInput, missing_extra

try:
    from rest_framework import serializers
except ImportError as exc:
    raise missing_extra("idgen.django.rest_framework", "djangorestframework", "drf") from exc

from idgen.django import IdField

__all__ = ["IdModelSerializer", "IdSerializerField"]


class IdSerializerField(serializers.Field):  # type: ignore[misc]
    """An ID as a string of ``form`` (decimal by default; ``hex``, ``base32`` or ``base58``) on the way out; an int or
    any string form on the way in."""

    default_error_messages = {"invalid": "{reason}"}  # noqa: RUF012 (DRF's convention)

    def __init__(self, *, form: str = "decimal", min_value: int | None = None, max_value: int | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        # min_value and max_value come from ModelSerializer's mapping of a BigIntegerField; an ID has its own range.
        format_id(0, form)  # an unknown form fails here, at class definition
        self.form = form
        super().__init__(**kwargs)

    def to_representation(self, value: int) -> str:
        return format_id(value, self.form)

    def to_internal_value(self, data: Any) -> int:
        try:
            return to_id(data)
        except InvalidInput as exc:
            self.fail("invalid", reason=str(exc))
            raise  # unreachable: fail() raises


class IdModelSerializer(serializers.ModelSerializer):  # type: ignore[misc]
    """A ``ModelSerializer`` whose model ``IdField``s are :class:`IdSerializerField`s, and whose relations to a model
    keyed by an ``IdField`` render and parse that key as one too (DRF would send the bare int)."""

    serializer_field_mapping = {  # noqa: RUF012 (DRF's convention)
        **serializers.ModelSerializer.serializer_field_mapping,
        IdField: IdSerializerField,
    }

    def build_relational_field(self, field_name: str, relation_info: Any) -> tuple[type, dict[str, Any]]:
        field_class, kwargs = super().build_relational_field(field_name, relation_info)
        if issubclass(field_class, serializers.PrimaryKeyRelatedField) and isinstance(
            relation_info.related_model._meta.pk, IdField
        ):
            kwargs.setdefault("pk_field", IdSerializerField())
        return field_class, kwargs
