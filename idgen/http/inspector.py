"""The ID inspector: ``GET /``, one self-contained HTML page (inline CSS and JS, no build step, nothing external).

The page reads this worker's state from ``GET /info`` and ``GET /metrics`` every ``REFRESH_MS`` and shows the worker
ID, the lease, the fence headroom, the clock skew and the rate of IDs minted; its form decodes an ID pasted in any
string form through ``GET /decode/{id}`` and shows its time, fields and the node that minted it, or the server's
error message. The form's format (default: the one form the string reads in) and layout (default: this server's)
go to ``/decode`` as ``?format=`` and ``?layout=``: an all-digit base32 or base58 ID is refused as ambiguous
without its format.

Invariants: the page loads nothing but itself and same-origin API calls, which its Content-Security-Policy enforces
(the inline script and style are allowed by their SHA-256 hashes, computed here); it writes server data into the
DOM only as text (``textContent``), never as HTML.
"""

from __future__ import annotations

import base64
import hashlib

from aiohttp import web

from idgen.encoding import FORMS
from idgen.layout import PRESETS

REFRESH_MS = 2000

_STYLE = """
:root { font: 15px/1.45 system-ui, sans-serif; color: #1d2433; background: #f6f7f9; }
body { max-width: 60rem; margin: 1.5rem auto; padding: 0 1rem; }
h1 { font-size: 1.4rem; margin: 0 0 .2rem; } h2 { font-size: 1.1rem; margin: 0 0 .6rem; }
section { background: #fff; border: 1px solid #d9dde3; border-radius: 6px; padding: 1rem 1.2rem; margin: 1rem 0; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3rem .6rem .3rem 0; vertical-align: top; border-bottom: 1px solid #eef0f3; }
th { width: 12rem; font-weight: 600; color: #4a5568; }
td { font-family: ui-monospace, monospace; word-break: break-all; }
.muted { color: #6b7280; font-size: .85rem; }
.ok { color: #15803d; } .bad { color: #b91c1c; }
.error { background: #fef2f2; border: 1px solid #fca5a5; color: #991b1b; padding: .5rem .8rem; border-radius: 4px; }
form { display: flex; gap: .5rem; margin-bottom: .8rem; }
input { flex: 1; font: inherit; font-family: ui-monospace, monospace; padding: .4rem .5rem; }
select, button { font: inherit; padding: .4rem .5rem; }
[hidden] { display: none !important; }
"""

_SCRIPT = """
"use strict";
const REFRESH_MS = __REFRESH_MS__;
const $ = (id) => document.getElementById(id);
let lastCount = null, lastAt = null;

function row(table, label, value, field, cls) {
  const tr = table.insertRow(), th = document.createElement("th"), td = tr.insertCell();
  th.textContent = label; tr.prepend(th);
  td.textContent = value === null || value === undefined ? "\u2014" : String(value);
  if (field) td.dataset.field = field;
  if (cls) td.className = cls;
}

function set(id, text, cls) { const el = $(id); el.textContent = text; el.className = cls || ""; }

async function getJson(path) {
  const response = await fetch(path, {cache: "no-store", headers: {Accept: "application/json"}});
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const error = body && body.error ? body.error : {code: "http_" + response.status, message: response.statusText};
    throw Object.assign(new Error(error.message || "HTTP " + response.status), {code: error.code});
  }
  return body;
}

function metric(text, name, pid) {
  let value = null;
  for (const line of text.split("\\n")) {
    if (!line.startsWith(name + " ") && !line.startsWith(name + "{")) continue;
    const labels = line.slice(name.length, line.lastIndexOf(" "));
    if (labels && pid !== undefined && labels.includes("pid=") && !labels.includes('pid="' + pid + '"')) continue;
    value = (value || 0) + Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return value;
}

function seconds(s) { return s === null ? null : (s >= 0 ? "" : "\\u2212") + Math.abs(s).toFixed(1) + " s"; }

async function refreshState() {
  try {
    const [info, metrics] = await Promise.all([
      getJson("/info"),
      fetch("/metrics", {cache: "no-store"}).then((r) => (r.ok ? r.text() : "")),
    ]);
    const lease = info.lease || {};
    set("ready", info.ready ? "ready" : "not ready: " + (info.reason || "unknown"), info.ready ? "ok" : "bad");
    set("worker-id", info.worker_id === null ? "none" : String(info.worker_id));
    const where = lease.address ? " (" + lease.address + ")" : "";
    set("process", "pid " + info.pid + " on " + (lease.host || "?") + where);
    set("lease", [lease.backend, lease.state, lease.lease_id ? "lease " + lease.lease_id : null,
                  lease.session_id ? "session " + lease.session_id : null].filter(Boolean).join(", "));
    let headroom = metric(metrics, "idgen_fence_headroom_seconds", info.pid);
    if (headroom === null && info.fence_ms !== null) headroom = (info.fence_ms - Date.now()) / 1000;
    set("fence", info.fence ? info.fence + " (" + seconds(headroom) + " ahead)" : "none",
        headroom !== null && headroom < 0 ? "bad" : "");
    const skew = lease.clock_skew_ms;
    set("clock-skew", skew === undefined || skew === null
      ? "n/a (" + (lease.backend || "this") + " lease: no coordinator clock to compare with)"
      : (skew >= 0 ? "+" : "") + skew.toFixed(1) + " ms vs ZooKeeper");
    set("rollbacks", String(info.clock_rollbacks) + " clock rollbacks (" + info.clock_rides + " ridden, "
        + info.worker_id_switches + " worker ID switches), " + info.overflow_waits + " overflow waits");
    set("lead", info.clock_lead_ms ? info.clock_lead_ms + " ms ahead of the clock (riding a step back; at most "
        + info.max_lead_ms + " ms)" : "none");
    const minted = metric(metrics, "idgen_ids_minted_total"), now = performance.now();
    if (minted !== null && lastCount !== null && now > lastAt) {
      set("rate", ((minted - lastCount) / ((now - lastAt) / 1000)).toFixed(1) + " IDs/s (whole server)");
    } else if (minted === null) {
      set("rate", "n/a (no metrics)");
    }
    if (minted !== null) { lastCount = minted; lastAt = now; }
    set("layout", info.layout.name + ": " + info.layout.bits + ", epoch " + info.layout.epoch);
    set("version", info.version + "; time bits run out " + info.time_bits_run_out);
    set("updated", "updated " + new Date().toLocaleTimeString());
    $("state-error").hidden = true;
  } catch (e) {
    set("state-error", "cannot read this worker's state: " + e.message, "error");
    $("state-error").hidden = false;
  }
}

const KNOWN = ["id", "layout", "timestamp_ms", "time", "sequence", "worker", "node", "node_error", "node_reason"];

async function decodeId(event) {
  event.preventDefault();
  const text = $("id-input").value.trim(), result = $("decode-result"), error = $("decode-error");
  result.replaceChildren(); result.hidden = true; error.hidden = true;
  if (!text) { error.textContent = "paste an ID first"; error.hidden = false; return; }
  try {
    const query = new URLSearchParams();
    for (const name of ["format", "layout"]) if ($(name + "-input").value) query.set(name, $(name + "-input").value);
    const d = await getJson("/decode/" + encodeURIComponent(text) + (String(query) ? "?" + query : ""));
    const table = document.createElement("table");
    row(table, "ID (decimal)", d.id, "id");
    row(table, "time", d.time, "time");
    row(table, "timestamp (Unix ms)", d.timestamp_ms, "timestamp_ms");
    for (const [name, value] of Object.entries(d)) if (!KNOWN.includes(name)) row(table, name, value, name);
    row(table, "sequence", d.sequence, "sequence");
    row(table, "worker ID", d.worker, "worker");
    row(table, "layout", d.layout, "layout");
    const node = d.node;
    if (node) {
      row(table, "minted by", "pid " + node.pid + " on " + node.host, "node");
      row(table, "node pid", node.pid, "node.pid");
      row(table, "node host", node.host, "node.host");
      row(table, "node address", node.address, "node.address");
      row(table, "node lease", node.lease_id, "node.lease_id");
      row(table, "lease started", new Date(node.started_ms).toISOString(), "node.started");
      row(table, "lease ended", node.ended_ms === null ? "still held" : new Date(node.ended_ms).toISOString(),
          "node.ended");
    } else {
      const why = d.node_reason ? "none: " + d.node_reason.message : "unknown: " + (d.node_error || "no answer");
      row(table, "minted by", why, "node", "bad");
    }
    result.append(table); result.hidden = false;
  } catch (e) {
    error.textContent = (e.code ? e.code + ": " : "") + e.message; error.hidden = false;
  }
}

$("decode-form").addEventListener("submit", decodeId);
refreshState();
setInterval(refreshState, REFRESH_MS);
""".replace("__REFRESH_MS__", str(REFRESH_MS))

_STATE_ROWS = (
    ("state", "ready"),
    ("process", "process"),
    ("worker ID", "worker-id"),
    ("lease", "lease"),
    ("fence (headroom)", "fence"),
    ("clock skew", "clock-skew"),
    ("clock", "rollbacks"),
    ("IDs ahead of the clock", "lead"),
    ("rate", "rate"),
    ("layout", "layout"),
    ("version", "version"),
)

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>idgen inspector</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>idgen inspector</h1>
<p class="muted">Snowflake-style IDs minted under a fenced worker-ID lease.
<a href="/openapi.json">API</a> &middot; <a href="/metrics">metrics</a></p>
<section id="state">
<h2>This worker <span id="updated" class="muted"></span></h2>
<p id="state-error" class="error" hidden></p>
<table>
{"".join(f'<tr><th>{label}</th><td id="{id_}">loading&hellip;</td></tr>' for label, id_ in _STATE_ROWS)}
</table>
</section>
<section id="decode">
<h2>Decode an ID</h2>
<form id="decode-form">
<input id="id-input" name="id" autocomplete="off" spellcheck="false"
 placeholder="an ID: decimal, 0x-hex, base32 or base58" aria-label="ID">
<select id="format-input" name="format" aria-label="format">
<option value="">any format</option>
{"".join(f'<option value="{form}">{form}</option>' for form in FORMS)}
</select>
<select id="layout-input" name="layout" aria-label="layout">
<option value="">this server's layout</option>
{"".join(f'<option value="{name}">{name}</option>' for name in PRESETS)}
</select>
<button id="decode-button" type="submit">Decode</button>
</form>
<p id="decode-error" class="error" role="alert" hidden></p>
<div id="decode-result" hidden></div>
</section>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_sha256(_SCRIPT)}; style-src {_sha256(_STYLE)}; connect-src 'self';"
        " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}
_BODY = PAGE.encode()


def page() -> str:
    """The inspector page: one self-contained HTML document."""
    return PAGE


async def serve(request: web.Request) -> web.Response:
    """The handler of ``GET /``: the page, with its Content-Security-Policy."""
    return web.Response(body=_BODY, headers=_HEADERS)
