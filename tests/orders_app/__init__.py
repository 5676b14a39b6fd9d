"""A Django app for the idgen.django tests (tests/djangosite.py configures the project around it)."""
