from __future__ import annotations

from django.db import models

from idgen.django import IdField


class Order(models.Model):
    id = IdField(primary_key=True)
    item = models.CharField(max_length=40)
    parent = IdField(null=True, blank=True)  # an ID minted elsewhere
    ref32 = IdField(null=True, blank=True, form="base32")  # one handed out in base32: read in that form only


class Row(models.Model):
    """One insert of the concurrency test."""

    id = IdField(primary_key=True)
    process = models.CharField(max_length=40)


class Line(models.Model):
    """A row that refers to an order by its ID key."""

    id = IdField(primary_key=True)
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
