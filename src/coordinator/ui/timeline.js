// kvlab's one timeline renderer, shared by both of kvlab's pages: the live
// view (/ui) and `kvlab check`'s report.html. Plain browser JavaScript that
// builds SVG: no library, no network, so the binary embeds it (include_str!)
// and both pages work offline.
//
// The shared chart, KvlabTimeline.lanes(svg, spec), draws over one time
// axis: one row ("lane") per actor, operations as bars from call to return,
// instants as ticks, fault intervals shaded (on one lane or across all), and
// a cursor. The two pages only say what goes in the lanes:
// - report.html (render, renderLatency): per key, one lane per client, the
//   operations as bars, the nemesis's faults shaded across, violations and
//   their witnesses marked; then latency over time with the faults shaded;
// - the live view: one lane per node, the event log as ticks, the node's
//   faults (dead, paused, partitioned, slow disk) shaded on its lane, the
//   replay slider's position as the cursor.
//
// Times are numbers in any unit: `unit` says how many make a second (the
// report uses seconds, the live view milliseconds since the epoch), and the
// axis reads 0 s at `origin`. The renderer only sets classes; each page's
// CSS colours them (`op`, `fault fault-<kind>`, `mark`, `grid`, `tick`, ...).
(function (global) {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";

  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function text(parent, x, y, s, cls) {
    var t = el("text", { x: x, y: y, "class": cls || "label" }, parent);
    t.textContent = s;
    return t;
  }
  function titled(e, s) {
    if (s) el("title", {}, e).textContent = s;
    return e;
  }

  // ---- the shared parts ------------------------------------------------

  // A step for about `most` grid lines over `seconds`.
  function step(seconds, most) {
    var steps = [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600];
    for (var i = 0; i < steps.length; i++) if (seconds / steps[i] <= most) return steps[i];
    return steps[steps.length - 1];
  }
  function secondsLabel(s, st) {
    if (st >= 60 && s % 60 === 0) return s / 60 + " min";
    return s.toFixed(st < 1 ? 1 : 0) + " s";
  }

  // Grid lines and their labels, every `step` seconds from `origin`.
  function axis(svg, x, spec, y, height) {
    var unit = spec.unit || 1, origin = spec.origin || 0;
    var span = (spec.to - spec.from) / unit;
    var st = step(span, spec.maxTicks || 12);
    var first = Math.ceil((spec.from - origin) / unit / st) * st;
    for (var s = first; origin + s * unit <= spec.to + 1e-9; s += st) {
      var px = x(origin + s * unit);
      el("line", { x1: px, x2: px, y1: y, y2: y + height, "class": "grid" }, svg);
      text(svg, px, y - 4, secondsLabel(Math.round(s * 10) / 10, st), "tick");
    }
  }

  // Shaded intervals: `lane` puts one on that row, none spans every row.
  function shade(svg, faults, x, laneY, spec, y, height) {
    (faults || []).forEach(function (f) {
      var top = f.lane === undefined ? y : laneY(f.lane);
      var h = f.lane === undefined ? height : spec.lane;
      var start = Math.max(f.start, spec.from), end = Math.min(f.end, spec.to);
      if (end < start) return;
      var r = el("rect", { x: x(start), y: top, width: Math.max(1, x(end) - x(start)),
        height: h, "class": "fault fault-" + f.kind }, svg);
      titled(r, f.title);
      if (f.label) text(svg, x(start) + 2, top + 10, f.label, "fault-label");
    });
  }

  // The chart: spec = {from, to, unit, origin, width, left, top, lane,
  //   lanes: [label], faults: [{lane?, start, end, kind, label, title}],
  //   bars: [{lane, start, end, cls, title, op, open, mark}],
  //   ticks: [{lane, t, cls, title}], cursor}.
  // Returns the SVG's height.
  function lanes(svg, spec) {
    var left = spec.left, top = spec.top, lane = spec.lane, width = spec.width;
    var height = top + spec.lanes.length * lane + 6;
    var span = Math.max(spec.to - spec.from, 1e-9);
    var x = function (t) { return left + ((t - spec.from) / span) * width; };
    var laneY = function (i) { return top + i * lane; };
    svg.replaceChildren();
    svg.setAttribute("width", width + left + 10);
    svg.setAttribute("height", height);
    svg.setAttribute("viewBox", "0 0 " + (width + left + 10) + " " + height);
    axis(svg, x, spec, top, height - top);
    shade(svg, spec.faults, x, laneY, spec, top, height - top);
    spec.lanes.forEach(function (label, i) { text(svg, 4, laneY(i) + lane - 4, label, "lane"); });
    (spec.bars || []).forEach(function (b) {
      var x0 = x(b.start), x1 = x(b.end), y0 = laneY(b.lane);
      var attrs = { x: x0, y: y0 + 2, width: Math.max(3, x1 - x0), height: lane - 4, rx: 2, "class": b.cls };
      if (b.op !== undefined) attrs["data-op"] = b.op;
      titled(el("rect", attrs, svg), b.title);
      // A short bar is a sliver: a marker above points at the ones that matter.
      if (b.mark) {
        var cx = (x0 + Math.max(x0 + 3, x1)) / 2, cy = y0 + 2;
        titled(el("path", { d: "M" + (cx - 5) + " " + (cy - 7) + " L" + (cx + 5) + " " + (cy - 7) +
          " L" + cx + " " + cy + " Z", "class": "marker " + b.mark }, svg), b.mark + ": " + b.title);
      }
      // An operation that may take effect any time after its call: an open end.
      if (b.open) el("line", { x1: x1, x2: x(spec.to), y1: y0 + lane / 2, y2: y0 + lane / 2, "class": "open-end" }, svg);
    });
    (spec.ticks || []).forEach(function (k) {
      if (k.t < spec.from || k.t > spec.to) return;
      var y0 = laneY(k.lane);
      titled(el("line", { x1: x(k.t), x2: x(k.t), y1: y0 + 2, y2: y0 + lane - 2, "class": k.cls }, svg), k.title);
    });
    if (spec.cursor !== undefined && spec.cursor !== null)
      el("line", { x1: x(spec.cursor), x2: x(spec.cursor), y1: 0, y2: height, "class": "cursor" }, svg);
    return height;
  }

  // ---- report.html: a checked history ------------------------------------
  // data = { history: [op], faults: [{kind, node, start, end}], bad: [id],
  //   witnesses: [id] }; an op is a line of history.jsonl (times in ns).

  var WIDTH = 1100, LANE = 16, LEFT = 70, TOP = 28;

  function seconds(ns) { return ns / 1e9; }
  function endOf(op) { return op["return"] != null ? op["return"] : op.end; }

  function span(data) {
    var max = 0;
    data.history.forEach(function (op) { max = Math.max(max, seconds(endOf(op))); });
    (data.faults || []).forEach(function (f) { max = Math.max(max, f.end); });
    return Math.max(max, 0.001);
  }

  function outcomeClass(op) {
    var t = op.output.type;
    if (t === "written" || t === "found" || t === "not_found") return "ok";
    if (t === "refused") return "refused";
    if (t === "unknown") return "unknown";
    return "failed";
  }

  function describe(op) {
    var o = op.output, s = "#" + op.id + " client " + op.client_id + " ";
    s += op.input.f === "write" ? "write " + op.input.key + " = " + op.input.value : "read " + op.input.key;
    s += " [" + seconds(op.call).toFixed(3) + " s → " + seconds(op.end).toFixed(3) + " s]: ";
    if (o.type === "written") s += "ok, version " + o.version;
    else if (o.type === "found") s += o.value + " v" + o.version + " from " + o.served_by;
    else if (o.type === "not_found") s += "not found";
    else s += o.type + (o.reason ? " (" + o.reason + ")" : "");
    return s;
  }

  // The nemesis's faults, shaded across every lane.
  function checkFaults(data) {
    return (data.faults || []).map(function (f) {
      return { start: f.start, end: f.end, kind: f.kind, label: f.kind + " " + f.node,
        title: f.kind + " " + f.node + " " + f.start.toFixed(3) + "–" + f.end.toFixed(3) + " s" };
    });
  }

  // One chart per key: lanes by client, bars from call to return.
  function renderKey(container, key, ops, data, total) {
    var clients = [];
    ops.forEach(function (op) { if (clients.indexOf(op.client_id) < 0) clients.push(op.client_id); });
    clients.sort(function (a, b) { return a - b; });
    var section = document.createElement("section");
    section.className = "key";
    section.id = "timeline-" + key;
    var h = document.createElement("h3");
    h.textContent = "key " + key + " · " + ops.length + " operations";
    section.appendChild(h);
    var svg = el("svg", { "class": "timeline" }, section);
    var bad = data.bad || [], wit = data.witnesses || [];
    lanes(svg, {
      from: 0, to: total, width: WIDTH, left: LEFT, top: TOP, lane: LANE,
      lanes: clients.map(function (c) { return "client " + c; }),
      faults: checkFaults(data),
      bars: ops.map(function (op) {
        var cls = "op " + (op.input.f === "write" ? "op-write " : "op-read ") + outcomeClass(op);
        var isBad = bad.indexOf(op.id) >= 0, isWit = wit.indexOf(op.id) >= 0;
        if (isBad) cls += " violation";
        if (isWit) cls += " witness";
        return { lane: clients.indexOf(op.client_id), start: seconds(op.call), end: seconds(op.end),
          cls: cls, title: describe(op), op: op.id, open: op.output.type === "unknown",
          mark: isBad ? "violation" : isWit ? "witness" : null };
      }),
    });
    container.appendChild(section);
  }

  function render(container, data) {
    var total = span(data), byKey = {};
    data.history.forEach(function (op) {
      (byKey[op.input.key] = byKey[op.input.key] || []).push(op);
    });
    Object.keys(byKey).sort().forEach(function (key) {
      renderKey(container, key, byKey[key], data, total);
    });
  }

  // Latency over time: a dot per operation, on the same axis, faults shaded.
  function renderLatency(container, data) {
    var total = span(data), height = 220, max = 1;
    data.history.forEach(function (op) { max = Math.max(max, (op.end - op.call) / 1e6); });
    var svg = el("svg", { width: WIDTH + LEFT + 10, height: height + TOP + 20, "class": "latency" }, container);
    var spec = { from: 0, to: total, lane: height };
    var x = function (t) { return LEFT + (t / total) * WIDTH; };
    var y = function (ms) { return TOP + height - (Math.log10(1 + ms) / Math.log10(1 + max)) * height; };
    axis(svg, x, spec, TOP, height);
    shade(svg, checkFaults(data), x, function () { return TOP; }, spec, TOP, height);
    [1, 10, 100, 1000, 10000].forEach(function (ms) {
      if (ms <= max * 1.5) text(svg, 4, y(ms) + 4, ms + " ms", "tick");
    });
    data.history.forEach(function (op) {
      var ms = (op.end - op.call) / 1e6;
      el("circle", { cx: x(seconds(op.call)), cy: y(ms), r: 1.8,
        "class": "dot " + (op.input.f === "write" ? "op-write " : "op-read ") + outcomeClass(op) }, svg);
    });
  }

  global.KvlabTimeline = { lanes: lanes, render: render, renderLatency: renderLatency };
})(typeof window !== "undefined" ? window : this);
