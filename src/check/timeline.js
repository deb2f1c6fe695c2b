// kvlab's timeline renderer: operations as bars, one lane per client, with
// fault intervals shaded and violations highlighted; and a latency plot.
// Plain JS building SVG, no library and no network: `kvlab check` embeds it
// in report.html, and a live view can load it as it is.
//
// KvlabTimeline.render(container, data) where data is
//   { history: [op], faults: [{kind, node, start, end}], bad: [id], witnesses: [id] }
// and an op is a line of history.jsonl (times in ns since the start).
(function (global) {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var WIDTH = 1100, LANE = 16, LEFT = 70, TOP = 28;

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

  function axis(svg, x, total, y, height) {
    var step = total > 60 ? 10 : total > 20 ? 5 : total > 5 ? 1 : 0.5;
    for (var t = 0; t <= total; t += step) {
      el("line", { x1: x(t), x2: x(t), y1: y, y2: y + height, "class": "grid" }, svg);
      text(svg, x(t), y - 4, t.toFixed(step < 1 ? 1 : 0) + " s", "tick");
    }
  }

  function shadeFaults(svg, faults, x, y, height) {
    (faults || []).forEach(function (f) {
      var r = el("rect", { x: x(f.start), y: y, width: Math.max(1, x(f.end) - x(f.start)),
        height: height, "class": "fault fault-" + f.kind }, svg);
      el("title", {}, r).textContent = f.kind + " " + f.node + " " + f.start.toFixed(3) + "–" + f.end.toFixed(3) + " s";
      text(svg, x(f.start) + 2, y + 10, f.kind + " " + f.node, "fault-label");
    });
  }

  // One SVG per key: lanes by client, bars from call to return.
  function renderKey(container, key, ops, data, total) {
    var clients = [];
    ops.forEach(function (op) { if (clients.indexOf(op.client_id) < 0) clients.push(op.client_id); });
    clients.sort(function (a, b) { return a - b; });
    var height = TOP + clients.length * LANE + 6;
    var section = document.createElement("section");
    section.className = "key";
    section.id = "timeline-" + key;
    var h = document.createElement("h3");
    h.textContent = "key " + key + " · " + ops.length + " operations";
    section.appendChild(h);
    var svg = el("svg", { width: WIDTH + LEFT + 10, height: height, "class": "timeline" }, section);
    var x = function (t) { return LEFT + (t / total) * WIDTH; };
    axis(svg, x, total, TOP, height - TOP);
    shadeFaults(svg, data.faults, x, TOP, height - TOP);
    clients.forEach(function (c, i) {
      text(svg, 4, TOP + i * LANE + 12, "client " + c, "lane");
    });
    var bad = data.bad || [], wit = data.witnesses || [];
    ops.forEach(function (op) {
      var lane = clients.indexOf(op.client_id);
      var x0 = x(seconds(op.call)), x1 = x(seconds(op.end));
      var cls = "op " + (op.input.f === "write" ? "op-write " : "op-read ") + outcomeClass(op);
      if (bad.indexOf(op.id) >= 0) cls += " violation";
      if (wit.indexOf(op.id) >= 0) cls += " witness";
      var r = el("rect", { x: x0, y: TOP + lane * LANE + 2, width: Math.max(3, x1 - x0),
        height: LANE - 4, rx: 2, "class": cls, "data-op": op.id }, svg);
      el("title", {}, r).textContent = describe(op);
      // A short operation is a sliver: point at the ones that matter.
      var mark = bad.indexOf(op.id) >= 0 ? "violation" : wit.indexOf(op.id) >= 0 ? "witness" : null;
      if (mark) {
        var cx = (x0 + Math.max(x0 + 3, x1)) / 2, cy = TOP + lane * LANE + 2;
        var m = el("path", { d: "M" + (cx - 5) + " " + (cy - 7) + " L" + (cx + 5) + " " + (cy - 7) +
          " L" + cx + " " + cy + " Z", "class": "marker " + mark }, svg);
        el("title", {}, m).textContent = mark + ": " + describe(op);
      }
      if (op.output.type === "unknown") {
        // It may take effect any time after its call: an open end.
        el("line", { x1: x1, x2: x(total), y1: TOP + lane * LANE + LANE / 2,
          y2: TOP + lane * LANE + LANE / 2, "class": "open-end" }, svg);
      }
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

  // Latency over time: a dot per operation, faults shaded.
  function renderLatency(container, data) {
    var total = span(data), height = 220, max = 1;
    data.history.forEach(function (op) { max = Math.max(max, (op.end - op.call) / 1e6); });
    var svg = el("svg", { width: WIDTH + LEFT + 10, height: height + TOP + 20, "class": "latency" }, container);
    var x = function (t) { return LEFT + (t / total) * WIDTH; };
    var y = function (ms) { return TOP + height - (Math.log10(1 + ms) / Math.log10(1 + max)) * height; };
    axis(svg, x, total, TOP, height);
    shadeFaults(svg, data.faults, x, TOP, height);
    [1, 10, 100, 1000, 10000].forEach(function (ms) {
      if (ms <= max * 1.5) text(svg, 4, y(ms) + 4, ms + " ms", "tick");
    });
    data.history.forEach(function (op) {
      var ms = (op.end - op.call) / 1e6;
      el("circle", { cx: x(seconds(op.call)), cy: y(ms), r: 1.8,
        "class": "dot " + (op.input.f === "write" ? "op-write " : "op-read ") + outcomeClass(op) }, svg);
    });
  }

  global.KvlabTimeline = { render: render, renderLatency: renderLatency };
})(typeof window !== "undefined" ? window : this);
