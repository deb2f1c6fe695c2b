//! Turning the gateway's JSON answers into text for a person.
//!
//! Every function here is pure (JSON in, `String` out) so it can be tested
//! without a server. Colour is decided by a [`Paint`] passed in: plain text in
//! tests, pipes and under `NO_COLOR`; colour on a terminal.

use serde_json::Value;

/// Whether to colour output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paint(pub bool);

impl Paint {
    /// Colour only on a terminal, and never when `NO_COLOR` is set.
    pub fn for_stdout() -> Paint {
        use std::io::IsTerminal;
        Paint(crate::events::color_on(std::io::stdout().is_terminal()))
    }

    fn code(self, code: &str, text: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub fn green(self, t: &str) -> String {
        self.code("32", t)
    }
    pub fn red(self, t: &str) -> String {
        self.code("31", t)
    }
    pub fn yellow(self, t: &str) -> String {
        self.code("33", t)
    }
    pub fn bold(self, t: &str) -> String {
        self.code("1", t)
    }
    pub fn dim(self, t: &str) -> String {
        self.code("2", t)
    }
}

/// A field of an answer as text. Control characters are escaped: a key
/// or value is anyone's, and must not move the cursor or clear the screen.
fn s(v: &Value) -> String {
    match v {
        Value::String(s) => crate::events::printable(s).into_owned(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A successful write.
pub fn write_ok(v: &Value, ms: f64, p: Paint) -> String {
    let mut out = format!(
        "{} wrote {} = {}\n   version {}   acks {}/{}   {:.1} ms",
        p.green("✅"),
        p.bold(&s(&v["key"])),
        s(&v["value"]),
        s(&v["version"]),
        s(&v["sync_acks"]),
        s(&v["quorum"]),
        ms
    );
    if let Some(urls) = v["sync_replicated_to"].as_array() {
        let urls: Vec<String> = urls.iter().map(s).collect();
        out.push_str(&format!("\n   replicated to: {}", urls.join(", ")));
    }
    out
}

/// A successful read.
pub fn read_ok(v: &Value, ms: f64, p: Paint) -> String {
    format!(
        "{} {} = {}\n   version {}   served by {}   quorum responses {}   {:.1} ms",
        p.green("📖"),
        p.bold(&s(&v["key"])),
        s(&v["value"]),
        s(&v["version"]),
        s(&v["served_by"]),
        s(&v["quorum_responses"]),
        ms
    )
}

fn node_line(n: &Value, p: Paint) -> String {
    let status = n["status"].as_str().unwrap_or("?");
    let dot = match status {
        "alive" => p.green("●"),
        "dead" => p.red("●"),
        _ => p.yellow("●"),
    };
    let sets: Vec<String> = n["sets"]
        .as_array()
        .map(|a| a.iter().map(|x| s(x).to_uppercase()).collect())
        .unwrap_or_default();
    let sets = if sets.is_empty() {
        String::new()
    } else {
        format!("  [{}]", sets.join("+"))
    };
    format!(
        "  {dot} {:<12} {:<8} {}{sets}",
        s(&n["node_id"]),
        status,
        s(&n["url"])
    )
}

/// The cluster's status (`/cluster-status`).
pub fn status(v: &Value, p: Paint) -> String {
    let mut lines = vec![p.bold("Cluster status")];
    match &v["leader"] {
        Value::Null => lines.push(format!("  {} no leader", p.red("●"))),
        leader => lines.push(format!("{}  (leader)", node_line(leader, p))),
    }
    let followers = v["followers"].as_array().cloned().unwrap_or_default();
    for f in &followers {
        lines.push(node_line(f, p));
    }
    let q = &v["quorum"];
    let tick = |b: &Value| {
        if b.as_bool() == Some(true) {
            p.green("✓")
        } else {
            p.red("✗")
        }
    };
    lines.push(format!(
        "  quorum: W={} R={}   alive followers {}   can write {}   can read {}",
        s(&q["W"]),
        s(&q["R"]),
        // `alive_followers` is kvlab's; an older gateway only has the total.
        s(if q["alive_followers"].is_null() {
            &q["total_alive"]
        } else {
            &q["alive_followers"]
        }),
        tick(&q["can_write"]),
        tick(&q["can_read"])
    ));
    if let (Some(w), Some(r)) = (q["W"].as_u64(), q["R"].as_u64()) {
        let n = followers.len() as u64;
        lines.push(if w + r > n {
            format!(
                "  W + R = {} > N = {n}: reads always see the latest acknowledged write",
                w + r
            )
        } else {
            p.yellow(&format!(
                "  W + R = {} <= N = {n}: reads can be stale while async replication is in flight",
                w + r
            ))
        });
    }
    lines.join("\n")
}

/// The gateway's `/stats`.
pub fn stats(v: &Value, p: Paint) -> String {
    let g = &v["gateway"];
    let mut lines = vec![
        p.bold("Gateway"),
        format!(
            "  requests {}   forwarded {}   rate limited {}   errors {}",
            s(&g["total_requests"]),
            s(&g["forwarded_requests"]),
            s(&g["rate_limited_requests"]),
            s(&g["errors"])
        ),
    ];
    match &v["rate_limiter"] {
        Value::Null => lines.push("  rate limiting: off".into()),
        rl => lines.push(format!(
            "  rate limiter: {}, {} requests per {} s   allowed {}   rejected {}",
            s(&rl["strategy"]),
            s(&rl["max_requests"]),
            s(&rl["window_seconds"]),
            s(&rl["allowed_requests"]),
            s(&rl["rejected_requests"])
        )),
    }
    lines.join("\n")
}

/// `snake_case` → `Title Case`, for error fields.
pub fn title_case(field: &str) -> String {
    field
        .split('_')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect::<String>(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// An error answer with its status, spelled out field by field.
pub fn error(status: u16, body: &Value, p: Paint) -> String {
    // A 429 from the gateway's limiter is not wrapped in "detail".
    if status == 429 {
        let retry = body["retry_after"]
            .as_f64()
            .map_or("?".into(), |r| format!("{r}"));
        let message = body["message"].as_str().unwrap_or("");
        return format!(
            "{} 429 Too Many Requests: slow down, retry after {retry} s\n   {message}",
            p.red("⛔")
        );
    }
    let detail = body.get("detail").unwrap_or(body);
    match detail {
        Value::Object(map) => {
            let title = map.get("error").map(s).unwrap_or_else(|| "error".into());
            let mut out = format!("{} {status} {title}", p.red("❌"));
            for (k, v) in map.iter().filter(|(k, _)| k.as_str() != "error") {
                out.push_str(&format!("\n   {}: {}", title_case(k), s(v)));
            }
            out
        }
        other => format!("{} {status} {}", p.red("❌"), s(other)),
    }
}

/// The gateway could not be reached at all.
pub fn unreachable(url: &str, why: &str, p: Paint) -> String {
    // A certificate the client does not trust: the cluster's CA is missing.
    let hint = if why.contains("certificate") {
        "the gateway speaks TLS: pass --tls-ca with the cluster's ca.pem (kvlab up prints where it is)"
    } else {
        "is it running? start a cluster with `kvlab up`, or pass --gateway URL"
    };
    format!(
        "{} cannot reach the gateway at {url}: {why}\n   {hint}",
        p.red("❌")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PLAIN: Paint = Paint(false);

    #[test]
    fn an_untrusted_certificate_names_the_missing_ca() {
        let why = "cannot connect: invalid peer certificate: UnknownIssuer";
        let text = unreachable("https://h:8000", why, PLAIN);
        assert!(text.contains("--tls-ca"), "{text}");
        let text = unreachable("http://h:8000", "cannot connect: refused", PLAIN);
        assert!(text.contains("is it running?"), "{text}");
    }

    #[test]
    fn write_shows_version_acks_and_replicas() {
        let v = json!({"status":"success","key":"name","value":"ds","version":3,"sync_acks":2,"quorum":2,
                       "sync_replicated_to":["http://a","http://b"]});
        let out = write_ok(&v, 12.34, PLAIN);
        assert!(out.contains("wrote name = ds"), "{out}");
        assert!(out.contains("version 3"));
        assert!(out.contains("acks 2/2"));
        assert!(out.contains("12.3 ms"));
        assert!(out.contains("replicated to: http://a, http://b"));
    }

    #[test]
    fn read_shows_who_served_it() {
        let v = json!({"key":"k","value":"v","version":2,"served_by":"follower-2","quorum_responses":2});
        let out = read_ok(&v, 1.0, PLAIN);
        assert!(out.contains("served by follower-2"), "{out}");
        assert!(out.contains("quorum responses 2"));
    }

    #[test]
    fn keys_and_values_are_shown_with_control_characters_escaped() {
        let v = json!({"key":"a\nb","value":"\u{1b}[2Jx\r","version":1,"served_by":"f","quorum_responses":1});
        let out = read_ok(&v, 1.0, PLAIN);
        assert!(out.contains("a\\nb = \\u{1b}[2Jx\\r"), "{out}");
        assert!(!out.contains('\u{1b}') && !out.contains('\r'), "{out:?}");
        let out = error(404, &json!({"detail": "Key 'a\nb' not found"}), PLAIN);
        assert!(out.contains("Key 'a\\nb' not found"), "{out}");
    }

    #[test]
    fn status_marks_nodes_and_judges_quorums() {
        let v = json!({"leader":{"node_id":"leader","url":"u0","status":"alive"},
            "followers":[{"node_id":"follower-1","url":"u1","status":"dead","sets":[]},
                         {"node_id":"follower-2","url":"u2","status":"alive","sets":["sync","read"]}],
            "quorum":{"W":1,"R":1,"total_alive":1,"can_write":true,"can_read":true}});
        let out = status(&v, PLAIN);
        assert!(out.contains("follower-1   dead"), "{out}");
        assert!(out.contains("[SYNC+READ]"));
        assert!(out.contains("W + R = 2 <= N = 2"));
        let coloured = status(&v, Paint(true));
        assert!(coloured.contains("\x1b[31m●"), "dead is red");
        assert!(coloured.contains("\x1b[32m●"), "alive is green");
    }

    #[test]
    fn errors_are_spelled_out_field_by_field() {
        let body = json!({"detail":{"error":"Write quorum not available","alive_followers":1,"required":2}});
        let out = error(503, &body, PLAIN);
        assert!(out.contains("503 Write quorum not available"), "{out}");
        assert!(out.contains("Alive Followers: 1"));
        assert!(out.contains("Required: 2"));
        let out = error(404, &json!({"detail":"Key 'x' not found"}), PLAIN);
        assert!(out.contains("404 Key 'x' not found"));
        let out = error(
            429,
            &json!({"error":"Too Many Requests","retry_after":42,"message":"m"}),
            PLAIN,
        );
        assert!(out.contains("retry after 42 s"), "{out}");
    }

    #[test]
    fn title_case_of_fields() {
        assert_eq!(title_case("alive_followers"), "Alive Followers");
        assert_eq!(title_case("required"), "Required");
    }
}
