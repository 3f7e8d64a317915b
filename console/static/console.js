// The console page: polls /api/state every second and redraws every section from it.
// Everything is built with DOM calls and textContent (never innerHTML), so nothing a daemon
// reports can inject markup. POSTs carry the session's CSRF token; the session cookie is
// HttpOnly, so this script never sees it, and no password ever comes back from the server.
"use strict";

const POLL_MS = 1000;
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
let csrf = "";
let loggedIn = [];
const openJobs = new Set();  // jobs whose run history table is shown

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
  }
  return node;
}

function fill(id, ...children) {
  const target = document.getElementById(id);
  target.replaceChildren(...children.filter((c) => c !== null && c !== undefined));
}

function table(headers, rows) {
  const head = el("tr", {}, ...headers.map((h) => el("th", { text: h })));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows));
}

function fmtTime(ms) {
  if (typeof ms !== "number" || ms < 0) return "–";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function isError(value) {
  return value && typeof value === "object" && !Array.isArray(value) &&
    Object.keys(value).length === 1 && "error" in value;
}

function fmtBytes(n) {
  if (typeof n !== "number") return n;
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// Any reply as a table: a list of maps is one row per map, a map is one row per key, a list
// of lists one row per list (under `headers` when given).
function render(value, headers) {
  if (isError(value)) return el("p", { class: "error", text: "error: " + value.error });
  if (Array.isArray(value)) {
    if (value.length === 0) return el("p", { class: "muted", text: "none" });
    if (value.every((v) => v && typeof v === "object" && !Array.isArray(v))) {
      const keys = [...new Set(value.flatMap((v) => Object.keys(v)))];
      return table(keys, value.map((v) => el("tr", {}, ...keys.map((k) => cell(v[k])))));
    }
    if (value.every((v) => Array.isArray(v))) {
      return table(headers || [], value.map((v) => el("tr", {}, ...v.map((x) => cell(x)))));
    }
    return el("span", { text: value.map(String).join(", ") });
  }
  if (value && typeof value === "object") {
    return table(["field", "value"], Object.entries(value).map(
      ([k, v]) => el("tr", {}, el("th", { text: k }), cell(v))));
  }
  return el("span", { text: value === null || value === undefined ? "–" : String(value) });
}

function cell(value) {
  const td = el("td");
  td.append(value && typeof value === "object" ? render(value) :
    document.createTextNode(value === null || value === undefined ? "–" : String(value)));
  return td;
}

// -- Raft groups ------------------------------------------------------------------------

function raftRows(daemon, nodes) {
  const groups = new Map();
  for (const node of nodes) {
    const views = !node.up ? [] : Array.isArray(node.cluster) ? node.cluster :
      node.cluster && !isError(node.cluster) ? [node.cluster] : [];
    if (!node.up || isError(node.cluster)) {  // down, or up but refusing (NOAUTH, ...)
      const key = daemon;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push({ address: node.address, up: node.up,
        error: node.up ? node.cluster.error : node.error });
    }
    for (const view of views) {
      const key = view.group !== undefined ? `${daemon} group ${view.group}` : daemon;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push({ address: node.address, up: true, ...view });
    }
  }
  return groups;
}

function raftSection(data) {
  const out = [];
  for (const daemon of ["scheduler", "shardstore", "dfs"]) {
    const part = data[daemon];
    if (!part) continue;
    for (const [name, members] of raftRows(daemon, part.nodes)) {
      const leaders = members.filter((m) => m.up && m.role === "leader");
      const leader = leaders.length ? (leaders[0].id ?? leaders[0].leader) : "none";
      const title = daemon === "shardstore" && name.endsWith(" group 0") ?
        `${name} (configuration)` : name;
      out.push(el("h3", {}, `${title}: leader node `,
        el("span", { id: `leader-${name.replace(/ /g, "-")}`, text: String(leader) })));
      out.push(table(["node", "state", "id", "role", "leader", "term", "commit", "members"],
        members.map((m) => el("tr", {
          class: `${m.up ? "up" : "down"} ${m.role === "leader" ? "leader" : ""}`,
          "data-group": name, "data-node": m.address,
        }, cell(m.address), el("td", { class: "state", text: m.up ? "up" : "DOWN" }),
        cell(m.id), el("td", { class: "role", text: m.error || m.role || "–" }),
        cell(m.leader), cell(m.term), cell(m.commit_index),
        cell(Array.isArray(m.members) ? m.members.join(",") : m.members)))));
    }
  }
  fill("raft-body", ...(out.length ? out : [el("p", { class: "muted", text: "no Raft daemon watched" })]));
}

// -- scheduler --------------------------------------------------------------------------

function jobRow(job, canAct) {
  const runs = el("span", { class: "runs" }, ...(job.history || []).map((r) =>
    el("span", { class: r.state, title: `${r.run_id}: ${r.state} ${r.message || ""}` })));
  const last = (job.history || [])[0];
  const actions = el("td", { class: "actions" });
  if (canAct) {
    const verb = job.paused ? "resume" : "pause";
    for (const action of [verb, "run"]) {
      actions.append(el("button", { type: "button", "data-action": action, "data-job": job.name,
        text: action === "run" ? "Run now" : action[0].toUpperCase() + action.slice(1) }));
    }
  } else {
    actions.append(el("span", { class: "muted", text: "log in to act" }));
  }
  actions.prepend(el("button", { type: "button", "data-history": job.name,
    text: openJobs.has(job.name) ? "Hide runs" : "Runs" }));
  return el("tr", { "data-job": job.name }, cell(job.name), cell(job.schedule), cell(job.status),
    el("td", { class: `paused paused-${job.paused ? "yes" : "no"}`, text: job.paused ? "yes" : "no" }),
    el("td", { class: "next", text: fmtTime(job.next_ms) }),
    el("td", {}, runs, last ? ` last: ${last.state} (slot ${fmtTime(last.slot_ms)})` : ""),
    actions);
}

function historyRow(job) {
  const runs = (job.history || []).map((r) => el("tr", { class: `run ${r.state}` },
    cell(r.run_id), cell(r.state), cell(r.attempt), cell(r.worker || "–"),
    cell(fmtTime(r.slot_ms)), cell(fmtTime(r.started_ms)), cell(fmtTime(r.finished_ms)),
    cell(r.started_ms >= 0 ? r.started_ms - r.slot_ms : "–"),
    cell(r.exit_code >= 0 ? r.exit_code : "–"), cell(r.message || "")));
  const inner = runs.length ? table(["run", "state", "attempt", "worker", "slot", "started",
    "finished", "late (ms)", "exit", "message"], runs) :
    el("p", { class: "muted", text: "no runs yet" });
  return el("tr", { class: "history", "data-history-of": job.name },
    el("td", { colspan: "7" }, inner));
}

function schedulerSection(part) {
  if (!part) { fill("scheduler-body", el("p", { class: "muted", text: "not watched" })); return; }
  if (!Array.isArray(part.jobs)) { fill("scheduler-body", render(part.jobs)); return; }
  const canAct = loggedIn.includes("scheduler");
  fill("scheduler-body",
    el("p", { class: "muted", text: `from ${part.source || "no node"}; ${part.job_count} jobs` +
      (part.job_count > part.jobs.length ? ` (the first ${part.jobs.length} by name shown)` : "") }),
    table(["job", "schedule", "status", "paused", "next fire", "run history (newest first)", ""],
      part.jobs.flatMap((job) => openJobs.has(job.name) ?
        [jobRow(job, canAct), historyRow(job)] : [jobRow(job, canAct)])));
}

async function jobAction(button) {
  const message = document.getElementById("action-message");
  const reply = await post("/api/job", { action: button.dataset.action, name: button.dataset.job });
  message.className = reply.ok ? "" : "error";
  message.textContent = reply.ok ? `${button.dataset.action} ${button.dataset.job}: done` +
    (reply.run_id ? ` (run ${reply.run_id})` : "") : reply.error;
  refresh();
}

// -- other daemons ----------------------------------------------------------------------

function shardstoreSection(part) {
  if (!part) { fill("shardstore-body", el("p", { class: "muted", text: "not watched" })); return; }
  fill("shardstore-body",
    el("h3", { text: "keyspaces" }), render(part.keyspaces),
    el("h3", { text: "tables" }), render(part.tables),
    el("h3", { text: "slot map" }), render(part.slots, ["first slot", "last slot", "shard"]),
    el("h3", { text: "moves in progress" }), render(part.moves));
}

function dfsSection(part) {
  if (!part) { fill("dfs-body", el("p", { class: "muted", text: "not watched" })); return; }
  const report = part.report || {};
  if (isError(report)) { fill("dfs-body", render(report)); return; }
  fill("dfs-body",
    el("p", { text: `safe mode: ${report.safe_mode ? "on" : "off"}; replication ` +
      `${report.replication ?? "–"}; chunks ${report.chunks ?? "–"}` }),
    el("h3", { text: "chunk servers" }),
    render((report.servers || []).map((r) => Array.isArray(r) && r.length === 7 ?
      [r[0], r[1], r[2], r[3], fmtBytes(r[4]), fmtBytes(r[5]), r[6]] : r),
    ["id", "address", "rack", "chunks", "used", "free", "last heartbeat (s ago)"]),
    el("h3", { text: "under-replicated chunks" }),
    render(report.under_replicated || [], ["chunk", "live replicas"]),
    el("h3", { text: "decommissioning" }),
    render(report.decommissioning || [], ["mark", "server id", "chunks left"]));
}

function pct(ratio) {
  return typeof ratio === "number" ? (100 * ratio).toFixed(1) + "%" : "–";
}

function kvcacheSection(part) {
  if (!part) { fill("kvcache-body", el("p", { class: "muted", text: "not watched" })); return; }
  fill("kvcache-body", table(["pool", "servers", "hit ratio", "hits", "misses", "backends down"],
    (part.pools || []).map((p) => el("tr", { "data-pool": p.name }, cell(p.name),
      cell(p.servers.join(", ")), el("td", { class: "hit-ratio", text: pct(p.hit_ratio) }),
      cell(p.get_hits), cell(p.get_misses), cell(p.down)))),
  table(
    ["server", "state", "hit ratio", "items", "bytes", "limit", "evictions", "connections"],
    part.servers.map((s) => {
      const st = s.stats || {};
      return el("tr", { class: s.up ? "up" : "down", "data-server": s.address },
        cell(s.kind === "proxy" ? `${s.address} (proxy)` : s.address),
        el("td", { class: "state", text: s.up ? "up" : "DOWN " + (s.error || "") }),
        el("td", { class: "hit-ratio", text: pct(s.hit_ratio) }),
        cell(st.curr_items), cell(st.bytes), cell(st.limit_maxbytes), cell(st.evictions),
        cell(st.curr_connections));
    })));
}

function idgenSection(part) {
  if (!part) { fill("idgen-body", el("p", { class: "muted", text: "not watched" })); return; }
  fill("idgen-body", table(["node", "state", "figures"], part.nodes.map((n) =>
    el("tr", { class: n.up ? "up" : "down" }, cell(n.address),
      el("td", { class: "state", text: n.up ? "up" : "DOWN" }),
      cell(n.up ? (n.info || {}).idgen || (n.info || {}).stats : n.error)))));
}

// -- charts -----------------------------------------------------------------------------

function drawChart(id, series, legendId) {
  const svg = document.getElementById(id);
  const ns = "http://www.w3.org/2000/svg";
  const width = 400, height = 120, pad = 28;
  const all = series.flatMap((s) => s.points.filter((p) => p[1] !== null));
  svg.replaceChildren();
  if (!all.length) {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", "150"); t.setAttribute("y", "60"); t.textContent = "no data yet";
    svg.append(t); return;
  }
  const t0 = Math.min(...all.map((p) => p[0])), t1 = Math.max(...all.map((p) => p[0]));
  const top = Math.max(1, ...all.map((p) => p[1]));
  const x = (t) => pad + (t1 === t0 ? 0 : (t - t0) / (t1 - t0) * (width - pad - 4));
  const y = (v) => height - 12 - v / top * (height - 20);
  series.forEach((s, i) => {
    const points = s.points.filter((p) => p[1] !== null);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", COLORS[i % COLORS.length]);
    line.setAttribute("stroke-width", "1.5");
    svg.append(line);
  });
  for (const [v, label] of [[top, top.toFixed(top < 10 ? 1 : 0)], [0, "0"]]) {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", "2"); t.setAttribute("y", String(y(v) + 3)); t.textContent = label;
    svg.append(t);
  }
  if (legendId) {
    fill(legendId, ...series.map((s, i) => {
      const span = el("span", { text: "■ " + s.name });
      span.style.color = COLORS[i % COLORS.length];
      return span;
    }));
  }
}

function charts(series) {
  drawChart("chart-fires", [{ name: "fires/s", points: series.fires_per_s || [] }]);
  drawChart("chart-lateness", [{ name: "lateness ms", points: series.lateness_ms || [] }]);
  const ops = Object.keys(series).filter((k) => k.startsWith("ops_per_s/")).sort();
  drawChart("chart-ops", ops.map((k) => ({ name: k.slice(10), points: series[k] })),
    "chart-ops-legend");
}

// -- session and polling ----------------------------------------------------------------

async function post(path, fields) {
  const body = new URLSearchParams({ ...fields, csrf });
  try {
    const response = await fetch(path, { method: "POST", body, credentials: "same-origin" });
    const reply = await response.json();
    if (reply.csrf) csrf = reply.csrf;
    return reply;
  } catch (err) {
    return { error: String(err) };
  }
}

function sessionView(state) {
  csrf = state.session.csrf;
  loggedIn = state.session.logged_in;
  const select = document.getElementById("login-daemon");
  const names = state.login_daemons.join(",");
  if (select.dataset.names !== names) {
    select.replaceChildren(...state.login_daemons.map((d) => el("option", { value: d, text: d })));
    select.dataset.names = names;
  }
  document.getElementById("login-state").textContent =
    loggedIn.length ? `logged in to ${loggedIn.join(", ")}` : "read-only";
  document.getElementById("logout-button").hidden = !loggedIn.length;
}

let refreshing = false;  // a slow reply is not overtaken by the next timer's request

async function refresh() {
  if (refreshing) return;
  refreshing = true;
  try {
    await redraw();
  } finally {
    refreshing = false;
  }
}

async function redraw() {
  const status = document.getElementById("status");
  let state;
  try {
    const response = await fetch("/api/state", { credentials: "same-origin" });
    state = await response.json();
  } catch (err) {
    status.textContent = "console unreachable: " + err;
    return;
  }
  sessionView(state);
  const data = state.daemons || {};
  raftSection(data);
  schedulerSection(data.scheduler);
  shardstoreSection(data.shardstore);
  dfsSection(data.dfs);
  kvcacheSection(data.kvcache);
  idgenSection(data.idgen);
  charts(state.charts || {});
  status.textContent = `poll ${state.polls} at ${fmtTime(state.polled_ms)}`;
  document.body.dataset.polls = String(state.polls);
}

function setup() {
  document.getElementById("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const password = document.getElementById("login-password");
    const daemon = document.getElementById("login-daemon").value;
    const reply = await post("/api/login", { daemon, password: password.value });
    password.value = "";
    const message = document.getElementById("login-message");
    message.className = reply.ok ? "" : "error";
    message.textContent = reply.ok ? `logged in to ${daemon}` : reply.error;
    refresh();
  });
  document.getElementById("logout-button").addEventListener("click", async () => {
    await post("/api/logout", {});
    document.getElementById("login-message").textContent = "logged out";
    refresh();
  });
  document.getElementById("scheduler-body").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button) jobAction(button);
    const toggle = event.target.closest("button[data-history]");
    if (toggle) {
      const name = toggle.dataset.history;
      if (openJobs.has(name)) openJobs.delete(name); else openJobs.add(name);
      refresh();
    }
  });
  refresh();
  setInterval(refresh, POLL_MS);
}

document.addEventListener("DOMContentLoaded", setup);
