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
    skuLinks(c.under_safety_stock_examples),
    el("td", { "data-field": "buffers", class: "muted" }, c.buffers || "none"))), "no channels", 7);
  fill("capacity", s.locations.map((l) => el("tr", { "data-location": l.name },
    el("td", {}, l.name), cell("daily_capacity_units", l.daily_capacity_units),
    cell("allocated_today", l.allocated_today),
    cell("remaining_today", l.remaining_today, "n" + (l.remaining_today ? "" : " bad")))),
    "no location has a daily capacity", 4);
  fill("kits", s.kits.map((k) => el("tr", { "data-kit": k.sku },
    skuLinks([k.sku]), el("td", { "data-field": "components" }, k.components),
    el("td", { "data-field": "available_to_sell", class: "muted" },
      Object.entries(k.available_to_sell).map(([c, v]) => c + " " + v).join(", ") || "not read yet"))),
    "no kits", 3);
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
  out.replaceChildren(el("p", { class: "muted" }, "loading " + sku + "\u2026"));
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
    el("h3", { "data-testid": "sku-title" }, v.sku + (v.components ? " (kit of " + v.components + ")"
      : v.known ? "" : " (never seen: reads 0)")),
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
