// flashsale live dashboard: polls /dashboard/data every second and updates the page in place.
// Every figure sits in an element with data-field (and its raw value in data-value), so a test
// or a script can read exactly what ops see. The chart keeps the last MAX_POINTS polls.
//
// The admin token: on the storefront listener the data needs it. The page takes it from its URL
// fragment (/dashboard?campaign=ID#token=…, percent-encoded where a URL needs it; a fragment is
// never sent in a request), keeps it in sessionStorage (this tab only) and strips it from the
// address bar and the history, or asks for it with a form when it is absent or refused; it sends
// it as "Authorization: Bearer …" with every data request. On the ops listener none is needed.
"use strict";
(function () {
  const POLL_MS = 1000;
  const TOKEN_KEY = "flashsale.admin-token";
  const MAX_POINTS = 900; // 15 minutes at one point a second
  const COLORS = ["#3b6fd8", "#d64545", "#1f9d55", "#d98b00", "#8e44ad", "#16a2b8", "#7f8c8d", "#c0392b"];
  const campaign = new URLSearchParams(location.search).get("campaign");
  const dataUrl = "/dashboard/data" + (campaign ? "?campaign=" + encodeURIComponent(campaign) : "");
  const cards = new Map(); // campaign id -> {el, chart, data, products}
  const $ = (sel, root) => (root || document).querySelector(sel);
  const fmt = new Intl.NumberFormat("en-US");
  let memoryToken = null; // when sessionStorage is unavailable

  function storedToken() {
    try { return sessionStorage.getItem(TOKEN_KEY); } catch (e) { return memoryToken; }
  }

  function storeToken(token) {
    memoryToken = token;
    try {
      if (token === null) sessionStorage.removeItem(TOKEN_KEY); else sessionStorage.setItem(TOKEN_KEY, token);
    } catch (e) { /* memoryToken keeps it for this page */ }
  }

  function takeFragmentToken() {
    if (!location.hash.startsWith("#token=")) return;
    let token = location.hash.slice("#token=".length);
    try { token = decodeURIComponent(token); } catch (e) { /* not percent-encoded: take it as it is */ }
    if (token) storeToken(token);
    history.replaceState(history.state, "", location.pathname + location.search);
  }

  // Show the form: the data needs the admin token (none given, or the one given was refused).
  function askForToken(reason) {
    document.body.dataset.auth = reason;
    $("#token-why").textContent = reason === "refused" ? "That token was refused: enter the admin token."
      : "This dashboard needs the admin token.";
    $("#token-form").hidden = false;
    $("#token-input").focus();
    status("admin token needed", false);
  }

  function tokenSubmitted(event) {
    event.preventDefault();
    const input = $("#token-input");
    const token = input.value.trim();
    if (!token) return;
    storeToken(token);
    input.value = "";
    $("#token-form").hidden = true;
    document.body.dataset.auth = "sent";
    poll();
  }

  function setField(root, field, value, text) {
    for (const el of root.querySelectorAll('[data-field="' + field + '"]')) {
      el.dataset.value = value === null ? "" : String(value);
      el.textContent = text !== undefined ? text : value === null ? "—" : fmt.format(value);
    }
  }

  function until(iso, nowIso) {
    if (!iso) return "—";
    const s = Math.max(0, Math.round((Date.parse(iso) - Date.parse(nowIso)) / 1000));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    const rel = h ? h + "h " + m + "m" : m ? m + "m " + r + "s" : r + "s";
    return new Date(iso).toLocaleTimeString() + " (in " + rel + ")";
  }

  function makeChart(card, s) {
    const box = $(".chart", card.el);
    const series = [{}].concat(s.products.map((p, i) => ({
      label: p.title || p.product_id, stroke: COLORS[i % COLORS.length], width: 2,
      value: (u, v) => (v === null ? "—" : fmt.format(v)),
    })));
    const opts = {
      width: Math.max(box.clientWidth, 300), height: 240, series: series,
      axes: [{}, { label: "units sold", size: 70, values: (u, vals) => vals.map((v) => fmt.format(v)) }],
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max, 1) * 1.05] } },
    };
    card.chart = new uPlot(opts, card.data, box);
    new ResizeObserver(() => card.chart.setSize({ width: Math.max(box.clientWidth, 300), height: 240 })).observe(box);
  }

  function addCard(s) {
    const el = $("#campaign-card").content.firstElementChild.cloneNode(true);
    el.dataset.campaign = s.campaign_id;
    $(".title", el).textContent = s.title;
    $(".cid", el).textContent = s.campaign_id;
    $(".cid", el).href = "/dashboard?campaign=" + encodeURIComponent(s.campaign_id);
    const card = { el: el, chart: null, data: [[]].concat(s.products.map(() => [])) };
    const rows = $(".products tbody", el);
    for (const p of s.products) {
      const tr = document.createElement("tr");
      tr.dataset.product = p.product_id;
      tr.innerHTML = "<td></td><td data-field='sold_units'></td><td data-field='held_units'></td>" +
        "<td data-field='remaining_units'></td><td data-field='total_units'></td>";
      tr.firstChild.textContent = p.title || p.product_id;
      rows.appendChild(tr);
    }
    $("#campaigns").appendChild(el);
    cards.set(s.campaign_id, card);
    makeChart(card, s);
    return card;
  }

  function rejectionRows(card, rejections) {
    const body = $(".rejections tbody", card.el);
    for (const [code, n] of Object.entries(rejections)) {
      let tr = body.querySelector('[data-code="' + code + '"]');
      if (!tr) {
        tr = document.createElement("tr");
        tr.dataset.code = code;
        tr.innerHTML = "<td></td><td data-field='count'></td>";
        tr.firstChild.textContent = code;
        body.appendChild(tr);
      }
      setField(tr, "count", n);
      tr.lastChild.classList.toggle("nonzero", n > 0);
    }
  }

  function update(s) {
    const card = cards.get(s.campaign_id) || addCard(s);
    const el = card.el;
    const state = $(".state", el);
    state.className = "state " + s.state;
    setField(el, "state", s.state, s.state);
    $(".soldout", el).hidden = s.remaining_units > 0;
    for (const f of ["sold_units", "held_units", "remaining_units", "total_units", "buyers"]) setField(el, f, s[f]);
    setField(el, "units_per_second_1m", s.units_per_second_1m, s.units_per_second_1m.toFixed(2));
    setField(el, "projected_sellout_at", s.projected_sellout_at,
      s.remaining_units === 0 ? "sold out" : until(s.projected_sellout_at, s.as_of));
    setField(el, "sell_through", s.sell_through, (s.sell_through * 100).toFixed(2) + "%");
    $(".gauge .fill", el).style.strokeDasharray = Math.min(1000, s.sell_through * 1000) + " 1000";
    setField(el, "persisted_orders", s.ledger.persisted_orders);
    setField(el, "lag_orders", s.ledger.lag_orders);
    $('[data-field="lag_orders"]', el).classList.toggle("alert", s.ledger.lag_orders > 1000);
    setField(el, "undelivered_entries", s.writer.undelivered_entries);
    setField(el, "pending_entries", s.writer.pending_entries);
    const q = s.queue; // queue mode only: the waiting room
    $(".queue", el).hidden = !q;
    if (q) {
      setField(el, "queue_waiting", q.waiting);
      setField(el, "queue_admitted", q.admitted);
      const paused = q.admit_per_second === 0;
      setField(el, "queue_admit_per_second", q.admit_per_second, paused ? "paused" : fmt.format(q.admit_per_second));
      // admission paused while stock remains: people wait for units that are there
      $('[data-field="queue_admit_per_second"]', el).classList.toggle("alert", paused && s.remaining_units > 0);
    }
    for (const p of s.products) {
      const tr = el.querySelector('tr[data-product="' + CSS.escape(p.product_id) + '"]');
      for (const f of ["sold_units", "held_units", "remaining_units", "total_units"]) setField(tr, f, p[f]);
    }
    rejectionRows(card, s.rejections);
    const t = Date.parse(s.as_of) / 1000;
    const xs = card.data[0];
    if (!xs.length || t > xs[xs.length - 1]) {
      xs.push(t);
      s.products.forEach((p, i) => card.data[i + 1].push(p.sold_units));
      if (xs.length > MAX_POINTS) card.data.forEach((a) => a.shift());
      card.chart.setData(card.data);
      $(".chart", el).dataset.points = String(xs.length);
    }
  }

  function status(text, ok) {
    const el = $("#status");
    el.textContent = text;
    el.className = "status " + (ok ? "ok" : "bad");
  }

  async function poll() {
    let again = true;
    try {
      const token = storedToken();
      const headers = token ? { Authorization: "Bearer " + token } : {};
      const res = await fetch(dataUrl, { cache: "no-store", headers: headers });
      if (res.status === 401 || res.status === 403) {
        storeToken(null);
        again = false; // until the form gives a token
        askForToken(token ? "refused" : "needed");
        return;
      }
      const body = await res.json();
      if (!res.ok) throw new Error(body.error ? body.error.code + ": " + body.error.message : "HTTP " + res.status);
      $("#as-of").textContent = body.as_of || "—";
      for (const [id, n, bad] of [["#dead-letters", body.dead_letters, body.dead_letters > 0],
                                  ["#writers-alive", body.writers_alive, body.writers_alive === 0]]) {
        $(id).dataset.value = String(n);
        $(id).textContent = fmt.format(n);
        $(id).classList.toggle("alert", bad);
      }
      for (const s of body.campaigns) update(s);
      if (!body.campaigns.length && !$("#campaigns .empty")) {
        $("#campaigns").innerHTML = "<p class='empty'>no campaign loaded yet</p>";
      } else if (body.campaigns.length) {
        const empty = $("#campaigns .empty");
        if (empty) empty.remove();
      }
      status("live", true);
      document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
    } catch (err) {
      status("data unavailable: " + err.message, false);
    } finally {
      if (again) setTimeout(poll, POLL_MS);
    }
  }

  takeFragmentToken();
  $("#token-form").addEventListener("submit", tokenSubmitted);
  poll();
})();
