"""The OpenAPI 3 document of the HTTP service (:mod:`idgen.http.service`), as a plain dict.

It describes what the app really does, and the tests hold it to that: they validate it with
``openapi-spec-validator`` and fuzz the running server against it with schemathesis.
"""

from __future__ import annotations

from typing import Any

from idgen.encoding import FORM_PATTERNS, FORMS
from idgen.layout import PRESETS, Layout

_ID_STRING = {
    "type": "string",
    "anyOf": [{"title": form, "pattern": FORM_PATTERNS[form]} for form in FORMS],
    "description": "An ID in the requested string form (decimal by default).",
}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}
#: An ID string to read: in one of the forms, each branch titled by its form and matching exactly what idgen reads.
_ANY_FORM = {
    **_ID_STRING,
    "description": "An ID in one of the string forms: the branch that ?format= names; without ?format=, exactly one"
    " branch (an all-digit base32 or base58 string is decimal too: 400 ambiguous_id).",
}


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}, **extra}


def document(*, max_count: int, layout: Layout, version: str) -> dict[str, Any]:
    """The OpenAPI 3.0 document for a service minting IDs of ``layout``, with ``count`` up to ``max_count``."""
    node_fields = {name: {"type": "integer", "minimum": 0} for name, _ in layout.node_fields}
    retry_after = {
        "Retry-After": {
            "description": "Seconds to wait before retrying (a whole number, at least 1).",
            "schema": {"type": "integer", "minimum": 1},
        }
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "idgen",
            "version": version,
            "description": (
                "Snowflake-style 63-bit IDs: unique, roughly time-ordered, minted under a fenced worker-ID lease."
                " IDs are JSON strings because JavaScript numbers lose 64-bit integers."
                ' Every error body is {"error": {"code", "message"}}; 404 for unknown routes and 405 for'
                " methods other than GET."
            ),
        },
        "paths": {
            "/": {
                "get": {
                    "operationId": "inspector",
                    "summary": "The ID inspector page: this worker's state, and a form that decodes an ID",
                    "responses": {
                        "200": {
                            "description": "One self-contained HTML page.",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/id": {
                "get": {
                    "operationId": "mintIds",
                    "summary": "Mint one ID, or a strictly increasing batch",
                    "description": (
                        'Without count the body is {"id": ...}; with count it is {"ids": [...]}, strictly'
                        " increasing. With Accept: text/plain the body is the IDs, one per line. With count and an"
                        " Accept naming application/vnd.idgen.runs+json the body is the compact runs form"
                        ' {"runs": [["<first ID>", count], ...]}: each run is count consecutive IDs from first,'
                        " the runs strictly increasing (format must then be decimal, else 400)."
                    ),
                    "parameters": [
                        {
                            "name": "count",
                            "in": "query",
                            "required": False,
                            "description": "How many IDs to mint.",
                            "schema": {"type": "integer", "minimum": 1, "maximum": max_count},
                        },
                        {
                            "name": "format",
                            "in": "query",
                            "required": False,
                            "description": "The IDs' string form.",
                            "schema": {"type": "string", "enum": list(FORMS), "default": "decimal"},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "New IDs.",
                            "headers": {
                                "Cache-Control": {"description": "Always no-store.", "schema": {"type": "string"}}
                            },
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "oneOf": [
                                            {"$ref": "#/components/schemas/OneId"},
                                            {"$ref": "#/components/schemas/IdBatch"},
                                        ]
                                    }
                                },
                                "text/plain": {"schema": {"type": "string"}},
                                "application/vnd.idgen.runs+json": {"schema": {"$ref": "#/components/schemas/IdRuns"}},
                            },
                        },
                        "400": {"$ref": "#/components/responses/BadRequest"},
                        "503": {"$ref": "#/components/responses/Unavailable"},
                    },
                }
            },
            "/decode/{id}": {
                "get": {
                    "operationId": "decodeId",
                    "summary": "What an ID says: time, node fields, sequence, and the lease holder that minted it",
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "description": "An ID in a string form: decimal, 0x-hex, base32 or base58. In the form"
                            " that format names; without format, a string that reads in two forms (13 digits"
                            " starting with 0 to 7: decimal and base32; 11 digits 1 to 9: decimal and base58) is"
                            " refused with 400 ambiguous_id, naming both readings, unless only one reading fits the"
                            " layout decoded in.",
                            "schema": _ANY_FORM,
                        },
                        {
                            "name": "format",
                            "in": "query",
                            "required": False,
                            "description": "The ID's string form (default: the one form it reads in).",
                            "schema": {"type": "string", "enum": list(FORMS)},
                        },
                        {
                            "name": "layout",
                            "in": "query",
                            "required": False,
                            "description": "Decode in this layout (default: this server's): a preset, or a spec"
                            " string such as time:41,worker_id:10,sequence:12;epoch=2025-01-01 (400 invalid_layout"
                            " if it is not one). An ID with more bits than the layout has is 400 invalid_id. In"
                            " another layout than this server's, node is null with node_reason other_layout: the ID"
                            " was not minted here.",
                            "schema": {"type": "string", "enum": list(dict.fromkeys([*PRESETS, layout.name]))},
                        },
                    ],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Decoded"}, "The ID's fields."),
                        "400": {"$ref": "#/components/responses/BadRequest"},
                        "404": _json(_ERROR_REF, "The path does not name an ID (for example, it is empty)."),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness: the process is serving",
                    "responses": {"200": _json({"$ref": "#/components/schemas/Status"}, "Alive.")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "ready",
                    "summary": "Readiness: a lease is held, the fence is reserved and the clock is sane",
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Status"}, "Ready to mint."),
                        "503": {"$ref": "#/components/responses/Unavailable"},
                    },
                }
            },
            "/info": {
                "get": {
                    "operationId": "info",
                    "summary": "Layout, worker ID, fence, lease holder and backend, version, when time bits run out",
                    "responses": {"200": _json({"$ref": "#/components/schemas/Info"}, "What this process is.")},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (text exposition format) for the whole server",
                    "responses": {
                        "200": {"description": "Metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}}
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
                }
            },
        },
        "components": {
            "schemas": {
                "OneId": {
                    "type": "object",
                    "required": ["id"],
                    "additionalProperties": False,
                    "properties": {"id": _ID_STRING},
                },
                "IdBatch": {
                    "type": "object",
                    "required": ["ids"],
                    "additionalProperties": False,
                    "properties": {"ids": {"type": "array", "items": _ID_STRING, "minItems": 1, "maxItems": max_count}},
                },
                "IdRuns": {
                    "type": "object",
                    "required": ["runs"],
                    "additionalProperties": False,
                    "properties": {
                        "runs": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": max_count,
                            "description": "Runs of consecutive IDs: [first ID in decimal, how many], increasing.",
                            "items": {
                                "type": "array",
                                "minItems": 2,
                                "maxItems": 2,
                                "items": {
                                    "oneOf": [_ID_STRING, {"type": "integer", "minimum": 1, "maximum": max_count}]
                                },
                            },
                        }
                    },
                },
                "Decoded": {
                    "type": "object",
                    "required": ["id", "layout", "timestamp_ms", "time", "sequence", "worker", "node"],
                    "properties": {
                        "id": {"type": "string", "pattern": "^[0-9]{1,19}$", "description": "The ID in decimal."},
                        "layout": {"type": "string", "description": "The layout it was decoded in."},
                        "timestamp_ms": {"type": "integer", "description": "Unix ms of the ID's time unit."},
                        "time": {"type": "string", "description": "The same instant, ISO 8601 UTC."},
                        **node_fields,
                        "sequence": {"type": "integer", "minimum": 0},
                        "worker": {"type": "integer", "minimum": 0, "description": "The node fields as one worker ID."},
                        "node": {
                            "allOf": [{"$ref": "#/components/schemas/Holder"}],
                            "nullable": True,
                            "description": "The lease holder that minted the ID: the retained holder of its worker ID"
                            " whose window (after_ms, fence_ms] contains its timestamp. Null if there is none (see"
                            " node_reason) or the history could not be read (see node_error).",
                        },
                        "node_reason": {
                            "type": "object",
                            "required": ["code", "message"],
                            "description": "Present only when the history was read and no recorded holder minted"
                            " the ID, or it was decoded in another layout (node is null): why.",
                            "properties": {
                                "code": {
                                    "type": "string",
                                    "enum": [
                                        "before_history",
                                        "future",
                                        "outside_windows",
                                        "no_history",
                                        "other_layout",
                                    ],
                                    "description": "before_history: at or below the oldest retained holder's"
                                    " after_ms; future: above the worker ID's current fence; outside_windows:"
                                    " between two holders' windows; no_history: no holder is recorded; other_layout:"
                                    " decoded in a layout other than this server's.",
                                },
                                "message": {"type": "string"},
                            },
                        },
                        "node_error": {
                            "type": "string",
                            "description": "Present only when the lease history could not be read (node is null):"
                            " it failed, did not answer in time, or too many lookups were already waiting on it.",
                        },
                    },
                },
                "Holder": {
                    "type": "object",
                    "required": ["worker_id", "lease_id", "host", "pid", "started_ms", "after_ms"],
                    "properties": {
                        "worker_id": {"type": "integer"},
                        "lease_id": {"type": "string"},
                        "host": {"type": "string"},
                        "pid": {"type": "integer"},
                        "address": {"type": "string", "nullable": True, "description": "host:port it served on."},
                        "started_ms": {"type": "integer"},
                        "after_ms": {"type": "integer", "description": "It minted only timestamps above this."},
                        "ended_ms": {"type": "integer", "nullable": True},
                        "fence_ms": {
                            "type": "integer",
                            "nullable": True,
                            "description": "It minted only timestamps at or below this: its final fence, or the one"
                            " its successor found. Null while it holds the worker ID (the current fence bounds it).",
                        },
                    },
                },
                "Status": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"type": "string", "enum": ["ok", "ready"]}},
                },
                "Info": {
                    "type": "object",
                    "required": ["version", "pid", "ready", "worker_id", "layout", "lease", "time_bits_run_out"],
                    "properties": {
                        "version": {"type": "string"},
                        "pid": {"type": "integer"},
                        "ready": {"type": "boolean"},
                        "reason": {"type": "string", "nullable": True},
                        "worker_id": {"type": "integer", "nullable": True},
                        "fence_ms": {"type": "integer", "nullable": True},
                        "fence": {"type": "string", "nullable": True},
                        "time_bits_run_out": {
                            "type": "string",
                            "description": "ISO 8601: the layout's last time unit.",
                        },
                        "layout": {"type": "object"},
                        "lease": {
                            "type": "object",
                            "description": "The lease backend: state, holder (host, pid, address), local state"
                            " directory or ZooKeeper hosts, namespace and session.",
                        },
                        "max_count": {"type": "integer"},
                        "rollback_tolerance_ms": {"type": "integer"},
                        "max_lead_ms": {
                            "type": "integer",
                            "description": "How far ahead of a clock that stepped back IDs may run (0: never).",
                        },
                        "clock_lead_ms": {
                            "type": "integer",
                            "description": "How far ahead of the clock IDs are stamped now (riding a clock step).",
                        },
                        "clock_lead_max_ms": {"type": "number", "description": "The largest lead since start."},
                        "clock_rollbacks": {"type": "integer"},
                        "clock_rides": {"type": "integer", "description": "Clock steps back ridden through."},
                        "worker_id_switches": {
                            "type": "integer",
                            "description": "Moves to another worker ID, the clock beyond max_lead_ms behind.",
                        },
                        "overflow_waits": {"type": "integer"},
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        }
                    },
                },
            },
            "responses": {
                "BadRequest": _json(
                    _ERROR_REF,
                    "A malformed parameter (count, format, layout or ID), or an ambiguous ID (ambiguous_id).",
                ),
                "Unavailable": _json(
                    _ERROR_REF,
                    "Uniqueness cannot be proven now: no lease, past the fence, or the clock behind by more than the"
                    " tolerance. Nothing was minted.",
                    headers=retry_after,
                ),
            },
        },
    }
