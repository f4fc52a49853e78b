// pvc dashboard: plain JavaScript, served by pvcapid (no framework, nothing from elsewhere).
// It signs in with an API key (kept in this tab's session storage, sent as X-Api-Key), follows
// GET /api/v1/events for live changes, and acts through the same API as the CLI.
"use strict";

const API = "/api/v1";
const KEY = "pvc.apiKey";
const ROLE = "pvc.role";

// -- state ----------------------------------------------------------------------------------------

const S = {
  nodes: new Map(), vms: new Map(), status: null, faults: [], faultsKey: "",
  live: "off", abort: null, tasks: [], page: null, flushFrom: new Map(), follower: 0, signingIn: false, loaded: false,
};

const key = () => sessionStorage.getItem(KEY);
const readOnly = () => sessionStorage.getItem(ROLE) === "read-only";

// -- small helpers --------------------------------------------------------------------------------

// Children as h() and fill() take them: nested arrays are flattened, null, undefined and false left out.
function kids(list) {
  return list.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false)
    .map((k) => (k instanceof Element ? k : String(k)));
}

function fill(el, ...children) {
  el.replaceChildren(...kids(children));
  return el;
}

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  el.append(...kids(children));
  return el;
}

const pill = (text, kind, title) => h("span", {class: "pill " + (kind || ""), title}, text);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const byName = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

function mib(value) {
  if (value === null || value === undefined) return "—";
  return value >= 1024 ? (value / 1024).toFixed(value >= 10240 ? 0 : 1) + " GiB" : value + " MiB";
}

function ago(ts) {
  if (!ts) return "—";
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

function bar(parts, extra) {
  const el = h("div", {class: "bar " + (extra || "")});
  for (const [cls, frac] of parts) {
    const seg = h("span", {class: cls});
    seg.style.width = Math.max(0, Math.min(1, frac || 0)) * 100 + "%";
    el.append(seg);
  }
  return el;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = {"X-Api-Key": key() || "", "Accept": "application/json"};
  const init = {method, headers, cache: "no-store"};
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(API + path, init);
  } catch (e) {
    throw new ApiError(0, "cannot reach the pvc API");
  }
  let data = null;
  try { data = await r.json(); } catch (e) { /* not JSON */ }
  if (r.status === 401 && key() && !S.signingIn) signOut("The API key was refused.");
  if (!r.ok) throw new ApiError(r.status, (data && data.message) || r.statusText || "request failed");
  return {status: r.status, data, role: r.headers.get("X-PVC-Role")};
}

const enc = encodeURIComponent;

// -- sign-in --------------------------------------------------------------------------------------

function signInPage(message) {
  const input = h("input", {id: "apikey", type: "password", autocomplete: "current-password", required: true,
                            autofocus: true});
  const error = h("p", {class: "error", id: "signin-error", role: "alert"}, message || "");
  const form = h("form", {class: "card signin", id: "signin"},
    h("h1", {}, "pvc"),
    h("p", {}, "Sign in with an API key of this cluster."),
    h("label", {for: "apikey"}, "API key"), input,
    h("button", {type: "submit", id: "signin-button"}, "Sign in"), error);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (S.signingIn) return;  // (a second submit while the first is checked)
    error.textContent = "";
    sessionStorage.setItem(KEY, input.value.trim());
    S.signingIn = true;
    try {
      const answer = await api("GET", "/cluster/status");
      sessionStorage.setItem(ROLE, answer.role || "full");
      S.status = answer.data;
      start();
    } catch (e) {
      sessionStorage.removeItem(KEY);
      error.textContent = e.status === 401 ? "Unknown API key: refused." : e.message;
    } finally {
      S.signingIn = false;
    }
  });
  document.getElementById("top").hidden = true;
  fill(document.getElementById("main"), form);
  input.focus();
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  sessionStorage.removeItem(ROLE);
  if (S.abort) S.abort.abort();
  S.nodes.clear(); S.vms.clear(); S.status = null; S.page = null; S.loaded = false;
  signInPage(message);
}

// -- the live feed --------------------------------------------------------------------------------

function setLive(state) {
  S.live = state;
  const el = document.getElementById("live");
  el.textContent = state;
  el.className = "pill " + (state === "live" ? "ok" : state === "offline" ? "bad" : "");
}

function applyEvent(kind, data) {
  if (kind === "snapshot") {
    S.nodes = new Map(data.nodes.map((n) => [n.name, n]));
    S.vms = new Map(data.vms.map((v) => [v.name, v]));
    S.status = data.status;
    S.loaded = true;
  } else if (kind === "delta") {
    for (const n of data.nodes) S.nodes.set(n.name, n);
    for (const v of data.vms) S.vms.set(v.name, v);
    for (const n of data.gone.nodes) S.nodes.delete(n);
    for (const v of data.gone.vms) S.vms.delete(v);
    if (data.status) S.status = data.status;
  } else {
    return;
  }
  schedule();
}

async function follow() {
  const me = ++S.follower;  // a later sign-in starts its own; this one then ends
  let pause = 1000;
  while (key() && me === S.follower) {
    const ctrl = new AbortController();
    S.abort = ctrl;
    let watchdog = null;
    const heard = () => {  // the server writes at least every 15 s: 35 s of nothing is a dead connection
      clearTimeout(watchdog);
      watchdog = setTimeout(() => { ctrl.silent = true; ctrl.abort(); }, 35000);
    };
    try {
      heard();
      const r = await fetch(API + "/events", {headers: {"X-Api-Key": key(), "Accept": "text/event-stream"},
                                              cache: "no-store", signal: ctrl.signal});
      if (r.status === 401) { signOut("The API key was refused."); return; }
      if (!r.ok) throw new Error("event stream: " + r.status);
      setLive("live");
      pause = 1000;
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        heard();
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let kind = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) kind = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
          }
          if (data.length) applyEvent(kind, JSON.parse(data.join("\n")));
        }
      }
    } catch (e) {
      if (!key() || me !== S.follower || (ctrl.signal.aborted && !ctrl.silent)) return;  // signed out, or replaced
    } finally {
      clearTimeout(watchdog);
    }
    // The stream ended (it does now and then), went silent or could not start: catch up from the listings, then
    // follow again.
    setLive("reconnecting");
    try {
      await refresh();
    } catch (e) {
      setLive("offline");
    }
    await sleep(pause);
    pause = Math.min(pause * 2, 10000);
  }
}

async function refresh() {
  const [status, nodes, vms] = await Promise.all([api("GET", "/cluster/status"), api("GET", "/node"),
                                                  api("GET", "/vm")]);
  S.status = status.data;
  S.nodes = new Map(nodes.data.map((n) => [n.name, n]));
  S.vms = new Map(vms.data.map((v) => [v.name, v]));
  S.loaded = true;
  schedule();
}

// -- rendering ------------------------------------------------------------------------------------

let pending = false;
function schedule() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    if (S.page && key()) S.page.update();
    renderTasks();
  });
}

function route() {
  if (!key()) { signInPage(); return; }
  const hash = location.hash.replace(/^#/, "") || "/";
  let page;
  const m = hash.match(/^\/vm\/(.+)$/);
  let vm = null;
  try {
    vm = m ? decodeURIComponent(m[1]) : null;
  } catch (e) {
    vm = m[1];  // not percent-encoded as it should be: taken as written (it names no VM, the page says so)
  }
  if (vm !== null) page = vmPage(vm);
  else if (hash === "/vms") page = vmsPage();
  else page = overviewPage();
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("active", a.dataset.nav === page.nav);
  }
  S.page = page;
  fill(document.getElementById("main"), page.root);
  document.title = page.title + " · pvc";
  page.update();
}

// A keyed list: an element is rebuilt only when what it shows changed.
function keyed(container, items, keyOf, build) {
  const old = container._keyed || new Map();
  const fresh = new Map();
  const els = [];
  for (const item of items) {
    const [id, sig] = keyOf(item);
    let entry = old.get(id);
    if (!entry || entry.sig !== sig) entry = {sig, el: build(item)};
    fresh.set(id, entry);
    els.push(entry.el);
  }
  container._keyed = fresh;
  const same = els.length === container.children.length && els.every((el, i) => container.children[i] === el);
  if (!same) fill(container, ...els);
}

// -- overview -------------------------------------------------------------------------------------

function overviewPage() {
  const summary = h("div", {class: "summary", id: "summary"});
  const messages = h("ul", {class: "messages", id: "messages"});
  const faults = h("div", {id: "faults"});
  const tiles = h("div", {class: "tiles", id: "tiles"});
  const root = h("div", {}, h("h1", {}, "Cluster"), summary, messages, h("h2", {}, "Nodes"), tiles,
                 h("h2", {}, "Faults"), faults);
  return {
    nav: "overview", title: "Overview", root,
    update() {
      const st = S.status;
      if (!st) { fill(summary, h("p", {}, "Loading…")); return; }
      const f = st.faults;
      const card = (label, value, kind, id) => h("div", {class: "card", "data-summary": id},
        h("div", {class: "label"}, label), h("div", {class: "value"}, value ? pill(value, kind) : "—"));
      fill(summary,
        card("Health", st.healthy ? "healthy" : `${st.problems.length} problem(s)`, st.healthy ? "ok" : "bad", "health"),
        card("Primary", st.primary, "info", "primary"),
        card("Maintenance", st.maintenance ? "on" : "off", st.maintenance ? "warn" : "ok", "maintenance"),
        card("Faults", f ? `${f.active} active, ${f.unacknowledged} new` : "unknown",
             f && f.unacknowledged ? "bad" : f && f.active ? "warn" : "ok", "faults"),
        card("Nodes", `${st.nodes.total}`, "info", "nodes"),
        card("VMs", `${st.vms.total}` + (st.vms.migrating ? `, ${st.vms.migrating} migrating` : ""), "info", "vms"),
        card("N+1", st.n_plus_one.ok === null ? "checking" : st.n_plus_one.ok ? "ok" : "at risk",
             st.n_plus_one.ok === false ? "warn" : "ok", "n-plus-one"));
      fill(messages, ...st.problems.map((p) => h("li", {class: "bad"}, p)),
                               ...st.warnings.map((w) => h("li", {class: "warn"}, w)));
      const nodes = [...S.nodes.values()].sort((a, b) => byName(a.name, b.name));
      const fencing = st.fencing || {};
      for (const n of nodes) flushCount(n);
      keyed(tiles, nodes,
            (n) => [n.name, JSON.stringify([n, fencing[n.name] || null, st.primary, readOnly(),
                                            flushCount(n)])],
            (n) => nodeTile(n, fencing[n.name], st.primary));
      const fkey = f ? `${f.active}/${f.unacknowledged}` : "";
      if (fkey !== S.faultsKey) {
        S.faultsKey = fkey;
        api("GET", "/cluster/faults").then((a) => { S.faults = a.data; schedule(); }, () => { S.faults = null; });
      }
      fill(faults, faultTable(S.faults));
    },
  };
}

function nodeTile(n, fence, primary) {
  const total = n.memory_total_mib || 0;
  const scale = Math.max(total, n.memory_provisioned_mib || 0, 1);
  const over = n.memory_provisioned_mib > total;
  const daemonKind = n.daemon_state === "run" ? "ok" : ["dead", "fenced"].includes(n.daemon_state) ? "bad" : "warn";
  const domainKind = n.domain_state === "ready" ? "ok" : "warn";
  const fenceState = fence && fence.state ? fence.state : "ok";
  const fenceKind = fenceState === "ok" ? "ok" : fenceState === "fenced" ? "warn" : "bad";
  const role = n.name === primary ? pill("primary", "info") :
    n.coordinator_state && n.coordinator_state !== "client" ? pill(n.coordinator_state) : null;
  const tile = h("section", {class: "card tile", "data-node": n.name},
    h("h3", {}, n.name, role),
    h("div", {class: "states"},
      pill("daemon " + n.daemon_state, daemonKind),
      h("span", {"data-field": "domain-state", "data-value": n.domain_state},
        pill("domain " + n.domain_state, domainKind)),
      pill("fence " + fenceState, fenceKind, fence ? fence.message : "no fencing")),
    bar([["prov", (n.memory_provisioned_mib || 0) / scale], ["used", (n.memory_used_mib || 0) / scale]],
        over ? "over" : ""),
    h("div", {class: "bar-legend"},
      h("span", {}, "used " + mib(n.memory_used_mib)), h("span", {}, "provisioned " + mib(n.memory_provisioned_mib)),
      h("span", {}, "total " + mib(total))),
    h("div", {class: "figures"},
      h("div", {}, h("span", {class: "label"}, "vCPUs"), h("b", {}, `${n.vcpus_allocated}/${n.cpu_count}`)),
      h("div", {}, h("span", {class: "label"}, "load"), h("b", {}, (n.load_1m || 0).toFixed(2))),
      h("div", {}, h("span", {class: "label"}, "VMs"),
        h("b", {"data-field": "vm-count", "data-value": n.vm_count}, n.vm_count))));
  const from = flushCount(n);
  if (n.domain_state === "flushing" && from) {
    tile.append(bar([["progress", (from - n.vm_count) / from]]),
                h("div", {class: "bar-legend"}, h("span", {}, `flushing: ${n.vm_count} of ${from} VMs left`)));
  }
  if (n.running_vms && n.running_vms.length) {
    tile.append(h("div", {class: "vmlist"}, "running: ",
                  n.running_vms.map((v, i) => [i ? ", " : "", h("a", {href: "#/vm/" + enc(v)}, v)])));
  }
  if (!readOnly()) {
    tile.append(h("div", {class: "actions"},
      h("button", {type: "button", "data-action": "flush", disabled: n.domain_state !== "ready",
                   onclick: () => nodeAction(n.name, "flush")}, "Flush"),
      h("button", {type: "button", class: "quiet", "data-action": "ready",
                   disabled: n.domain_state === "ready" || n.domain_state === "flushing",
                   onclick: () => nodeAction(n.name, "ready")}, "Ready")));
  }
  return tile;
}

// How many VMs a flushing node had when its flush began (as far as this page saw), or 0.
function flushCount(n) {
  const seen = S.flushFrom.get(n.name);
  if (n.domain_state === "flushing") {
    const from = Math.max(seen ? seen.from : 0, n.vm_count);
    S.flushFrom.set(n.name, {from, at: seen ? seen.at : Date.now()});
    return from;
  }
  if (seen && n.domain_state !== "flushed" && Date.now() - seen.at > 5000) S.flushFrom.delete(n.name);
  return 0;
}

function faultTable(faults) {
  if (faults === null) return h("p", {class: "count"}, "Faults are kept in ZooKeeper: not readable now.");
  const active = faults.filter((f) => f.active);
  if (!active.length) return h("p", {class: "count"}, "No active faults.");
  return h("div", {class: "scroll"}, h("table", {},
    h("thead", {}, h("tr", {}, ["kind", "subject", "message", "last seen", "count", "acknowledged"].map(
      (c) => h("th", {}, c)))),
    h("tbody", {}, active.map((f) => h("tr", {"data-fault": f.id},
      h("td", {}, pill(f.kind, f.acknowledged ? "warn" : "bad")), h("td", {}, f.subject),
      h("td", {class: "tags"}, f.message), h("td", {}, ago(f.last_seen)), h("td", {}, f.count),
      h("td", {}, f.acknowledged ? "yes" : "no"))))));
}

// -- VMs ------------------------------------------------------------------------------------------

const COLUMNS = [
  ["name", "name", (v) => v.name],
  ["state", "state", (v) => v.state],
  ["node", "node", (v) => v.node],
  ["home", "home node", (v) => v.last_node || ""],
  ["limit", "limit", (v) => v.meta.node_limit.join(",")],
  ["selector", "selector", (v) => v.meta.node_selector],
  ["autostart", "autostart", (v) => (v.meta.node_autostart ? "yes" : "no")],
  ["tags", "tags", (v) => [...v.meta.protected_tags, ...v.meta.tags].join(" ")],
  ["migration", "migration", (v) => migrationText(v)],
];

function migrationText(v) {
  const m = v.migration;
  if (!m) return "";
  return `${m.kind} ${m.source} → ${m.target}: ${m.phase}${m.method ? " (" + m.method + ")" : ""}`;
}

function stateKind(v) {
  if (v.state === "fail") return "bad";
  if (v.state === "start") return v.running ? "ok" : "warn";
  if (v.state === "stop" || v.state === "disable") return "";
  return "warn";
}

function vmsPage() {
  const sort = {col: "name", desc: false};
  const search = h("input", {type: "search", id: "vm-filter", placeholder: "Filter: name, node, tag, selector…",
                             "aria-label": "Filter VMs"});
  const stateSel = h("select", {id: "vm-state", "aria-label": "State"}, h("option", {value: ""}, "any state"));
  const count = h("span", {class: "count", id: "vm-count"});
  const head = h("tr", {});
  const body = h("tbody", {id: "vm-rows"});
  const page = {
    nav: "vms", title: "VMs",
    root: h("div", {}, h("h1", {}, "VMs"), h("div", {class: "toolbar"}, search, stateSel, count),
            h("div", {class: "scroll"}, h("table", {id: "vm-table"}, h("thead", {}, head), body))),
    update() {
      const states = [...new Set([...S.vms.values()].map((v) => v.state))].sort();
      const have = [...stateSel.options].slice(1).map((o) => o.value);
      if (have.join() !== states.join()) {
        const chosen = stateSel.value;
        fill(stateSel, h("option", {value: ""}, "any state"),
                                 ...states.map((s) => h("option", {value: s}, s)));
        stateSel.value = states.includes(chosen) ? chosen : "";
      }
      fill(head, ...COLUMNS.map(([id, label]) => h("th", {
        class: "sortable" + (sort.col === id ? " sorted" + (sort.desc ? " desc" : "") : ""), "data-sort": id,
        onclick: () => { sort.desc = sort.col === id ? !sort.desc : false; sort.col = id; page.update(); },
      }, label)));
      const words = search.value.trim().toLowerCase().split(/\s+/).filter(Boolean);
      const getter = COLUMNS.find((c) => c[0] === sort.col)[2];
      const rows = [...S.vms.values()].filter((v) => {
        if (stateSel.value && v.state !== stateSel.value) return false;
        const text = COLUMNS.map((c) => c[2](v)).join(" ").toLowerCase();
        return words.every((w) => text.includes(w));
      }).sort((a, b) => byName(getter(a), getter(b)) || byName(a.name, b.name));
      if (sort.desc) rows.reverse();
      count.textContent = `${rows.length} of ${S.vms.size}`;
      keyed(body, rows, (v) => [v.name, JSON.stringify(v)], vmRow);
    },
  };
  search.addEventListener("input", () => page.update());
  stateSel.addEventListener("change", () => page.update());
  return page;
}

function vmRow(v) {
  const cell = (col, ...kids) => h("td", {"data-col": col}, ...kids);
  return h("tr", {"data-vm": v.name},
    cell("name", h("a", {href: "#/vm/" + enc(v.name)}, v.name)),
    cell("state", pill(v.state, stateKind(v), v.reason || null)),
    cell("node", v.node || "—"),
    cell("home", v.last_node || "—"),
    cell("limit", v.meta.node_limit.join(", ") || "any"),
    cell("selector", v.meta.node_selector),
    cell("autostart", v.meta.node_autostart ? "yes" : "no"),
    h("td", {"data-col": "tags", class: "tags"},
      v.meta.protected_tags.map((t) => h("span", {class: "tag protected", title: "protected"}, t)),
      v.meta.tags.map((t) => h("span", {class: "tag"}, t))),
    cell("migration", v.migration ? pill(migrationText(v), "info") : ""));
}

// -- one VM ---------------------------------------------------------------------------------------

function vmPage(name) {
  const title = h("h1", {}, name);
  const actions = h("div", {class: "actions-row", id: "vm-actions"});
  const meta = h("dl", {class: "kv", id: "vm-meta"});
  const place = h("div", {class: "placement", id: "placement"}, h("p", {class: "count"}, "Asking the selector…"));
  const placeHead = h("p", {class: "count", id: "placement-head"});
  const devices = h("div", {id: "vm-devices"});
  const xml = h("pre", {class: "xml", id: "vm-xml"}, "…");
  const page = {
    nav: "vms", title: name, target: null, placement: null, asked: 0, asking: false, xmlFor: null,
    root: h("div", {}, title, actions,
            h("div", {class: "columns"},
              h("section", {class: "card"}, h("h2", {}, "Metadata"), meta, devices),
              h("section", {class: "card"}, h("h2", {}, "Placement"), placeHead, place)),
            h("h2", {}, "Domain XML"), xml),
    update() {
      const v = S.vms.get(name);
      if (!v) {
        if (S.loaded) fill(title, name, " ", pill("not found", "bad"));
        return;
      }
      fill(title, name, " ", pill(v.state, stateKind(v), v.reason || null),
                            v.migration ? [" ", pill(migrationText(v), "info")] : null);
      const m = v.meta;
      const row = (k, val) => [h("dt", {}, k), h("dd", {"data-meta": k}, val === "" ? "—" : val)];
      fill(meta,
        row("uuid", v.uuid), row("node", v.node || "—"), row("home node", v.last_node || "—"),
        row("running", v.running ? "yes" : "no"), row("memory", mib(v.memory_mib)), row("vCPUs", v.vcpus),
        row("reason", v.reason || ""), row("node limit", m.node_limit.join(", ") || "any"),
        row("selector", m.node_selector), row("autostart", m.node_autostart ? "yes" : "no"),
        row("migration method", m.migration_method),
        row("max downtime", m.migration_max_downtime ? m.migration_max_downtime + " ms" : "default"),
        row("tags", m.tags.join(", ")), row("protected tags", m.protected_tags.join(", ")));
      vmActions(actions, v, page);
      const now = Date.now();
      const sig = JSON.stringify([v, [...S.nodes.values()]]);
      if (sig !== page.placedFor && !page.asking && now - page.asked > 1000) {
        page.asking = true;
        page.asked = now;
        const askedFor = sig;
        api("GET", `/vm/${enc(name)}/placement`).then((a) => {
          page.placement = a.data;
          page.placedFor = askedFor;
        }, (e) => {
          page.placement = {error: e.message};
          page.placedFor = askedFor;
        }).finally(() => { page.asking = false; drawPlacement(page, place, placeHead, v); vmActions(actions, v, page); });
      } else if (sig !== page.placedFor && !page.asking && !page.later) {
        page.later = setTimeout(() => { page.later = null; schedule(); }, 1000);  // asked under a second ago
      }
      drawPlacement(page, place, placeHead, v);
      if (page.xmlFor !== v.uuid + v.state) {
        page.xmlFor = v.uuid + v.state;
        api("GET", `/vm/${enc(name)}`).then((a) => {
          xml.textContent = a.data.xml;
          const d = a.data.devices || {disks: [], networks: []};
          fill(devices, h("h2", {}, "Devices"), !d.disks.length && !d.networks.length ? h("p", {class: "count"},
            "No disks or networks in its XML.") : null, h("dl", {class: "kv"},
            d.disks.map((x) => [h("dt", {}, "disk " + (x.target || "")), h("dd", {}, x.source || x.type || "—")]),
            d.networks.map((x) => [h("dt", {}, "network"),
                                   h("dd", {}, [x.type, x.source, x.mac].filter(Boolean).join(" · "))])));
        }, (e) => { xml.textContent = e.message; });
      }
    },
  };
  return page;
}

function drawPlacement(page, place, head, v) {
  const p = page.placement;
  if (!p) return;
  if (p.error) { fill(place, h("p", {class: "count"}, p.error)); return; }
  fill(head, `selector ${p.selector}: `,
    p.target ? ["would choose ", h("b", {}, p.target), " (the highest score; click a node to choose another)"]
      : (p.note || "no node can host it now"));
  // Higher scores win; a bar spans from the lowest eligible score (a tenth) to the highest (all of it).
  const scores = p.nodes.filter((n) => n.score !== undefined).map((n) => n.score);
  const low = Math.min(...scores);
  const span = Math.max(...scores) - low;
  const length = (s) => (span > 0 ? 0.1 + 0.9 * (s - low) / span : 1);
  if (page.target && !p.nodes.some((n) => n.node === page.target && n.score !== undefined)) page.target = null;
  const chosen = page.target || p.target;
  fill(place, ...p.nodes.map((n) => {
    const eligible = n.score !== undefined;
    const row = h("div", {
      class: "row " + (eligible ? "eligible" : "excluded") + (eligible && n.node === chosen ? " selected" : ""),
      "data-target-node": n.node, "data-eligible": eligible ? "yes" : "no",
      role: eligible ? "button" : null, tabindex: eligible ? 0 : null,
      title: eligible ? "Choose this node as the target" : n.excluded,
      onclick: eligible ? () => { page.target = n.node; drawPlacement(page, place, head, v);
                                  vmActions(document.getElementById("vm-actions"), v, page); } : null,
    }, h("b", {}, n.node),
       eligible ? bar([["score", length(n.score)]]) : h("span", {class: "why"}, "excluded: " + n.excluded),
       h("span", {class: "num"}, eligible ? (n.node === p.target ? "★ " : "") + fmtScore(n.score) : ""));
    return row;
  }));
}

function fmtScore(s) {
  return Math.abs(s) >= 100 ? Math.round(s).toLocaleString("en") : (Math.round(s * 100) / 100).toString();
}

function vmActions(el, v, page) {
  if (readOnly()) { fill(el); return; }
  const p = page.placement;
  const target = page.target || (p && p.target) || null;
  const moving = !!v.migration;
  const b = (action, label, enabled, run, cls) => h("button", {type: "button", "data-action": action,
    class: cls || null, disabled: !enabled, onclick: run}, label);
  fill(el,
    b("start", "Start", v.state !== "start" || !v.running, () => vmState(v.name, "start")),
    b("shutdown", "Shut down", v.state === "start", () => vmState(v.name, "shutdown"), "quiet"),
    b("stop", "Stop", v.state !== "stop", () => vmState(v.name, "stop"), "danger"),
    b("restart", "Restart", v.state === "start", () => vmState(v.name, "restart"), "quiet"),
    h("span", {class: "spacer"}),
    b("migrate", target ? `Migrate to ${target}` : "Migrate", !!target && !moving,
      () => vmMove(v.name, "migrate", target)),
    b("move", target ? `Move to ${target}` : "Move", !!target && !moving, () => vmMove(v.name, "move", target),
      "quiet"),
    b("unmigrate", v.last_node ? `Unmigrate to ${v.last_node}` : "Unmigrate", !!v.last_node && !moving,
      () => vmMove(v.name, "unmigrate", null), "quiet"));
}

// -- actions and their progress -------------------------------------------------------------------

function confirmDialog(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    const ok = document.getElementById("confirm-ok");
    const cancel = document.getElementById("confirm-cancel");
    const done = (answer) => {
      ok.onclick = cancel.onclick = dialog.oncancel = null;
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    ok.onclick = () => done(true);
    cancel.onclick = () => done(false);
    dialog.oncancel = () => done(false);
    dialog.showModal();
    cancel.focus();
  });
}

// An action: asked for confirmation, sent, then followed by progress(task) in the live data until it says done
// or failed. progress() is asked only once the API accepted the request.
async function run(question, label, call, progress, seen) {
  if (!(await confirmDialog(question))) return;
  const task = {label, text: "sending", frac: null, state: "running", progress, sent: false,
                started: Date.now(), seen: seen || {}};
  S.tasks.push(task);
  renderTasks();
  try {
    await call();
    task.sent = true;
    task.started = Date.now();
  } catch (e) {
    task.state = "failed";
    task.text = e.message;
  }
  schedule();
}

function renderTasks() {
  const box = document.getElementById("tasks");
  const now = Date.now();
  for (const t of S.tasks) {
    if (t.state === "running" && t.sent) {
      const p = t.progress(t);
      t.text = p.text;
      t.frac = p.frac === undefined ? null : p.frac;
      if (p.done) { t.state = "done"; t.ended = now; }
      if (p.failed) { t.state = "failed"; t.ended = now; }
    } else if (!t.ended) {
      t.ended = now;
    }
  }
  S.tasks = S.tasks.filter((t) => t.state === "running" || now - t.ended < 8000);
  if (S.tasks.some((t) => t.state !== "running") && !S.taskTimer) {  // finished ones go 8 s after they end
    S.taskTimer = setTimeout(() => { S.taskTimer = null; renderTasks(); }, 8100);
  }
  fill(box, ...S.tasks.map((t) => h("div", {class: "task " + t.state, "data-task": t.label},
    h("div", {}, h("b", {}, t.label), ": ", t.text),
    t.frac !== null && t.state === "running" ? bar([["progress", t.frac]]) : null)));
}

function vmState(name, state) {
  const verbs = {start: "Start", shutdown: "Shut down", stop: "Stop (power off)", restart: "Restart"};
  run(`${verbs[state]} VM ${name}?`, `${state} ${name}`,
      () => api("POST", `/vm/${enc(name)}/state`, {state}),
      (t) => {
        const v = S.vms.get(name);
        if (!v) return {text: "the VM is gone", failed: true};
        if (JSON.stringify(v) === t.seen.before) return {text: "requested"};  // the change is not seen yet
        if (v.state === "fail") return {text: "failed: " + v.reason, failed: true};
        if (v.state !== "start" || !v.running) t.seen.away = true;
        const resting = state === "start" || state === "restart" ? v.state === "start" && v.running : v.state === "stop";
        const done = resting && (state !== "restart" || t.seen.away || Date.now() - t.started > 5000);
        return {text: done ? "done" : `state ${v.state}${v.running ? ", running" : ""}`, done};
      }, {before: JSON.stringify(S.vms.get(name))});
}

function vmMove(name, action, target) {
  const where = target ? ` to ${target}` : "";
  run(`${action[0].toUpperCase() + action.slice(1)} VM ${name}${where}?`, `${action} ${name}${where}`,
      () => api("POST", `/vm/${enc(name)}/node`, target ? {action, target} : {action}),
      (t) => {
        const v = S.vms.get(name);
        if (!v) return {text: "the VM is gone", failed: true};
        const goal = target || t.seen.goal || t.seen.home;
        if (v.migration) {
          t.seen.migration = true;
          t.seen.goal = v.migration.target;
          return {text: `${v.migration.phase}${v.migration.method ? " (" + v.migration.method + ")" : ""}`};
        }
        if (goal && v.node === goal && v.state !== "fail") return {text: `done: on ${goal}`, done: true};
        if (t.seen.migration) return {text: `ended on ${v.node}: ${v.reason || "not moved"}`, failed: true};
        if (Date.now() - t.started > 120000) return {text: "no migration seen in 2 minutes", failed: true};
        return {text: "requested"};
      }, {home: (S.vms.get(name) || {}).last_node || null});
}

function nodeAction(name, state) {
  const question = state === "flush" ? `Flush node ${name}? Its VMs are migrated to other nodes.`
    : `Make node ${name} ready? VMs that were flushed from it come back.`;
  run(question, `${state} ${name}`,
      () => {
        if (state === "flush") S.flushFrom.set(name, {from: (S.nodes.get(name) || {}).vm_count || 0, at: Date.now()});
        return api("POST", `/node/${enc(name)}/domain-state`, {state});
      },
      () => {
        const n = S.nodes.get(name);
        if (!n) return {text: "the node is gone", failed: true};
        const want = state === "flush" ? "flushed" : "ready";
        if (n.domain_state === want) return {text: "done", done: true};
        if (state === "flush") {
          const from = flushCount(n);
          return {text: `${n.domain_state}: ${n.vm_count} of ${from} VMs left`,
                  frac: from ? (from - n.vm_count) / from : 0};
        }
        return {text: n.domain_state};
      });
}

// -- start ----------------------------------------------------------------------------------------

function start() {
  document.getElementById("top").hidden = false;
  const role = document.getElementById("role");
  role.textContent = readOnly() ? "read-only" : "";
  role.hidden = !readOnly();
  route();
  follow();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("signout").addEventListener("click", () => signOut("Signed out."));
  window.addEventListener("hashchange", route);
  if (key()) start();
  else signInPage();
});
