"""idgen.django on real SQLite and PostgreSQL: IdField fills primary keys on every insert path, bulk_create included;
takes every string form, an ambiguous one only in the field's form; junk is a ValidationError (full_clean, forms, the
admin: never a 500); the admin shows the minted time; DRF renders IDs as strings and reads back what it renders;
IdAutoField is a DEFAULT_AUTO_FIELD that a real project migrates and fills."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connections
from django.forms import modelform_factory
from django.test import Client
from djangosite import database

import idgen
from idgen.encoding import FORMS, format_id, parse_id

pytestmark = pytest.mark.usefixtures("django_site", "default_ids")
ALIASES = ("default", "postgresql")


@pytest.fixture(params=ALIASES)
def alias(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def orders() -> Any:
    from orders_app.models import Order

    return Order


def test_a_primary_key_idfield_is_a_bigint_filled_on_save_and_bulk_create(alias: str) -> None:
    Order = orders()
    with connections[alias].cursor() as cursor:
        columns = connections[alias].introspection.get_table_description(cursor, Order._meta.db_table)
    assert {c.name: c.type_code for c in columns}["id"] in (20, "bigint")  # PostgreSQL's int8 OID; SQLite's type
    one = Order(item="one")
    assert isinstance(one.pk, int)  # minted on instantiation: usable before the insert
    one.save(using=alias)
    none_pk = Order(id=None, item="none")
    none_pk.save(using=alias)  # a key set back to None is minted at save
    created = Order.objects.using(alias).bulk_create(
        [Order(item=f"bulk-{i}") for i in range(40)] + [Order(id=None, item="bulk-none")]
    )
    keys = [one.pk, none_pk.pk, *(o.pk for o in created)]
    assert all(isinstance(k, int) for k in keys)
    stored = set(Order.objects.using(alias).filter(pk__in=keys).values_list("pk", flat=True))
    assert stored == set(keys) and len(keys) == 43
    assert idgen.decode(one.pk)["timestamp_ms"] > 0


def test_every_string_form_is_accepted_on_assignment_and_in_queries(alias: str) -> None:
    Order = orders()
    base = idgen.next_id()
    for n, form in enumerate(FORMS):
        order = Order(id=format_id(base + n, form), item=form, parent=format_id(base, form))
        order.full_clean()
        assert (order.pk, order.parent) == (base + n, base)  # full_clean converts
        Order(id=format_id(base + n + 10, form), item=form, parent=format_id(base, form)).save(using=alias)
    stored = Order.objects.using(alias).filter(parent=format_id(base, "base58")).order_by("pk")
    assert list(stored.values_list("pk", "parent")) == [(base + n + 10, base) for n in range(len(FORMS))]
    assert Order.objects.using(alias).get(pk=format_id(base + 11, "hex")).item == "hex"


@pytest.mark.parametrize("junk", ["junk", "0x12", "-1", -1, 2**63, 1.5])
def test_junk_is_a_validation_error_in_full_clean_forms_and_save(alias: str, junk: object) -> None:
    Order = orders()
    with pytest.raises(ValidationError) as caught:
        Order(item="x", parent=junk).full_clean()
    assert list(caught.value.message_dict) == ["parent"] and "ID" in caught.value.message_dict["parent"][0]
    form = modelform_factory(Order, fields=("item", "parent"))({"item": "x", "parent": str(junk)})
    assert not form.is_valid() and list(form.errors) == ["parent"]
    with pytest.raises(ValidationError):  # save() without validation: as Django's UUIDField does
        Order(item="x", parent=junk).save(using=alias)


def test_a_model_form_takes_any_string_form_and_shows_decimal() -> None:
    Order = orders()
    form_class = modelform_factory(Order, fields=("item", "parent"))
    assert "id" not in form_class.base_fields  # the primary key is minted, not typed in
    value = idgen.next_id()
    form = form_class({"item": "x", "parent": f" {format_id(value, 'base32')} "})
    assert form.is_valid(), form.errors
    assert form.cleaned_data["parent"] == value
    assert form_class({"item": "x", "parent": ""}).is_valid()  # null=True, blank=True
    shown = form_class(instance=Order(item="x", parent=value))
    assert f'value="{value}"' in str(shown["parent"])


@pytest.fixture
def admin_client() -> Client:
    from django.contrib.auth.models import User

    User.objects.filter(username="admin").delete()
    User.objects.create_superuser("admin", "admin@example.invalid", "pw")
    client = Client()
    client.force_login(User.objects.get(username="admin"))
    return client


def test_the_admin_shows_the_minted_time_and_refuses_junk_with_a_form_error(admin_client: Client) -> None:
    Order = orders()
    order = Order.objects.create(item="shown", parent=idgen.next_id())
    page = admin_client.get(f"/admin/orders_app/order/{order.pk}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert str(order.pk) in html and "Id minted" in html and "Parent minted" in html
    assert 'type="number"' not in html  # a text input: hex, base32 and base58 can be typed in
    assert idgen.decode(order.pk)["time"] in html and idgen.decode(order.parent)["time"] in html
    assert admin_client.get("/admin/orders_app/order/").status_code == 200
    refused = admin_client.post("/admin/orders_app/order/add/", {"item": "bad", "parent": "not-an-id"})
    assert refused.status_code == 200  # the form again, with the error: not a 500
    assert "is not an ID" in refused.content.decode()
    added = admin_client.post("/admin/orders_app/order/add/", {"item": "good", "parent": format_id(order.pk, "hex")})
    assert added.status_code == 302
    assert Order.objects.get(item="good").parent == order.pk


def test_the_admin_add_page_shows_no_id_the_saved_row_will_not_have(admin_client: Client) -> None:
    """An unsaved Order already holds a key (minted on instantiation) that the POST does not carry back: showing it,
    or its time, on the add page would show an ID the saved row never gets."""
    minted_before = idgen.next_id()
    html = admin_client.get("/admin/orders_app/order/add/").content.decode()
    shown = [int(n) for n in re.findall(r"\b\d{17,19}\b", html)]
    assert not [n for n in shown if n > minted_before], "the add page shows an ID minted for it"
    assert "minted" not in html
    assert admin_client.post("/admin/orders_app/order/add/", {"item": "added"}).status_code == 302
    saved = orders().objects.get(item="added")
    assert saved.pk > minted_before
    change = admin_client.get(f"/admin/orders_app/order/{saved.pk}/change/").content.decode()
    assert str(saved.pk) in change and "Id minted" in change  # the change page shows them


def test_drf_renders_ids_as_strings_and_parses_any_form(alias: str) -> None:
    from orders_app.serializers import OrderSerializer
    from rest_framework import serializers

    from idgen.django.rest_framework import IdSerializerField

    Order = orders()
    order = Order(item="drf", parent=idgen.next_id())
    assert OrderSerializer(order).data == {"id": str(order.pk), "item": "drf", "parent": str(order.parent)}
    incoming = OrderSerializer(data={"id": "1", "item": "new", "parent": format_id(order.pk, "base58")})
    assert incoming.is_valid(), incoming.errors
    saved = incoming.save()
    assert saved.parent == order.pk and saved.pk != 1  # the key is read-only: minted, never taken from a client
    junk = OrderSerializer(data={"item": "bad", "parent": "not-an-id"})
    assert not junk.is_valid() and "is not an ID" in str(junk.errors["parent"][0])
    with pytest.raises(serializers.ValidationError):
        IdSerializerField().run_validation(True)
    assert IdSerializerField(form="base32").to_representation(32) == format_id(32, "base32")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"primary_key": True},
        {"primary_key": True, "editable": True},
        {"null": True},
        {"primary_key": True, "default": 1},
    ],
    ids=repr,
)
def test_deconstruct_rebuilds_the_same_field(kwargs: dict[str, Any]) -> None:
    from idgen.django import IdField

    field = IdField(**kwargs)
    _, path, args, rebuilt_kwargs = field.deconstruct()
    assert path == "idgen.django.IdField"
    rebuilt = IdField(*args, **rebuilt_kwargs)
    assert (rebuilt.primary_key, rebuilt.editable, rebuilt.default, rebuilt.null) == (
        field.primary_key,
        field.editable,
        field.default,
        field.null,
    )
    if kwargs == {"primary_key": True}:
        assert rebuilt_kwargs == {"primary_key": True}  # no default, no editable: implied


def test_the_admin_decodes_in_the_layout_of_the_default_or_its_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from django.contrib import admin
    from orders_app.admin import OrderAdmin

    from idgen.django.admin import default_layout

    monkeypatch.setenv("IDGEN_STATE_DIR", str(tmp_path / "sonyflake"))  # a state directory per layout
    monkeypatch.setenv("IDGEN_LAYOUT", "sonyflake")
    assert default_layout() == idgen.PRESETS["sonyflake"]  # before the default exists: IDGEN_LAYOUT's...
    assert idgen.default.made_default() is None  # ... and showing a time leases nothing
    idgen.next_id()
    monkeypatch.delenv("IDGEN_LAYOUT")
    assert default_layout() == idgen.PRESETS["sonyflake"]  # then its generator's (as a ZooKeeper namespace's layout)
    idgen.reset_default()
    assert default_layout() == idgen.DEFAULT_LAYOUT
    monkeypatch.setenv("IDGEN_STATE_DIR", str(tmp_path / "idgen"))
    Order = orders()
    value = idgen.next_id()
    own = type("DiscordOrderAdmin", (OrderAdmin,), {"idgen_layout": "discord"})(Order, admin.site)
    order = Order(parent=value)
    [minted] = [f for f in own.get_readonly_fields(None, order) if getattr(f, "__name__", "") == "parent_minted"]
    assert minted(order) == idgen.decode(value, "discord")["time"]


def test_drf_renders_relations_to_id_keys_as_strings_too(alias: str) -> None:
    from orders_app.models import Line
    from rest_framework import serializers

    from idgen.django.rest_framework import IdModelSerializer

    class LineSerializer(IdModelSerializer):
        class Meta:
            model = Line
            fields = ("id", "order")

    class OrderWithLines(IdModelSerializer):
        class Meta:
            model = orders()
            fields = ("id", "lines")

    order = orders().objects.using(alias).create(item="lined")
    line = Line.objects.using(alias).create(order=order)
    assert LineSerializer(line).data == {"id": str(line.pk), "order": str(order.pk)}
    assert OrderWithLines(order).data == {"id": str(order.pk), "lines": [str(line.pk)]}
    parsed = LineSerializer(data={"order": format_id(order.pk, "base32")})
    parsed.fields["order"].queryset = Line.order.field.related_model.objects.using(alias)
    assert parsed.is_valid(), parsed.errors
    assert parsed.validated_data["order"] == order
    junk = LineSerializer(data={"order": "junk"})
    assert not junk.is_valid() and isinstance(junk.errors["order"][0], serializers.ErrorDetail)


ALL_DIGIT_BASE32 = "0737185780000"  # base32 for BASE32_VALUE; decimal for 737185780000, another ID
BASE32_VALUE = 255826949459410944


def test_an_all_digit_base32_id_is_refused_unless_the_field_names_its_form(alias: str) -> None:
    Order = orders()
    with pytest.raises(ValidationError) as caught:
        Order(item="guessed", parent=ALL_DIGIT_BASE32).full_clean()
    assert "ambiguous ID" in caught.value.message_dict["parent"][0]
    assert "decimal 737185780000 and base32 255826949459410944" in caught.value.message_dict["parent"][0]
    order = Order(item="pinned", ref32=ALL_DIGIT_BASE32)
    order.full_clean()
    assert order.ref32 == BASE32_VALUE
    order.save(using=alias)
    assert Order.objects.using(alias).get(ref32=ALL_DIGIT_BASE32).pk == order.pk
    form_class = modelform_factory(Order, fields=("item", "parent", "ref32"))
    form = form_class({"item": "x", "ref32": ALL_DIGIT_BASE32})
    assert form.is_valid(), form.errors
    assert form.cleaned_data["ref32"] == BASE32_VALUE
    assert f'value="{ALL_DIGIT_BASE32}"' in str(form_class(instance=order)["ref32"])  # shown in its own form
    refused = form_class({"item": "x", "parent": ALL_DIGIT_BASE32})
    assert not refused.is_valid() and "ambiguous ID" in str(refused.errors["parent"])
    _, _, _, kwargs = Order._meta.get_field("ref32").deconstruct()
    assert kwargs == {"null": True, "blank": True, "form": "base32"}


def test_drf_reads_back_what_it_renders_in_every_form(alias: str) -> None:
    from rest_framework import serializers

    from idgen.django.rest_framework import IdModelSerializer, IdSerializerField

    for form in FORMS:
        field = IdSerializerField(form=form)
        assert field.to_internal_value(field.to_representation(BASE32_VALUE)) == BASE32_VALUE
    assert IdSerializerField(form="base32").to_representation(BASE32_VALUE) == ALL_DIGIT_BASE32
    with pytest.raises(serializers.ValidationError, match="ambiguous ID"):
        IdSerializerField().run_validation(ALL_DIGIT_BASE32)

    class PinnedSerializer(IdModelSerializer):
        class Meta:
            model = orders()
            fields = ("id", "item", "ref32")

    order = orders()(item="pinned", ref32=BASE32_VALUE)
    assert PinnedSerializer(order).data["ref32"] == ALL_DIGIT_BASE32  # the model field's form
    incoming = PinnedSerializer(data={"item": "back", "ref32": ALL_DIGIT_BASE32})
    assert incoming.is_valid(), incoming.errors
    assert incoming.validated_data["ref32"] == BASE32_VALUE


AUTO_SETTINGS = """\
SECRET_KEY = "idautofield-test"
DATABASES = {{"default": {database!r}}}
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "notes"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "idgen.django.IdAutoField"
"""
AUTO_MODELS = """\
from django.db import models


class Note(models.Model):
    text = models.CharField(max_length=40)


class Tag(models.Model):
    note = models.ForeignKey(Note, on_delete=models.CASCADE)
"""
AUTO_SHELL = """\
import idgen
from django.db import connection
from notes.models import Note, Tag

note = Note(text="one")
assert isinstance(note.pk, int)  # minted on instantiation
note.save()
made = Note.objects.bulk_create([Note(text="two"), Note(text="three")])
tag = Tag.objects.create(note=note)
keys = [note.pk, *(n.pk for n in made), tag.pk]
assert len(set(keys)) == 4 and min(keys) > 2**40, keys  # idgen IDs, not 1, 2, 3
assert abs(idgen.decode(note.pk)["timestamp_ms"] - idgen.decode(idgen.next_id())["timestamp_ms"]) < 600_000
assert Note.objects.get(pk=idgen.format_id(note.pk, "base58")) == note
with connection.cursor() as cursor:
    if connection.vendor == "postgresql":
        cursor.execute("SELECT data_type, is_identity, column_default FROM information_schema.columns"
                       " WHERE table_name = 'notes_note' AND column_name = 'id'")
        assert cursor.fetchone() == ("bigint", "NO", None)
    else:
        cursor.execute("SELECT sql FROM sqlite_master WHERE name = 'notes_note'")
        sql = cursor.fetchone()[0]
        assert '"id" bigint NOT NULL PRIMARY KEY' in sql and "AUTOINCREMENT" not in sql, sql

from idgen.django.rest_framework import IdModelSerializer


class NoteSerializer(IdModelSerializer):
    class Meta:
        model = Note
        fields = ["id", "text"]


assert NoteSerializer(note).data == {"id": str(note.pk), "text": "one"}  # a string: the key maps to IdSerializerField
incoming = NoteSerializer(data={"id": "1", "text": "posted"})
assert incoming.is_valid(), incoming.errors
assert incoming.save().pk > 2**40  # read-only: minted, never taken from the client
print("ok", keys)
"""


def auto_field_project(db_url: str, path: Path, auto_field: str = "idgen.django.IdAutoField") -> Callable[..., str]:
    """A Django project in ``path`` whose ``notes`` app keys its models with ``DEFAULT_AUTO_FIELD``; its ``manage``,
    run in a child process (``DEFAULT_AUTO_FIELD`` is read once per process)."""
    (path / "notes").mkdir(exist_ok=True)
    (path / "notes" / "__init__.py").write_text("")
    (path / "notes" / "models.py").write_text(AUTO_MODELS)
    settings = AUTO_SETTINGS.format(database=database(db_url)).replace("idgen.django.IdAutoField", auto_field)
    (path / "settings.py").write_text(settings)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "settings", "PYTHONPATH": str(path)}
    env["IDGEN_STATE_DIR"] = str(path / "idgen-state")

    def manage(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "django", *args], cwd=path, env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    return manage


def test_idautofield_is_a_default_auto_field_a_real_project_migrates_and_fills(db_url: str, tmp_path: Path) -> None:
    """makemigrations, makemigrations --check (the field deconstructs stably), migrate and inserts, on SQLite and on
    PostgreSQL."""
    manage = auto_field_project(db_url, tmp_path)
    manage("makemigrations", "notes")
    migration = (tmp_path / "notes" / "migrations" / "0001_initial.py").read_text()
    assert "idgen.django.IdAutoField(auto_created=True, primary_key=True, serialize=False" in migration
    manage("makemigrations", "--check", "--dry-run")
    manage("migrate")
    assert "\nok [" in "\n" + manage("shell", "-c", AUTO_SHELL)


def test_a_project_on_bigautofield_switches_to_idautofield_and_keeps_its_rows(db_url: str, tmp_path: Path) -> None:
    """The migration Django writes for the switch drops the sequence (identity on PostgreSQL, AUTOINCREMENT on
    SQLite); old rows keep their small keys and foreign keys, new rows get idgen IDs, far above them."""
    manage = auto_field_project(db_url, tmp_path, auto_field="django.db.models.BigAutoField")
    manage("makemigrations", "notes")
    manage("migrate")
    manage(
        "shell", "-c", "from notes.models import Note, Tag; Tag.objects.create(note=Note.objects.create(text='old'))"
    )
    manage = auto_field_project(db_url, tmp_path)
    manage("makemigrations", "notes")
    altered = (tmp_path / "notes" / "migrations" / "0002_alter_note_id_alter_tag_id.py").read_text()
    assert altered.count("idgen.django.IdAutoField(auto_created=True, primary_key=True, serialize=False") == 2
    manage("migrate")
    check = (
        "from notes.models import Note, Tag\n"
        "old = Note.objects.get(text='old')\n"
        "assert old.pk == 1 and Tag.objects.get().note == old\n"
        "new = Note.objects.create(text='new')\n"
        "assert new.pk > 2**40 and Tag.objects.create(note=new).pk > 2**40\n"
        "print('ok')\n"
    )
    assert manage("shell", "-c", check).endswith("ok\n")


def test_an_idautofield_is_an_idfield_key() -> None:
    from django.db import models

    from idgen.django import IdAutoField, IdField

    field = IdAutoField(primary_key=True)
    assert isinstance(field, IdField) and issubclass(IdAutoField, models.AutoField)
    assert field.get_default() > 0 and not field.editable and field.formfield() is None
    assert field.to_python(format_id(BASE32_VALUE, "hex")) == BASE32_VALUE
    assert parse_id(format_id(BASE32_VALUE, "base32"), "base32") == BASE32_VALUE
