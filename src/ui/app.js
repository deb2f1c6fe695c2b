// kvlab live view. Polls /ui/state every half second, streams the event log
// from /ui/events (server-sent events), and animates the entries in flight
// on each replication link between polls. Buttons call the coordinator's
// API (/write, /kill, /spawn) or the view's own (/ui/read, /ui/pause).
//
// For scripted use (the tests, a demo), the URL fragment can fill the inputs
// and click buttons once the first state has been drawn:
//   /ui#key=k&value=v&click=write-btn,kill-follower-1
"use strict";

const POLL_MS = 500;
const REPLAY_MS = 10 * 60 * 1000; // the slider covers the last 10 minutes
const $ = (id) => document.getElementById(id);
const NS = "http://www.w3.org/2000/svg";

let state = null;       // the last /ui/state
let fetchedAt = 0;      // performance.now() when it arrived
let events = [];        // every event seen, oldest first (bounded)
let scripted = false;   // the fragment's actions ran

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function fmtTime(ms) { return new Date(ms).toLocaleTimeString(); }

// ---- state polling -------------------------------------------------------

async function poll() {
  try {
    const r = await fetch("/ui/state", { cache: "no-store" });
    state = await r.json();
    fetchedAt = performance.now();
    $("conn").textContent = "live · " + fmtTime(state.now_ms);
    render();
    runScript();
  } catch (e) {
    $("conn").textContent = "coordinator unreachable: " + e;
  }
  setTimeout(poll, POLL_MS);
}

function replayTime() {
  const v = Number($("slider").value);
  if (v >= 1000 || !state) return null;
  const now = state.now_ms, from = Math.max(now - REPLAY_MS, events.length ? events[0].unix_ms : now);
  return from + ((now - from) * v) / 1000;
}

// A node's state in the past, from the events up to `t`.
function replayedState(nodeId, t) {
  let s = null;
  for (const e of events) {
    if (e.unix_ms > t) break;
    if (e.node_id !== nodeId) continue;
    if (["node_dead", "crash", "kill", "leader_dead", "process_exit"].includes(e.kind)) s = "dead";
    else if (["node_up", "caught_up", "leader_restart", "slot_reused"].includes(e.kind)) s = "alive";
    else if (e.kind === "heartbeats_paused") s = "paused";
  }
  return s;
}

function nodeState(n, t) {
  if (t !== null) return replayedState(n.node_id, t) || n.status;
  if (n.status === "alive" && state.paused[n.node_id] !== undefined) return "paused";
  return n.status;
}

// ---- drawing -------------------------------------------------------------

function render() {
  const s = state, q = { ...s.status.quorum, w: s.status.quorum.W, r: s.status.quorum.R }, n = s.status.followers.length;
  const bar = (k, on, total) => `<span class="bar ${k}">` +
    Array.from({ length: total }, (_, i) => `<i class="${i < on ? "on" : ""}"></i>`).join("") + "</span>";
  const overlap = q.w + q.r > n;
  $("quorum").innerHTML =
    `<span>W=${q.w} ${bar("w", q.w, n)}</span><span>R=${q.r} ${bar("r", q.r, n)}</span><span>N=${n}</span>` +
    `<span id="verdict" class="verdict ${overlap ? "ok" : "bad"}">W + R = ${q.w + q.r} ${overlap ? ">" : "≤"} N = ${n}: ` +
    (overlap ? "every read meets the latest write" : "a read can miss the latest write") + "</span>" +
    `<span class="${q.can_write ? "verdict ok" : "verdict bad"}">${q.alive_followers} alive followers ` +
    (q.can_write ? "≥ W: writes accepted" : "< W: writes refused") + "</span>";
  const t = replayTime();
  $("replay-label").textContent = t === null ? "(live)" : "(replaying " + fmtTime(t) + ")";
  if (s.status.leader) $("leader-row").innerHTML = nodeCard(s.status.leader, true, t);
  const links = Object.fromEntries(s.links.map((l) => [l.node_id, l]));
  $("followers").innerHTML = s.status.followers.map((f) =>
    `<div class="noderow"><svg class="link" id="link-${esc(f.node_id)}" viewBox="0 0 400 54" preserveAspectRatio="none"></svg>` +
    nodeCard(f, false, t, links[f.node_id]) + "</div>").join("");
  renderGateway();
  drawLinks();
}

function nodeCard(n, isLeader, t, link) {
  const st = nodeState(n, t), s = state;
  const stats = s.stats[n.node_id];
  const age = s.heartbeat_age[n.node_id];
  const tags = (isLeader ? ['<span class="tag leader">leader</span>'] : []).concat(
    (n.sets || []).map((x) => `<span class="tag ${esc(x)}">${esc(x)}</span>`));
  const applied = stats ? stats.applied_seq : "–";
  const durable = stats && stats.storage ? stats.storage.durable_seq : "–";
  const lag = link ? `lag ${link.lag_entries} entries, ${link.lag_seconds.toFixed(1)} s` : "";
  // The term is the cluster's (/status), once failover exists.
  const t2 = n.term !== undefined ? n.term : s.status.term;
  const term = t2 !== undefined ? ` · term ${t2}` : "";
  const role = n.role ? ` · ${esc(n.role)}` : "";
  const id = esc(n.node_id);
  const btns = [
    `<button id="kill-${id}" data-act="kill" data-node="${id}" title="graceful stop: it deregisters">kill</button>`,
    `<button id="crash-${id}" data-act="crash" data-node="${id}" title="SIGKILL: the registry notices after 5 s">crash</button>`,
    `<button id="pause-${id}" data-act="pause" data-node="${id}" title="no heartbeats for 8 s">pause heartbeats</button>`,
  ];
  if (!isLeader) btns.push(`<button id="spawn-${id}" data-act="spawn" data-node="${id}" title="start this slot again">spawn</button>`);
  return `<div class="node" id="node-${id}" data-state="${esc(st)}">` + arc(age, s.heartbeat_timeout_s) +
    `<div><div class="title">${id}${tags.join("")} <span class="tag state">${esc(st)}</span></div>` +
    `<div class="meta">incarnation ${n.incarnation}${term}${role} · applied ${applied} · durable ${durable}</div>` +
    `<div class="meta">${lag}</div><div class="btns">${btns.join("")}</div></div></div>`;
}

// The heartbeat age as an arc that drains as the silence grows toward the
// registry's timeout (full: just heard from; empty: declared dead).
function arc(age, timeout) {
  const r = 16, c = 2 * Math.PI * r;
  const frac = age === undefined ? 1 : Math.min(age / timeout, 1);
  const title = age === undefined ? "no heartbeat seen" : `last heartbeat ${age.toFixed(1)} s ago`;
  return `<svg width="44" height="44" viewBox="0 0 44 44"><title>${title}</title>` +
    `<circle class="arc-bg" cx="22" cy="22" r="${r}" fill="none" stroke-width="5"/>` +
    `<circle class="arc ${frac > 0.5 ? "late" : ""}" cx="22" cy="22" r="${r}" fill="none" stroke-width="5" ` +
    `stroke-dasharray="${c}" stroke-dashoffset="${c * frac}" transform="rotate(-90 22 22)"/></svg>`;
}

// Entries in flight: a dot per unacknowledged entry, placed by its age over
// the link's delay, moved every frame between polls.
function drawLinks() {
  if (!state) return;
  const elapsed = performance.now() - fetchedAt;
  for (const l of state.links) {
    const svg = $("link-" + l.node_id);
    if (!svg) continue;
    const parts = [`<line x1="0" y1="27" x2="400" y2="27"/>`,
      `<text x="4" y="14">${l.sync ? "sync" : "async"} link · ${(l.delay_ms / 1000).toFixed(1)} s · acked ${l.acked_seq}/${l.leader_seq}</text>`];
    for (const e of l.in_flight) {
      const age = e.age_ms + elapsed;
      const frac = l.delay_ms > 0 ? Math.min(age / l.delay_ms, 0.97) : 0.97;
      parts.push(`<circle class="entry" cx="${8 + frac * 384}" cy="27" r="5"><title>seq ${e.seq}</title></circle>`);
    }
    svg.innerHTML = parts.join("");
  }
  requestAnimationFrame(drawLinks);
}

function renderGateway() {
  const g = state.gateway;
  if (!g) return;
  const m = g.gateway || {}, rl = g.rate_limiter;
  $("gateway").innerHTML = `requests ${m.total_requests} · forwarded ${m.forwarded_requests} · ` +
    `rate-limited <b>${m.rate_limited_requests}</b> · errors ${m.errors}<br>` +
    (rl ? `${esc(rl.strategy)}: ${rl.max_requests} per ${rl.window_seconds} s · allowed ${rl.allowed_requests} · rejected ${rl.rejected_requests} · clients ${rl.tracked_clients}`
        : "rate limiting off");
}

// ---- events --------------------------------------------------------------

function listen() {
  const src = new EventSource("/ui/events");
  src.onmessage = (m) => {
    const batch = JSON.parse(m.data);
    const known = events.length ? events[events.length - 1].id : 0;
    for (const e of batch) if (e.id > known) events.push(e);
    if (events.length > 4000) events = events.slice(-4000);
    renderEvents();
  };
}

function renderEvents() {
  const t = replayTime(), now = state ? state.now_ms : Date.now();
  const shown = events.filter((e) => t === null || e.unix_ms <= t).slice(-300).reverse();
  $("events").innerHTML = shown.map((e) =>
    `<li class="${esc(e.tone)}" data-kind="${esc(e.kind)}"><span class="t">${fmtTime(e.unix_ms)}</span>${esc(e.message)}</li>`).join("");
  const from = Math.max(now - REPLAY_MS, events.length ? events[0].unix_ms : now);
  kvlabTimeline.draw($("timeline"), events, { from, to: now, cursor: t === null ? undefined : t });
}

// ---- actions -------------------------------------------------------------

async function call(method, url, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) { opts.headers["content-type"] = "application/json"; opts.body = JSON.stringify(body); }
  const r = await fetch(url, opts);
  let data; try { data = await r.json(); } catch { data = null; }
  return { ok: r.ok, status: r.status, data };
}

function show(html, version) {
  const el = $("result");
  el.classList.remove("dim");
  el.innerHTML = html;
  if (version !== undefined) el.dataset.version = version; else delete el.dataset.version;
}

async function write() {
  const key = $("key").value, value = $("value").value;
  show("writing " + esc(key) + "…");
  const r = await call("POST", "/write", { key, value });
  if (r.ok) show(`✅ ${esc(key)} = ${esc(value)} <b id="written-version">version ${r.data.version}</b>\n` +
    `seq ${r.data.seq}, ${r.data.sync_acks} of W=${r.data.quorum} sync acks`, r.data.version);
  else show(`❌ HTTP ${r.status}\n${esc(JSON.stringify(r.data && r.data.detail, null, 1))}`);
}

async function read() {
  const key = $("key").value;
  const r = await call("GET", "/ui/read/" + encodeURIComponent(key));
  const res = r.data.result;
  const lines = (r.data.followers || []).map((f) => "  " + esc(f.node_id) + ": " +
    (f.answer.error ? "error " + esc(f.answer.error) : f.answer.version === null ? "not found" : "v" + f.answer.version));
  if (res.ok) show(`👀 ${esc(key)} = ${esc(res.read.value)} <b id="read-version">version ${res.read.version}</b>, ` +
    `served by <b id="served-by">${esc(res.read.served_by)}</b>\nread set answers:\n${lines.join("\n")}`, res.read.version);
  else show(`❌ HTTP ${res.status}\n${esc(JSON.stringify(res.detail))}\nread set answers:\n${lines.join("\n")}`);
}

async function act(kind, node) {
  const urls = {
    kill: ["POST", `/kill/${encodeURIComponent(node)}`],
    crash: ["POST", `/kill/${encodeURIComponent(node)}?mode=crash`],
    pause: ["POST", `/ui/pause/${encodeURIComponent(node)}`],
    spawn: ["POST", "/spawn", node ? { node_id: node } : {}],
  }[kind];
  const r = await call(...urls);
  show(`${kind} ${esc(node || "")}: HTTP ${r.status}\n${esc(JSON.stringify(r.data))}`);
  poll.now && poll.now();
}

document.addEventListener("click", (ev) => {
  const b = ev.target.closest("button[data-act]");
  if (b) act(b.dataset.act, b.dataset.node);
});
$("write-btn").onclick = write;
$("read-btn").onclick = read;
$("spawn-btn").onclick = () => act("spawn", null);
$("kill-leader-btn").onclick = () => act("crash", "leader");
$("slider").oninput = () => { if (state) render(); renderEvents(); };

// The fragment's script: fill inputs, then click the named buttons in order.
async function runScript() {
  if (scripted || !location.hash) return;
  scripted = true;
  const p = new URLSearchParams(location.hash.slice(1));
  if (p.has("key")) $("key").value = p.get("key");
  if (p.has("value")) $("value").value = p.get("value");
  for (const id of (p.get("click") || "").split(",").filter(Boolean)) {
    const b = $(id);
    if (!b) { show("no button " + esc(id)); continue; }
    b.click();
    await new Promise((r) => setTimeout(r, 300));
  }
  document.body.dataset.scriptDone = "1";
}

listen();
poll();
