//! `kvlab client`: the command line people type into.
//!
//! One-shot (`kvlab client write name ds`, `read name`, `status`, `stats`,
//! `graduate`) or interactive (`>>> ` prompt with line editing and history).
//! It talks only to the gateway. Every answer is printed for a person by the
//! pure functions of [`format`]; `--json` prints the raw answer instead. The
//! exit code is non-zero when the command failed, so scripts can rely on it.
//!
//! Given several gateways (`--gateway URL1,URL2`, or the flag repeated), it
//! uses one until it stops answering, then the next. It moves on and sends
//! again at once only when the connection could not be made (the request
//! never left); a reset or a timeout after sending is reported (a write's
//! outcome is then unknown) and the next command goes to the next gateway.
//! An HTTP answer, an error included, is the cluster's answer: never a
//! reason to move on.
//!
//! When stdin is not a terminal, interactive mode reads plain lines, so it can
//! be scripted and tested by piping commands in.

pub mod format;

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::http::describe_reqwest_error;
use format::Paint;

#[derive(Debug, Clone, Parser)]
pub struct Args {
    /// The gateway to talk to; several (comma-separated or the flag
    /// repeated): the next is used when one stops answering.
    #[arg(long, default_value = "http://127.0.0.1:8000", env = "KVLAB_GATEWAY")]
    pub gateway: Vec<String>,
    /// Print the raw JSON answer.
    #[arg(long, global = true)]
    pub json: bool,
    /// The cluster CA (PEM) to trust for an https:// gateway (a gateway
    /// off loopback speaks TLS; `kvlab up` prints where its CA is).
    #[arg(long, value_name = "PATH", env = crate::tls::ENV_CA)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// The key (the original lab's flag form, before the command).
    #[arg(long)]
    pub key: Option<String>,
    /// The value (the original lab's flag form, before the command).
    #[arg(long)]
    pub value: Option<String>,
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Cmd {
    /// Write a key: `write <key> <value...>` or `write --key K --value V`.
    Write {
        key: Option<String>,
        value: Vec<String>,
        #[arg(long = "key", id = "write_key")]
        key_flag: Option<String>,
        #[arg(long = "value", id = "write_value")]
        value_flag: Option<String>,
    },
    /// Read a key: `read <key>` or `read --key K`.
    Read {
        key: Option<String>,
        #[arg(long = "key", id = "read_key")]
        key_flag: Option<String>,
    },
    /// The cluster's status.
    Status,
    /// The gateway's counters.
    Stats,
    /// The course's finale.
    Graduate,
    /// The `>>> ` prompt (the default).
    Interactive,
}

/// One thing to do, with everything it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Write { key: String, value: String },
    Read { key: String },
    Status,
    Stats,
    Graduate,
}

/// What a finished command printed, and whether it succeeded.
pub struct Outcome {
    pub ok: bool,
    pub text: String,
}

pub struct Client {
    gateways: crate::http::Endpoints,
    http: reqwest::Client,
    json: bool,
    paint: Paint,
}

impl Client {
    pub fn new(gateways: crate::http::Endpoints, json: bool, paint: Paint) -> Client {
        let builder = reqwest::Client::builder();
        // https: the cluster CA of `--tls-ca` is the only root.
        let builder = match crate::tls::client_config() {
            Some(config) => builder.use_preconfigured_tls(config),
            None => builder,
        };
        let http = builder
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("building the HTTP client");
        Client {
            gateways,
            http,
            json,
            paint,
        }
    }

    /// Runs one command against the gateway (the next one, when the
    /// current one cannot be connected to).
    pub async fn execute(&self, cmd: &Command) -> Outcome {
        let started = Instant::now();
        // A key the store never holds is not sent: `.` and `..` are dot
        // segments a URL resolves away (`/read/..` would ask the gateway
        // for `/`, and its answer would read as a value).
        if let Command::Read { key } = cmd {
            if let Err(e) = crate::http::validate_key_value(key, None) {
                let body = serde_json::json!({ "detail": e.detail }).to_string();
                return self.render(cmd, e.status.as_u16(), &body, 0.0);
            }
        }
        let mut tried = 0;
        let resp = loop {
            let (i, base) = self.gateways.current();
            let request = match self.request(cmd, base) {
                Ok(request) => request,
                Err(outcome) => return outcome,
            };
            tried += 1;
            match request.send().await {
                Ok(resp) => break resp,
                Err(e) => {
                    let why = describe_reqwest_error(&e);
                    let failed = format::unreachable(base, &why, self.paint);
                    if self.gateways.len() == 1 {
                        return fail(failed);
                    }
                    let (_, next) = self.gateways.move_past(i);
                    // Never delivered: safe to send again, to the next one.
                    if crate::http::never_reached(&e) && tried < self.gateways.len() {
                        eprintln!("↪ {base} does not answer ({why}): trying {next}");
                        continue;
                    }
                    let what = if matches!(cmd, Command::Write { .. })
                        && !crate::http::never_reached(&e)
                    {
                        "the write may or may not have been applied; "
                    } else {
                        ""
                    };
                    return fail(format!(
                        "{failed}\n   ↪ {what}the next command goes to {next}"
                    ));
                }
            }
        };
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        self.render(cmd, status, &text, ms)
    }

    /// The request of one command to the gateway at `base`.
    fn request(&self, cmd: &Command, base: &str) -> Result<reqwest::RequestBuilder, Outcome> {
        Ok(match cmd {
            Command::Write { key, value } => self
                .http
                .post(format!("{base}/write"))
                .json(&serde_json::json!({"key": key, "value": value})),
            Command::Read { key } => {
                // Byte for byte: a URL parser would strip a tab, LF or CR
                // from a pushed segment and read another key.
                let url = format!("{base}/read/{}", crate::api::key_segment(key));
                match reqwest::Url::parse(&url) {
                    Ok(url) => self.http.get(url),
                    Err(e) => return Err(fail(format!("bad gateway URL {base}: {e}"))),
                }
            }
            Command::Status => self.http.get(format!("{base}/cluster-status")),
            Command::Stats => self.http.get(format!("{base}/stats")),
            Command::Graduate => self.http.get(format!("{base}/graduate")),
        })
    }

    fn render(&self, cmd: &Command, status: u16, text: &str, ms: f64) -> Outcome {
        let ok = (200..300).contains(&status);
        if self.json || *cmd == Command::Graduate {
            return Outcome {
                ok,
                text: text.trim_end().to_string(),
            };
        }
        let body: Value = serde_json::from_str(text).unwrap_or(Value::String(text.to_string()));
        let p = self.paint;
        let text = match (ok, cmd) {
            (false, _) => format::error(status, &body, p),
            (true, Command::Write { .. }) => format::write_ok(&body, ms, p),
            (true, Command::Read { .. }) => format::read_ok(&body, ms, p),
            (true, Command::Status) => format::status(&body, p),
            (true, Command::Stats) => format::stats(&body, p),
            (true, Command::Graduate) => unreachable!("handled above"),
        };
        Outcome { ok, text }
    }
}

fn fail(text: String) -> Outcome {
    Outcome { ok: false, text }
}

/// Runs the client; returns the process exit code.
pub async fn run(args: Args) -> anyhow::Result<i32> {
    let tls = crate::tls::TlsArgs {
        tls_ca: args.tls_ca.clone(),
        ..Default::default()
    };
    // A client listens nowhere: only the CA matters.
    crate::tls::install(&tls, &[])?;
    let gateways = crate::http::Endpoints::parse("--gateway", &args.gateway)?;
    let client = Client::new(gateways, args.json, Paint::for_stdout());
    let cmd = match args.command.clone().unwrap_or(Cmd::Interactive) {
        Cmd::Interactive => return interactive(client).await,
        Cmd::Write {
            key,
            value,
            key_flag,
            value_flag,
        } => {
            let key = key.or(key_flag).or(args.key.clone());
            let value = if value.is_empty() {
                value_flag.or(args.value.clone())
            } else {
                Some(value.join(" "))
            };
            match (key, value) {
                (Some(key), Some(value)) => Command::Write { key, value },
                _ => anyhow::bail!(
                    "write needs a key and a value: `write <key> <value>` or `--key K --value V`"
                ),
            }
        }
        Cmd::Read { key, key_flag } => match key.or(key_flag).or(args.key.clone()) {
            Some(key) => Command::Read { key },
            None => anyhow::bail!("read needs a key: `read <key>` or `--key K`"),
        },
        Cmd::Status => Command::Status,
        Cmd::Stats => Command::Stats,
        Cmd::Graduate => Command::Graduate,
    };
    let outcome = client.execute(&cmd).await;
    println!("{}", outcome.text);
    Ok(if outcome.ok { 0 } else { 1 })
}

/// What one line typed at the prompt asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Run(Command),
    Help,
    Quit,
    Empty,
    /// A mistake, with what to say about it.
    Invalid(String),
}

pub const HELP: &str = "commands:
  write <key> <value...>   store a value (the rest of the line is the value)
  read <key>               read a key through the read quorum
  status                   the cluster: nodes, sets, quorums
  stats                    the gateway's counters and rate limiter
  graduate                 the finale
  help                     this text
  quit | exit | q          leave";

/// Parses one line typed at the prompt.
pub fn parse_line(line: &str) -> Line {
    let line = line.trim();
    let (word, rest) = match line.split_once(char::is_whitespace) {
        Some((w, r)) => (w, r.trim()),
        None => (line, ""),
    };
    match word.to_ascii_lowercase().as_str() {
        "" => Line::Empty,
        "quit" | "exit" | "q" => Line::Quit,
        "help" | "?" => Line::Help,
        "status" => Line::Run(Command::Status),
        "stats" => Line::Run(Command::Stats),
        "graduate" => Line::Run(Command::Graduate),
        "read" if !rest.is_empty() && !rest.contains(char::is_whitespace) => {
            Line::Run(Command::Read { key: rest.into() })
        }
        "read" => Line::Invalid("usage: read <key>   (a key has no spaces here)".into()),
        "write" => match rest.split_once(char::is_whitespace) {
            Some((key, value)) if !value.trim().is_empty() => Line::Run(Command::Write {
                key: key.into(),
                value: value.trim().into(),
            }),
            _ => Line::Invalid("usage: write <key> <value...>".into()),
        },
        other => Line::Invalid(format!("unknown command '{other}' (type help)")),
    }
}

/// The prompt loop over any source of lines. Runs on a blocking thread and
/// drives the async client through the runtime handle.
pub fn repl(
    client: &Client,
    rt: &tokio::runtime::Handle,
    lines: impl Iterator<Item = String>,
    out: &mut impl Write,
) -> std::io::Result<()> {
    for line in lines {
        match parse_line(&line) {
            Line::Quit => break,
            Line::Empty => {}
            Line::Help => writeln!(out, "{HELP}")?,
            Line::Invalid(msg) => writeln!(out, "{msg}")?,
            Line::Run(cmd) => {
                let outcome = rt.block_on(client.execute(&cmd));
                writeln!(out, "{}", outcome.text)?;
            }
        }
        out.flush()?;
    }
    writeln!(out, "bye")
}

async fn interactive(client: Client) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut out = std::io::stdout();
        if std::io::stdin().is_terminal() {
            let gateways = client.gateways.urls().join(", ");
            println!("kvlab client, talking to {gateways}. Type help.");
            repl(&client, &rt, PromptLines::new()?, &mut out)?;
        } else {
            let lines = std::io::stdin().lock().lines().map_while(Result::ok);
            repl(&client, &rt, lines, &mut out)?;
        }
        Ok::<i32, anyhow::Error>(0)
    })
    .await?
}

/// Lines typed at a `>>> ` prompt, with editing and history (kept in
/// `~/.kvlab_history` when a home directory exists).
struct PromptLines {
    editor: rustyline::DefaultEditor,
    history: Option<std::path::PathBuf>,
}

impl PromptLines {
    fn new() -> anyhow::Result<Self> {
        let mut editor = rustyline::DefaultEditor::new()?;
        let history =
            std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".kvlab_history"));
        if let Some(h) = &history {
            let _ = editor.load_history(h);
        }
        Ok(PromptLines { editor, history })
    }
}

impl Iterator for PromptLines {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        match self.editor.readline(">>> ") {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = self.editor.add_history_entry(line.as_str());
                    if let Some(h) = &self.history {
                        let _ = self.editor.save_history(h);
                    }
                }
                Some(line)
            }
            // Ctrl-C or Ctrl-D leave, as `quit` does (a half-typed line is dropped).
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prompt_lines() {
        assert_eq!(
            parse_line("write name distributed systems"),
            Line::Run(Command::Write {
                key: "name".into(),
                value: "distributed systems".into()
            })
        );
        assert_eq!(
            parse_line("  READ name "),
            Line::Run(Command::Read { key: "name".into() })
        );
        assert_eq!(parse_line("q"), Line::Quit);
        assert_eq!(parse_line(""), Line::Empty);
        assert!(matches!(parse_line("write onlykey"), Line::Invalid(_)));
        assert!(matches!(parse_line("read"), Line::Invalid(_)));
        assert!(
            matches!(parse_line("dance"), Line::Invalid(m) if m.contains("unknown command 'dance'"))
        );
    }

    /// `read ..` once printed the gateway's `/` as a value (`📖 - = -`).
    #[tokio::test]
    async fn keys_no_url_can_name_are_refused_before_sending() {
        // Nothing listens on port 1: a request sent would fail otherwise.
        let gateways = crate::http::Endpoints::parse("--gateway", &["http://127.0.0.1:1".into()]);
        let client = Client::new(gateways.unwrap(), false, Paint(false));
        for key in [".", "..", ""] {
            let out = client.execute(&Command::Read { key: key.into() }).await;
            assert!(!out.ok, "{key:?}");
            assert!(
                out.text.contains("400 invalid key"),
                "{key:?}: {}",
                out.text
            );
        }
    }
}
