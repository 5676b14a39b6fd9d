from __future__ import annotations

from django.contrib import admin

from idgen.django.admin import IdAdminMixin
from orders_app.models import Order


@admin.register(Order)
class OrderAdmin(IdAdminMixin, admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("id", "item")
