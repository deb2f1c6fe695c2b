// A timeline of events drawn as SVG ticks: one tick per event, placed by
// time, coloured by tone. Plain browser JavaScript with no dependencies, so
// any kvlab page (the live view, a report) can include it and call
// kvlabTimeline.draw(svg, events, {from, to, cursor}).
// `events` are objects with `unix_ms` and `tone` (good, bad, warn, info, request).
"use strict";
window.kvlabTimeline = (function () {
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = { good: "#3ecf8e", bad: "#ff5d5d", warn: "#ffb547", info: "#4fc3f7", request: "#56607a" };

  function el(name, attrs) {
    const e = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    return e;
  }

  // Draws `events` between `from` and `to` (ms) on `svg` (its viewBox is
  // 400 wide); a vertical line marks `cursor` when given.
  function draw(svg, events, opts) {
    const { from, to, cursor } = opts;
    const width = 400, height = 36, span = Math.max(1, to - from);
    svg.replaceChildren();
    for (const e of events) {
      if (e.unix_ms < from || e.unix_ms > to) continue;
      const x = ((e.unix_ms - from) / span) * width;
      const tall = e.tone === "request" ? 10 : 26;
      svg.appendChild(el("line", { x1: x, x2: x, y1: height - tall - 4, y2: height - 4,
        stroke: COLORS[e.tone] || "#888", "stroke-width": 1.5 }));
    }
    if (cursor !== undefined) {
      const x = ((cursor - from) / span) * width;
      svg.appendChild(el("line", { x1: x, x2: x, y1: 0, y2: height, stroke: "#fff", "stroke-width": 1 }));
    }
  }

  return { draw };
})();
