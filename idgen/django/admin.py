"""``IdAdminMixin``: a ``ModelAdmin`` mixin that shows, read-only, every ``IdField``'s ID and the time it was minted."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.contrib import admin
from django.contrib.admin.widgets import AdminTextInputWidget
from django.db import models
from django.http import HttpRequest

from idgen.config import from_env
from idgen.default import made_default
from idgen.django import IdField
from idgen.errors import InvalidInput
from idgen.generator import Generator
from idgen.layout import DEFAULT_LAYOUT, Layout, get_layout

__all__ = ["IdAdminMixin"]


class IdAdminMixin:
    """Put it before ``admin.ModelAdmin``: ``class OrderAdmin(IdAdminMixin, admin.ModelAdmin)``.

    Gives ``IdField`` form fields a text input (the admin's default for a ``BigIntegerField`` is a number input, which
    would refuse hex, base32 and base58). Adds to ``readonly_fields`` a primary-key ``IdField`` (not editable, so not
    shown otherwise) and, for every ``IdField``, "<name> minted": its time, decoded with ``idgen_layout`` (None: the
    layout ``idgen.next_id()`` uses). A value that is not an ID of that layout shows as "-". The add page shows none of
    them: there is no saved row yet.
    """

    idgen_layout: Layout | str | None = None
    model: type[models.Model]
    formfield_overrides: dict[type[models.Field[Any, Any]], dict[str, Any]]

    def __init__(self, model: type[models.Model], admin_site: admin.AdminSite) -> None:
        super().__init__(model, admin_site)  # type: ignore[call-arg]
        self.formfield_overrides.setdefault(IdField, {}).setdefault("widget", AdminTextInputWidget)
        id_fields = [f for f in model._meta.fields if isinstance(f, IdField)]
        hidden_keys = [f.name for f in id_fields if f.primary_key and not f.editable]
        self._idgen_readonly = (*hidden_keys, *(self._minted(f) for f in id_fields))

    def get_readonly_fields(self, request: HttpRequest, obj: models.Model | None = None) -> Sequence[Any]:
        """On the add page (``obj`` None) none of them: the unsaved row's key, minted as the admin instantiated it, is
        not the key the saved row gets (the POST makes a new instance), so neither it nor its time is shown."""
        inherited = super().get_readonly_fields(request, obj)  # type: ignore[misc]
        return inherited if obj is None else (*inherited, *self._idgen_readonly)

    def _minted(self, field: IdField) -> Callable[[models.Model], str]:
        @admin.display(description=f"{field.verbose_name} minted")
        def minted(obj: models.Model) -> str:
            value = getattr(obj, field.attname)
            try:
                return str(self._layout().decode(value)["time"])
            except InvalidInput:
                return "-"

        minted.__name__ = f"{field.name}_minted"  # the admin's CSS class: field-<name>
        shown: Callable[[models.Model], str] = minted  # admin.display returns it as it was
        return shown

    def _layout(self) -> Layout:
        return get_layout(self.idgen_layout) if self.idgen_layout is not None else default_layout()


def default_layout() -> Layout:
    """The layout ``idgen.next_id()`` mints in: its generator's, once the process has one (so a ZooKeeper namespace's
    own layout too). Before that (showing a time never leases a worker ID), and for a client of servers (which does
    not know their layout), ``IDGEN_LAYOUT``'s, else the default. Cheap: a read of the default, per row."""
    source = made_default()
    if isinstance(source, Generator):
        return source.layout
    return from_env("layout") or DEFAULT_LAYOUT
