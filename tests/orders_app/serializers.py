from __future__ import annotations

from idgen.django.rest_framework import IdModelSerializer
from orders_app.models import Order


class OrderSerializer(IdModelSerializer):
    class Meta:
        model = Order
        fields = ("id", "item", "parent")
