"""The control tower: `GET /ui` (a self-contained page) and the JSON it reads,
`GET /v1/ops/summary` and `GET /v1/ops/sku/{sku}`.

All three accept a key with the ``admin`` scope or the ``availability:read`` scope.

The key on the page: a browser cannot send an ``Authorization`` header when an operator
types a URL, so `/ui` also accepts the key as ``?key=...``; the page's script then reads it
from its own address and sends it as a bearer header on its fetch() calls (the JSON endpoints
accept the header only). The tradeoff: a key in a URL lands in the browser's history and in
the access logs of any proxy in front of the API (this service does not log access). So the
page is answered with ``Referrer-Policy: no-referrer`` and ``Cache-Control: no-store``, loads
nothing from elsewhere (a strict Content-Security-Policy with a per-response nonce), and
should be opened with a read-only key. Behind an authenticating proxy that injects the header,
open `/ui` without ``?key=``: the page then sends no header of its own.
"""

from __future__ import annotations

import secrets
from typing import Any, Final

import redis.asyncio as aredis
from litestar import Controller, MediaType, Request, Response, get
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from atp_service.config import Settings
from atp_service.http.auth import KeyRing
from atp_service.http.problems import problem_responses
from atp_service.http.schemas import SkuParam
from atp_service.ops.tower import SkuView, Summary, Tower

OPS_SCOPES: Final = ("admin", "availability:read")


def require_any(*scopes: str, query_key: bool = False):  # type: ignore[no-untyped-def]
    """A guard like :func:`atp_service.http.auth.require` that accepts any one of ``scopes``;
    with ``query_key`` a ``?key=`` query parameter stands in for a missing header."""
    wanted = frozenset(scopes)
    named = " or ".join(repr(s) for s in scopes)

    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:  # type: ignore[type-arg]
        ring: KeyRing = connection.app.state.keyring
        authorization = connection.headers.get("authorization")
        if not authorization and query_key:
            key = connection.query_params.get("key")
            authorization = f"Bearer {key}" if key else None
        found = ring.scopes_for(authorization)
        if found is None:
            raise NotAuthorizedException(
                detail="a valid bearer key is required", headers={"WWW-Authenticate": "Bearer"}
            )
        if not wanted & found[1]:
            raise PermissionDeniedException(detail=f"this key lacks the scope {named}")
        connection.scope["state"]["api_key"] = found[0]

    return guard


def _provide_tower(state: State, settings: Settings, redis_client: aredis.Redis) -> Tower:
    # One per process, made on first use: its cache is shared by every request.
    tower: Tower | None = state.get("tower")
    if tower is None or tower.client is not redis_client:
        tower = Tower(redis_client, settings)
        state.tower = tower
    return tower


class UiController(Controller):
    path = "/"
    tags = ["operations"]
    dependencies = {"tower": Provide(_provide_tower, sync_to_thread=False)}

    @get(
        "/ui",
        guards=[require_any(*OPS_SCOPES, query_key=True)],
        include_in_schema=False,
        media_type=MediaType.HTML,
    )
    async def page(self, request: Request[Any, Any, Any]) -> Response[str]:
        nonce = secrets.token_urlsafe(16)
        return Response(
            content=PAGE.replace("__NONCE__", nonce),
            media_type=MediaType.HTML,
            headers={
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",
                "X-Content-Type-Options": "nosniff",
                "X-Frame-Options": "DENY",
                "Content-Security-Policy": (
                    "default-src 'none'; connect-src 'self'; img-src 'self' data:; "
                    f"style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
                    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
                ),
            },
        )

    @get(
        "/v1/ops/summary",
        guards=[require_any(*OPS_SCOPES)],
        responses=problem_responses(401, 403, 503),
        summary="Control tower figures: skus at zero / under safety stock, lag, latency, "
        "dead letters, oldest open reservations (cached a few seconds)",
    )
    async def summary(self, tower: Tower) -> Summary:
        return await tower.summary()

    @get(
        "/v1/ops/sku/{sku:str}",
        guards=[require_any(*OPS_SCOPES)],
        responses=problem_responses(400, 401, 403, 503),
        summary="One sku for operators: stock per location and status, reservations, "
        "inbound with ETAs, available_to_sell per channel",
    )
    async def sku(self, sku: SkuParam, tower: Tower) -> SkuView:
        return await tower.sku(sku)


PAGE: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>atp control tower</title>
<style nonce="__NONCE__">
  :root { --bg:#f4f6f8; --card:#fff; --ink:#1d2630; --muted:#66727f; --line:#dde3ea;
          --bad:#b42318; --warn:#b54708; --good:#067647; --accent:#1f4e79; }
  * { box-sizing: border-box; }
  body { margin:0; font:14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif;
         background:var(--bg); color:var(--ink); }
  header { background:var(--accent); color:#fff; padding:10px 20px; display:flex;
           align-items:baseline; gap:16px; flex-wrap:wrap; }
  header h1 { font-size:18px; margin:0; }
  header .meta { opacity:.85; font-size:12px; }
  main { padding:16px 20px; display:grid; gap:16px;
         grid-template-columns:repeat(auto-fit, minmax(420px, 1fr)); }
  section { background:var(--card); border:1px solid var(--line); border-radius:6px;
            padding:12px 14px; min-width:0; }
  section.wide { grid-column:1 / -1; }
  h2 { font-size:14px; margin:0 0 8px; text-transform:uppercase; letter-spacing:.04em;
       color:var(--muted); }
  .cards { display:flex; gap:12px; flex-wrap:wrap; }
  .card { flex:1 1 140px; border:1px solid var(--line); border-radius:6px; padding:8px 10px; }
  .card .label { color:var(--muted); font-size:12px; }
  .card .value { font-size:24px; font-weight:600; font-variant-numeric:tabular-nums; }
  table { border-collapse:collapse; width:100%; }
  th, td { text-align:left; padding:4px 8px; border-bottom:1px solid var(--line);
           vertical-align:top; white-space:nowrap; }
  td.wrap { white-space:normal; overflow-wrap:anywhere; }
  th { color:var(--muted); font-weight:600; font-size:12px; }
  td.n, th.n { text-align:right; font-variant-numeric:tabular-nums; }
  .bad { color:var(--bad); font-weight:600; }
  .warn { color:var(--warn); font-weight:600; }
  .good { color:var(--good); }
  .muted { color:var(--muted); }
  .sku-link { color:var(--accent); cursor:pointer; text-decoration:underline;
              background:none; border:0; padding:0 4px 0 0; font:inherit; }
  form { display:flex; gap:8px; margin-bottom:10px; }
  input[type=search] { flex:1; padding:6px 8px; font:inherit; border:1px solid var(--line);
                       border-radius:4px; }
  button[type=submit] { padding:6px 14px; font:inherit; background:var(--accent); color:#fff;
                        border:0; border-radius:4px; cursor:pointer; }
  #status { font-size:12px; }
  #status.error { color:#ffd7d2; font-weight:600; }
  .sub { display:grid; gap:12px 24px; grid-template-columns:repeat(auto-fit, minmax(520px, 1fr)); }
  .sub > div { min-width:0; overflow-x:auto; }
  h3 { font-size:13px; margin:6px 0; }
</style>
</head>
<body>
<header>
  <h1>atp control tower</h1>
  <span class="meta">figures as of <span data-testid="generated-at">&hellip;</span>,
    <span data-testid="skus-scanned">&hellip;</span> skus scanned, refreshed every 5 s</span>
  <span id="status" class="meta" data-testid="status">loading&hellip;</span>
</header>
<main>
  <section class="wide">
    <h2>Stream health</h2>
    <div class="cards">
      <div class="card"><div class="label">consumer lag (messages)</div>
        <div class="value" data-testid="lag-total">&hellip;</div></div>
      <div class="card"><div class="label">event to visible p50 (ms)</div>
        <div class="value" data-testid="visible-p50">&hellip;</div></div>
      <div class="card"><div class="label">event to visible p99 (ms)</div>
        <div class="value" data-testid="visible-p99">&hellip;</div></div>
      <div class="card"><div class="label">dead letters, last hour</div>
        <div class="value" data-testid="dead-total">&hellip;</div></div>
      <div class="card"><div class="label">open reservations</div>
        <div class="value" data-testid="open-reservations">&hellip;</div></div>
      <div class="card"><div class="label">live consumers</div>
        <div class="value" data-testid="consumers">&hellip;</div></div>
    </div>
  </section>
  <section class="wide">
    <h2>Channels</h2>
    <table data-testid="channels">
      <thead><tr><th>channel</th><th class="n">skus</th><th class="n">at zero</th>
        <th>e.g.</th><th class="n">under safety stock</th><th>e.g.</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <section>
    <h2>Consumer lag per partition</h2>
    <table data-testid="lag">
      <thead><tr><th>topic/partition</th><th class="n">lag</th></tr></thead><tbody></tbody>
    </table>
  </section>
  <section>
    <h2>Dead letters by reason, last hour</h2>
    <table data-testid="dead-letters">
      <thead><tr><th>reason</th><th class="n">count</th></tr></thead><tbody></tbody>
    </table>
  </section>
  <section class="wide">
    <h2>Oldest open reservations <span class="muted">(by expiry; no creation time is
      stored, so never-expiring ones are listed last)</span></h2>
    <table data-testid="reservations">
      <thead><tr><th>reservation</th><th>sku</th><th>channel</th><th>location</th>
        <th class="n">quantity</th><th>expires at</th></tr></thead><tbody></tbody>
    </table>
  </section>
  <section class="wide">
    <h2>One sku</h2>
    <form id="sku-form" autocomplete="off">
      <input id="sku-input" type="search" placeholder="sku, e.g. SKU-00001" maxlength="200"
             aria-label="sku">
      <button type="submit">Show</button>
    </form>
    <div id="sku-result" data-testid="sku-result"></div>
  </section>
</main>
<script nonce="__NONCE__">
"use strict";
// The key: from ?key= (see the module docstring of atp_service/controllers/ui.py for the
// tradeoff). Without one, no header is sent (an authenticating proxy adds its own).
const KEY = new URLSearchParams(location.search).get("key");
const HEADERS = KEY ? { Authorization: "Bearer " + KEY } : {};
const $ = (sel, root) => (root || document).querySelector(sel);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}
const num = (v) => (v === null || v === undefined ? "n/a" : String(v));
const cell = (field, value, cls) =>
  el("td", { "data-field": field, class: cls || "n" }, num(value));

function skuLinks(skus) {
  const td = el("td");
  for (const sku of skus) {
    const b = el("button", { type: "button", class: "sku-link" }, sku);
    b.addEventListener("click", () => { $("#sku-input").value = sku; showSku(sku); });
    td.append(b);
  }
  return td;
}

function fill(testid, rows, empty, span) {
  const body = $('[data-testid="' + testid + '"] tbody');
  body.replaceChildren(...rows);
  if (!rows.length) body.append(el("tr", {}, el("td", { colspan: span, class: "muted" }, empty)));
}

function setText(testid, value) { $('[data-testid="' + testid + '"]').textContent = num(value); }

async function getJSON(path) {
  const reply = await fetch(path, { headers: HEADERS, cache: "no-store" });
  if (!reply.ok) {
    let detail = reply.statusText;
    try { detail = (await reply.json()).detail || detail; } catch (_) { /* not JSON */ }
    throw new Error(reply.status + " " + detail);
  }
  return reply.json();
}

function status(text, error) {
  const node = $("#status");
  node.textContent = text;
  node.className = "meta" + (error ? " error" : "");
}

function renderSummary(s) {
  setText("generated-at", s.generated_at);
  setText("skus-scanned", s.skus_scanned + (s.truncated ? " (truncated)" : ""));
  setText("lag-total", s.lag_total);
  setText("visible-p50", s.visible_p50_ms);
  setText("visible-p99", s.visible_p99_ms);
  setText("dead-total", s.dead_letters_last_hour);
  setText("open-reservations", s.open_reservations);
  const live = s.consumers.filter((c) => !c.stale).length;
  setText("consumers", live + (s.consumers.length > live ? " (+" + (s.consumers.length - live) + " stale)" : ""));
  $('[data-testid="lag-total"]').className = "value" + (s.lag_total === null ? " bad" : s.lag_total > 1000 ? " warn" : "");
  $('[data-testid="dead-total"]').className = "value" + (s.dead_letters_last_hour > 0 ? " bad" : "");
  fill("channels", s.channels.map((c) => el("tr", { "data-channel": c.channel },
    el("td", { "data-field": "channel" }, c.channel),
    cell("skus", c.skus),
    cell("at_zero", c.at_zero, "n" + (c.at_zero ? " bad" : "")),
    skuLinks(c.at_zero_examples),
    cell("under_safety_stock", c.under_safety_stock, "n" + (c.under_safety_stock ? " warn" : "")),
    skuLinks(c.under_safety_stock_examples))), "no channels", 6);
  fill("lag", s.lag.map((p) => el("tr", { "data-partition": p.partition },
    el("td", {}, p.partition), cell("lag", p.lag))),
    s.lag_total === null ? "no consumer reports" : "no partitions assigned", 2);
  fill("dead-letters", s.dead_letters_by_reason.map((d) => el("tr", {},
    el("td", { "data-field": "reason", class: "wrap" }, d.reason), cell("count", d.count))), "none", 2);
  fill("reservations", s.oldest_open_reservations.map((r) => el("tr", { "data-reservation": r.reservation_id },
    el("td", {}, r.reservation_id), skuLinks([r.sku]), el("td", {}, r.channel),
    el("td", {}, r.location), cell("quantity", r.quantity),
    el("td", {}, r.expires_at || "never"))), "none open", 6);
  document.body.dataset.summary = s.generated_at;
}

async function refresh() {
  try {
    renderSummary(await getJSON("/v1/ops/summary"));
    status("updated " + new Date().toLocaleTimeString());
  } catch (err) {
    status("summary failed: " + err.message, true);
  }
}

async function showSku(sku) {
  const out = $("#sku-result");
  sku = sku.trim();
  if (!sku) return;
  out.replaceChildren(el("p", { class: "muted" }, "loading " + sku + "\\u2026"));
  let v;
  try {
    v = await getJSON("/v1/ops/sku/" + encodeURIComponent(sku));
  } catch (err) {
    out.replaceChildren(el("p", { class: "bad" }, sku + ": " + err.message));
    return;
  }
  const statuses = [...new Set(v.locations.flatMap((l) => Object.keys(l.other)))].sort();
  const locations = el("table", { "data-testid": "sku-locations" },
    el("thead", {}, el("tr", {}, el("th", {}, "location"), el("th", { class: "n" }, "on hand"),
      ...statuses.map((st) => el("th", { class: "n" }, st)),
      el("th", { class: "n" }, "reserved"), el("th", { class: "n" }, "inbound"))),
    el("tbody", {}, ...v.locations.map((l) => el("tr", { "data-location": l.location },
      el("td", {}, l.location), cell("on_hand", l.on_hand),
      ...statuses.map((st) => cell("status:" + st, l.other[st] || 0)),
      cell("reserved", l.reserved), cell("inbound", l.inbound)))));
  const channels = el("table", { "data-testid": "sku-channels" },
    el("thead", {}, el("tr", {}, el("th", {}, "channel"), el("th", { class: "n" }, "available to sell"),
      el("th", { class: "n" }, "on hand"), el("th", { class: "n" }, "reserved"),
      el("th", { class: "n" }, "safety stock"), el("th", {}, "as of"))),
    el("tbody", {}, ...v.channels.map((c) => el("tr", { "data-channel": c.channel },
      el("td", {}, c.channel),
      cell("available_to_sell", c.available_to_sell, "n" + (c.available_to_sell ? " good" : " bad")),
      cell("on_hand", c.on_hand), cell("reserved", c.reserved),
      cell("safety_stock", c.safety_stock), el("td", { class: "muted" }, c.as_of || "never projected")))));
  const inbound = el("table", { "data-testid": "sku-inbound" },
    el("thead", {}, el("tr", {}, el("th", {}, "inbound line"), el("th", {}, "location"),
      el("th", { class: "n" }, "quantity"), el("th", {}, "eta"))),
    el("tbody", {}, ...(v.inbound.length ? v.inbound.map((i) => el("tr", { "data-inbound": i.inbound_id },
      el("td", {}, i.inbound_id), el("td", {}, i.location), cell("quantity", i.quantity),
      el("td", { "data-field": "eta" }, i.eta)))
      : [el("tr", {}, el("td", { colspan: 4, class: "muted" }, "none open"))])));
  const reservations = el("table", { "data-testid": "sku-reservations" },
    el("thead", {}, el("tr", {}, el("th", {}, "reservation"), el("th", {}, "channel"),
      el("th", {}, "location"), el("th", { class: "n" }, "quantity"), el("th", {}, "expires at"))),
    el("tbody", {}, ...(v.reservations.length ? v.reservations.map((r) => el("tr", { "data-reservation": r.reservation_id },
      el("td", {}, r.reservation_id), el("td", {}, r.channel), el("td", {}, r.location),
      cell("quantity", r.quantity), el("td", {}, r.expires_at || "never")))
      : [el("tr", {}, el("td", { colspan: 5, class: "muted" }, "none open"))])));
  out.replaceChildren(
    el("h3", { "data-testid": "sku-title" }, v.sku + (v.known ? "" : " (never seen: reads 0)")),
    el("div", { class: "sub" },
      el("div", {}, el("h3", {}, "Per location"), locations),
      el("div", {}, el("h3", {}, "Per channel"), channels),
      el("div", {}, el("h3", {}, "Inbound"), inbound),
      el("div", {}, el("h3", {}, "Open reservations"), reservations)));
  out.dataset.sku = v.sku;
}

$("#sku-form").addEventListener("submit", (event) => {
  event.preventDefault();
  showSku($("#sku-input").value);
});
refresh();
setInterval(refresh, 5000);
</script>
</body>
</html>
"""
