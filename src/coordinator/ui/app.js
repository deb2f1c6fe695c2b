// kvlab live view. Polls /ui/state every half second, streams the event log
// from /ui/events (server-sent events), and animates the entries in flight
// on each replication link between polls. Buttons call the coordinator's
// API (/write, /kill, /spawn, /admin/partition/{id}, /admin/slow-disk/{id})
// or the view's own (/ui/read, /ui/pause). The events timeline is drawn by
// kvlab's shared renderer (timeline.js, report.html's too).
//
// For scripted use (a demo), the URL fragment can fill the inputs and name
// buttons to click once the first state has been drawn:
//   /ui#key=k&value=v&click=write-btn,kill-follower-1
// The clicks wait for the person looking at the page: the view shows which
// buttons the link asks for and presses them only when "press them" is
// clicked, so a link from anywhere cannot kill or spawn a node by itself.
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

// ---- faults, from the events ------------------------------------------------

// Which events start and end each kind of fault interval on a node.
const FAULT_STARTS = { crash: "dead", kill: "dead", node_dead: "dead", leader_dead: "dead",
  process_exit: "dead", heartbeats_paused: "pause", partitioned: "partition", slow_disk: "slow-disk",
  slow_link: "slow-link" };
const FAULT_ENDS = { node_up: ["dead"], caught_up: ["dead"], leader_restart: ["dead"],
  heartbeats_resumed: ["pause"], partition_healed: ["partition"], slow_disk_healed: ["slow-disk"],
  slow_link_healed: ["slow-link"],
  // A process that ends takes its injected faults with it.
  crash: ["pause", "partition", "slow-disk"], kill: ["pause", "partition", "slow-disk"],
  process_exit: ["pause", "partition", "slow-disk"] };
const FAULT_NAMES = { dead: "dead", pause: "heartbeats paused", partition: "partitioned", "slow-disk": "slow disk" };

// Every fault interval the events tell of: [{node, kind, start, end, open}],
// an interval not over yet ending at `now`.
function faultIntervals(now) {
  const open = {}, done = [];
  for (const e of events) {
    if (!e.node_id) continue;
    for (const kind of FAULT_ENDS[e.kind] || []) {
      const k = e.node_id + " " + kind;
      if (open[k]) { done.push({ ...open[k], end: e.unix_ms, open: false }); delete open[k]; }
    }
    const kind = FAULT_STARTS[e.kind];
    if (kind && !open[e.node_id + " " + kind]) open[e.node_id + " " + kind] = { node: e.node_id, kind, start: e.unix_ms };
  }
  for (const f of Object.values(open)) done.push({ ...f, end: now, open: true });
  return done;
}

// A node's injected faults (pause, partition, slow disk): live from
// /ui/state, or as the events tell it at the replay time `t`.
function nodeFaults(nodeId, t) {
  if (t === null) return (state.faults[nodeId] || []);
  return faultIntervals(t).filter((f) => f.node === nodeId && f.kind !== "dead" && f.start <= t && f.end >= t)
    .map((f) => ({ kind: f.kind, detail: "replayed", seconds_left: null }));
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
  if (n.status === "alive" && nodeFaults(n.node_id, null).some((f) => f.kind === "pause")) return "paused";
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
  renderControlPlane();
  drawLinks();
  drawTimeline(viewNow(), t); // the time axis moves on between events
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
  const faults = nodeFaults(n.node_id, t);
  const has = (kind) => faults.some((f) => f.kind === kind);
  const btns = [
    `<button id="kill-${id}" data-act="kill" data-node="${id}" title="graceful stop: it deregisters">kill</button>`,
    `<button id="crash-${id}" data-act="crash" data-node="${id}" title="SIGKILL: the registry notices after 5 s">crash</button>`,
    `<button id="pause-${id}" data-act="pause" data-node="${id}" title="no heartbeats for 8 s">pause heartbeats</button>`,
    has("partition")
      ? `<button id="heal-partition-${id}" data-act="heal-partition" data-node="${id}" title="end the partition now">heal partition</button>`
      : `<button id="partition-${id}" data-act="partition" data-node="${id}" title="cut it off from the peers chosen under Fault settings">partition</button>`,
    has("slow-disk")
      ? `<button id="heal-disk-${id}" data-act="heal-disk" data-node="${id}" title="fsyncs at full speed again">heal disk</button>`
      : `<button id="slow-disk-${id}" data-act="slow-disk" data-node="${id}" title="every fsync slower, as set under Fault settings">slow disk</button>`,
  ];
  if (!isLeader) btns.push(`<button id="spawn-${id}" data-act="spawn" data-node="${id}" title="start this slot again">spawn</button>`);
  // Partition and slow disk are not states: a node is alive *and* cut off.
  const faultTags = faults.filter((f) => f.kind !== "pause").map((f) =>
    `<span class="tag fault fault-${esc(f.kind)}" title="${esc(f.detail)}">${FAULT_NAMES[f.kind]}` +
    (f.seconds_left ? ` ${Math.ceil(f.seconds_left)} s` : "") + "</span>");
  return `<div class="node" id="node-${id}" data-state="${esc(st)}" data-faults="${faults.map((f) => esc(f.kind)).join(" ")}">` +
    arc(age, s.heartbeat_timeout_s) +
    `<div><div class="title">${id}${tags.join("")} <span class="tag state">${esc(st)}</span>${faultTags.join("")}</div>` +
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

// Who is in charge: this coordinator (embedded), or the active one of
// several sharing the cluster through etcd (`kvlab up --ha`), its epoch and
// the standbys waiting to take over.
function renderControlPlane() {
  const cp = state.status.control_plane;
  if (!cp || !cp.mode) return;
  const who = (c) => `<b>${esc(c.id)}</b> ${esc(c.url)}${c.pid ? " (pid " + c.pid + ")" : ""}`;
  const standbys = (cp.standbys || []).map((c) => `<li class="standby">${who(c)}</li>`).join("");
  $("control-plane").innerHTML =
    `${esc(cp.mode)} · epoch <b id="epoch">${cp.epoch}</b>` +
    (cp.lease_ttl_s ? ` · lease ${cp.lease_ttl_s} s` : "") +
    `<ul class="coordinators"><li class="active">active: ${cp.active ? who(cp.active) : "none"}</li>` +
    standbys + "</ul>" +
    `<span class="dim">${esc(cp.store)}</span>`;
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

// The coordinator's clock at the last poll, or the newest event if later.
function viewNow() {
  const polled = state ? state.now_ms : Date.now();
  return Math.max(polled, events.length ? events[events.length - 1].unix_ms : 0);
}

function renderEvents() {
  const t = replayTime(), now = viewNow();
  const shown = events.filter((e) => t === null || e.unix_ms <= t).slice(-300).reverse();
  $("events").innerHTML = shown.map((e) =>
    `<li class="${esc(e.tone)}" data-kind="${esc(e.kind)}"><span class="t">${fmtTime(e.unix_ms)}</span><i class="dot"></i>${esc(withoutEmoji(e.message))}</li>`).join("");
  drawTimeline(now, t);
}

// The events timeline, by kvlab's shared renderer: a lane per node (and one
// for the cluster), each event a tick on its node's lane, each fault the
// events tell of shaded on its lane, the replay position as the cursor.
function drawTimeline(now, t) {
  const svg = $("timeline");
  const from = Math.max(now - REPLAY_MS, events.length ? events[0].unix_ms : now - 60000);
  const nodes = state ? [state.status.leader, ...state.status.followers].filter(Boolean).map((n) => n.node_id) : [];
  for (const e of events) if (e.node_id && !nodes.includes(e.node_id)) nodes.push(e.node_id);
  const lane = (id) => (id && nodes.includes(id) ? nodes.indexOf(id) + 1 : 0);
  KvlabTimeline.lanes(svg, {
    from, to: now, unit: 1000, origin: now, maxTicks: 5,
    width: Math.max(120, svg.parentElement.clientWidth - 20 - 70 - 10), left: 70, top: 14, lane: 12,
    lanes: ["cluster", ...nodes],
    faults: faultIntervals(now).map((f) => ({ lane: lane(f.node), start: f.start, end: f.end, kind: f.kind,
      title: `${f.node} ${FAULT_NAMES[f.kind]} ${fmtTime(f.start)}–${f.open ? "now" : fmtTime(f.end)}` })),
    ticks: events.map((e) => ({ lane: lane(e.node_id), t: e.unix_ms, cls: "mark " + e.tone,
      title: fmtTime(e.unix_ms) + " " + withoutEmoji(e.message) })),
    cursor: t,
  });
}

// ---- actions -------------------------------------------------------------

// Off loopback the coordinator's admin routes need its admin token; open the
// view as /ui#token=<token> (a fragment never reaches the server or its logs).
const adminToken = new URLSearchParams(location.hash.slice(1)).get("token");

async function call(method, url, body) {
  const opts = { method, headers: {} };
  if (adminToken) opts.headers["authorization"] = "Bearer " + adminToken;
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

// The icons are drawn by the page (inline SVG, stroked in the text's
// colour), not emoji: they show the same with or without an emoji font.
const ICON_PATHS = {
  ok: '<path d="M3 8.5l3 3 7-7"/>',
  error: '<path d="M4 4l8 8M12 4l-8 8"/>',
  read: '<path d="M1.5 8s2.5-4.5 6.5-4.5 6.5 4.5 6.5 4.5-2.5 4.5-6.5 4.5S1.5 8 1.5 8z"/><circle cx="8" cy="8" r="1.8"/>',
};
function icon(name) {
  return `<svg class="icon icon-${name}" viewBox="0 0 16 16" aria-hidden="true">${ICON_PATHS[name]}</svg>`;
}

// An event's message starts with the console's emoji icon: the list shows
// the message without it, behind a dot in the event's tone (style.css).
function withoutEmoji(message) {
  return String(message).replace(/^\s*(?:\p{Extended_Pictographic}|\p{Emoji_Presentation}|[\u2190-\u2BFF\uFE0F\u200D])+\s*/u, "");
}

async function write() {
  const key = $("key").value, value = $("value").value;
  show("writing " + esc(key) + "…");
  const r = await call("POST", "/write", { key, value });
  if (r.ok) show(`${icon("ok")} ${esc(key)} = ${esc(value)} <b id="written-version">version ${r.data.version}</b>\n` +
    `seq ${r.data.seq}, ${r.data.sync_acks} of W=${r.data.quorum} sync acks`, r.data.version);
  else show(`${icon("error")} HTTP ${r.status}\n${esc(JSON.stringify(r.data && r.data.detail, null, 1))}`);
}

async function read() {
  const key = $("key").value;
  const r = await call("GET", "/ui/read/" + encodeURIComponent(key));
  const res = r.data.result;
  const lines = (r.data.followers || []).map((f) => "  " + esc(f.node_id) + ": " +
    (f.answer.error ? "error " + esc(f.answer.error) : f.answer.version === null ? "not found" : "v" + f.answer.version));
  if (res.ok) show(`${icon("read")} ${esc(key)} = ${esc(res.read.value)} <b id="read-version">version ${res.read.version}</b>, ` +
    `served by <b id="served-by">${esc(res.read.served_by)}</b>\nread set answers:\n${lines.join("\n")}`, res.read.version);
  else show(`${icon("error")} HTTP ${res.status}\n${esc(JSON.stringify(res.detail))}\nread set answers:\n${lines.join("\n")}`);
}

// Whom a partition cuts `node` off from, as set under Fault settings. "The
// leader link" is the leader for a follower, and every follower for the
// leader (the node ids its replication goes to).
function partitionPeers(node) {
  const peers = [];
  if ($("cut-leader").checked) {
    const leader = state.status.leader;
    if (leader && leader.node_id === node) peers.push(...state.status.followers.map((f) => f.node_id));
    else peers.push("leader");
  }
  if ($("cut-coordinator").checked) peers.push("coordinator");
  if ($("cut-registry").checked) peers.push("registry");
  return peers;
}

async function act(kind, node) {
  // By id (`node:`): after a failover the node called `leader` is a
  // follower, and plain `leader` in a path means whoever leads now.
  const id = encodeURIComponent(`node:${node}`), seconds = Number($("fault-seconds").value);
  const urls = {
    kill: ["POST", `/kill/${id}`],
    crash: ["POST", `/kill/${id}?mode=crash`],
    pause: ["POST", `/ui/pause/${id}`],
    spawn: ["POST", "/spawn", node ? { node_id: node } : {}],
    partition: ["POST", `/admin/partition/${id}`, { peers: partitionPeers(node), seconds }],
    "heal-partition": ["POST", `/admin/partition/${id}`, { peers: [], seconds: 0 }],
    "slow-disk": ["POST", `/admin/slow-disk/${id}`, { ms: Number($("slow-ms").value), seconds }],
    "heal-disk": ["POST", `/admin/slow-disk/${id}`, { ms: 0, seconds: 0 }],
  }[kind];
  if (kind === "partition" && urls[2].peers.length === 0) {
    show("partition: choose whom to cut it off from, under Fault settings");
    return;
  }
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

// The fragment's script: fill inputs, then offer to click the named
// buttons in order; nothing is clicked until the person agrees.
function runScript() {
  if (scripted || !location.hash) return;
  scripted = true;
  const p = new URLSearchParams(location.hash.slice(1));
  if (p.has("key")) $("key").value = p.get("key");
  if (p.has("value")) $("value").value = p.get("value");
  const ids = (p.get("click") || "").split(",").filter(Boolean);
  if (ids.length === 0) return;
  show(`This link asks to press: <b>${ids.map(esc).join(", ")}</b>\n` +
    `<button id="script-run">press them</button> <button id="script-skip">ignore</button>`);
  $("script-skip").onclick = () => show("ignored the link's buttons");
  $("script-run").onclick = async (ev) => {
    // Only a person's click (a script's `click()` is not trusted).
    if (!ev.isTrusted) return;
    for (const id of ids) {
      const b = $(id);
      if (!b) { show("no button " + esc(id)); continue; }
      b.click();
      await new Promise((r) => setTimeout(r, 300));
    }
    document.body.dataset.scriptDone = "1";
  };
}

listen();
poll();
