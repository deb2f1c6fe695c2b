//! `report.html`: one self-contained page (no CDN, no network).
//!
//! The page embeds the run's data as JSON and kvlab's timeline renderer
//! (`src/coordinator/ui/timeline.js`, the live view's too), which draws, per key, one
//! lane per client with operations as bars, fault intervals shaded, and the
//! violating operations and their witnesses highlighted; then the latency
//! over time with the faults shaded; the summary comes first. The styles
//! here colour the renderer's classes for a printed, light page.

use serde_json::json;

use super::history::Op;
use super::report::{card, RunReport};
use crate::coordinator::ui::TIMELINE_JS;

const STYLE: &str = r#"
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 17px; margin-top: 28px; } h3 { font-size: 14px; margin: 14px 0 4px; }
pre.card { white-space: pre-wrap; background: #f6f6f4; padding: 12px; border-radius: 6px; overflow-x: auto; }
.verdict { display: inline-block; padding: 3px 10px; border-radius: 4px; color: #fff; font-weight: 600; }
.verdict.valid { background: #2e7d32; } .verdict.violation { background: #c62828; } .verdict.unknown { background: #8d6e00; }
ul.stories li { margin: 6px 0; color: #8b1a1a; }
svg text.label, svg text.lane { font-size: 11px; fill: #444; }
svg text.tick { font-size: 10px; fill: #888; } svg text.fault-label { font-size: 10px; fill: #a15c00; }
svg .grid { stroke: #eee; }
svg .fault { fill: #ff9800; opacity: 0.16; }
svg rect.op.op-write.ok { fill: #1e88e5; } svg rect.op.op-read.ok { fill: #43a047; }
svg rect.op.unknown { fill: #fbc02d; } svg rect.op.refused, svg rect.op.failed { fill: #bdbdbd; }
svg rect.op.violation { fill: #d50000 !important; stroke: #000; stroke-width: 1.5; }
svg rect.op.witness { fill: #6a1b9a !important; stroke: #000; stroke-width: 1.5; }
svg .marker.violation { fill: #d50000; } svg .marker.witness { fill: #6a1b9a; }
svg .open-end { stroke: #fbc02d; stroke-dasharray: 3 3; }
svg circle.dot.op-write.ok { fill: #1e88e5; } svg circle.dot.op-read.ok { fill: #43a047; }
svg circle.dot.unknown { fill: #fbc02d; } svg circle.dot.refused, svg circle.dot.failed { fill: #9e9e9e; }
.legend span { display: inline-block; margin-right: 14px; } .legend i { display: inline-block; width: 12px; height: 10px; margin-right: 4px; }
"#;

/// Renders the page.
pub fn render(report: &RunReport, history: &[Op]) -> String {
    let bad: Vec<usize> = report
        .stories
        .iter()
        .flat_map(|s| s.ops.iter().copied())
        .collect();
    let witnesses: Vec<usize> = report
        .stories
        .iter()
        .flat_map(|s| s.witnesses.iter().copied())
        .collect();
    let data = json!({
        "history": history,
        "faults": report.faults,
        "bad": bad,
        "witnesses": witnesses,
    });
    // Inside <script>, "</" would end the element: escape it.
    let data = data.to_string().replace("</", "<\\/");
    let stories: String = report
        .stories
        .iter()
        .map(|s| format!("<li>{}</li>", escape(&s.text)))
        .collect();
    let verdict = report.verdict.as_str();
    // A quiet run (no fault could be injected) says so next to its verdict.
    let label = match report.quiet {
        true => format!("{verdict} (quiet)"),
        false => verdict.to_string(),
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kvlab check · seed {seed} · {label}</title>
<style>{STYLE}</style></head>
<body>
<h1>kvlab check · seed {seed} <span class="verdict {verdict}" id="verdict">{label}</span></h1>
<h2>Summary</h2>
<pre class="card" id="summary">{card}</pre>
<ul class="stories" id="stories">{stories}</ul>
<h2>Timeline</h2>
<p class="legend"><span><i style="background:#1e88e5"></i>write</span><span><i style="background:#43a047"></i>read</span>
<span><i style="background:#fbc02d"></i>unknown outcome</span><span><i style="background:#bdbdbd"></i>refused / failed</span>
<span><i style="background:#d50000"></i>violation</span><span><i style="background:#6a1b9a"></i>witness</span>
<span><i style="background:#ff9800;opacity:.3"></i>fault</span></p>
<div id="timeline"></div>
<h2>Latency over time</h2>
<div id="latency"></div>
<script type="application/json" id="kvlab-data">{data}</script>
<script>{TIMELINE_JS}</script>
<script>
var data = JSON.parse(document.getElementById("kvlab-data").textContent);
KvlabTimeline.render(document.getElementById("timeline"), data);
KvlabTimeline.renderLatency(document.getElementById("latency"), data);
</script>
</body></html>
"#,
        seed = report.seed,
        card = escape(&card(report)),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
