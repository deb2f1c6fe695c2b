//! The `kvlab` binary: one subcommand per component. All logic lives in the
//! library; this file only parses flags and picks what to run.

use clap::{Parser, Subcommand};
use kvlab::{
    assess, bench, check, client, coordinator, gateway, grade_node, lab, node, registry, tls, up,
};

/// mimalloc instead of the system allocator. Every request allocates
/// (bodies, headers, JSON), and under load glibc's malloc took about a tenth
/// of each process's CPU; with mimalloc a write costs 10-13% less CPU in
/// the `up` process and the nodes (`bench/cpu-per-op.sh`). `Counting`
/// counts allocations only when asked (`KVLAB_COUNT_ALLOCATIONS=1`, for
/// `bench/per-op.sh`); otherwise it costs one flag load per allocation.
#[global_allocator]
static ALLOCATOR: kvlab::metrics::alloc::Counting<mimalloc::MiMalloc> =
    kvlab::metrics::alloc::Counting(mimalloc::MiMalloc);

#[derive(Parser)]
#[command(
    name = "kvlab",
    version,
    about = "A replicated key-value store you can watch, break and grade"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a whole cluster: gateway, registry, coordinator, leader and followers.
    Up(up::Args),
    /// Run the gateway: the clients' entry point, with optional rate limiting.
    Gateway(gateway::Args),
    /// Run the coordinator (it starts the leader and the followers).
    Coordinator(coordinator::Args),
    /// Run the registry (heartbeats, failure detection, auto-spawn).
    Registry(registry::Args),
    /// Run one storage node (normally started by the coordinator).
    Node(node::Args),
    /// Talk to the cluster through the gateway (interactive by default).
    Client(client::Args),
    /// Grade a CloudCart student config: start a cluster with it, run the scenarios, score.
    Assess(assess::Args),
    /// Load-generate against a gateway, a coordinator, or etcd, and report.
    Bench(bench::Args),
    /// A bare HTTP server that answers kvlab's requests at once: the ceiling
    /// `bench/compare.sh` measures kvlab against (`kvlab bench --target bare`).
    #[command(hide = true)]
    BenchServer(bench::bare::ServerArgs),
    /// Concurrent fsyncs on a disk, timed: the disk's share of a lone
    /// write's floor, as `bench/compare.sh` prints it.
    #[command(hide = true)]
    BenchDisk(bench::disk::DiskArgs),
    /// One process of the skeleton: the lab's gateway, leader and followers
    /// with no logic, on a binary wire (`bench/compare.sh`'s skeleton line).
    #[command(hide = true)]
    BenchSkeleton(bench::skeleton::SkeletonArgs),
    /// The CloudCart exercise's files: `kvlab lab export DIR` writes the student handout.
    Lab(lab::Args),
    /// Check a cluster for linearizability under faults (Jepsen-style).
    Check(check::Args),
    /// Grade a node you wrote (docs/node-protocol.md): conformance tests, then a cluster under faults.
    GradeNode(grade_node::Args),
    /// Make a cluster CA and certificate for TLS (Compose, Kubernetes, components started by hand).
    Certs(tls::CertsArgs),
}

/// The parser of `kvlab node` alone. A cluster runs a node process per
/// member, and the full parser builds every subcommand's arguments at each
/// start: some 0.4 MiB of code resident in every node for flags it never
/// sees (ARCHITECTURE.md, "Round five"). So a process whose first argument
/// is `node` builds this one instead; its usage, help and errors read as the
/// full parser's do for `kvlab node`.
#[derive(Parser)]
#[command(name = "kvlab", version)]
struct NodeCli {
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Run one storage node (normally started by the coordinator).
    Node(node::Args),
}

fn parse_command() -> Command {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|first| first == "node")
    {
        let NodeCommand::Node(args) = NodeCli::parse().command;
        return Command::Node(args);
    }
    Cli::parse().command
}

fn main() -> std::process::ExitCode {
    kvlab::metrics::alloc::count_if_asked();
    let command = parse_command();
    init_tracing(&command);
    if matches!(command, Command::Client(_) | Command::Lab(_)) {
        exit_quietly_on_closed_pipe();
    }
    // Every subcommand: listeners and clients alike need descriptors.
    kvlab::http::raise_open_file_limit();
    let runtime = match build_runtime(&command) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvlab: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let done = match command {
            Command::Up(args) => up::run(args).await,
            Command::Gateway(args) => gateway::run(args).await,
            Command::Coordinator(args) => coordinator::run(args).await,
            Command::Registry(args) => registry::run(args).await,
            Command::Node(args) => node::run(args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::BenchServer(args) => bench::bare::serve(args).await,
            Command::BenchSkeleton(args) => bench::skeleton::serve(args).await,
            // Threads that block on fsync: off the runtime's threads.
            Command::BenchDisk(args) => {
                tokio::task::spawn_blocking(move || bench::disk::run(&args))
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|r| r)
            }
            Command::Lab(args) => lab::run(args).await,
            Command::Certs(args) => tls::certs(&args).map_err(anyhow::Error::from),
            // The client's exit code says whether the command worked.
            Command::Client(args) => return client::run(args).await,
            // So does the autograder's (2 below --min-score, 130 interrupted).
            Command::Assess(args) => return assess::run(args).await,
            // 0 valid, 1 a violation, 2 unknown.
            Command::Check(args) => return check::run(args).await,
            // 0 every test passed, 2 a test failed, 130 interrupted.
            Command::GradeNode(args) => return grade_node::run(args).await,
        };
        done.map(|()| 0)
    });
    match result {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(code) => std::process::ExitCode::from(code.clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("kvlab: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Nodes are many and small, so each runs its tasks on one thread: a
/// current-thread runtime, on the main thread. Each worker thread would cost
/// memory in every node process (its stack, its own malloc arena, and the
/// work-stealing scheduler's code paged in: about 300 KiB per node in all).
/// One thread is enough because a node mostly waits: the WAL fsyncs on its
/// own thread and snapshot copies run on the blocking pool. (A dump of the
/// whole store, `GET /data` or `/snapshot`, does hold up the node's other
/// tasks while it is serialized; at lab sizes that is milliseconds.) Measured
/// with `kvlab bench` at 64 clients, writes and reads are as fast as with two
/// workers per node. The other components keep the default.
fn build_runtime(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    // A skeleton replica stands in for a node: the same runtime.
    let node_like = match command {
        Command::Node(_) => true,
        Command::BenchSkeleton(args) => args.role == kvlab::bench::skeleton::Role::Replica,
        _ => false,
    };
    let mut builder = if node_like {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build()
}

/// Rust ignores SIGPIPE, so printing to a pipe whose reader has gone
/// (`kvlab client status | head -1`) is an error, and `println!` panics on
/// it. The one-shot printing commands take the Unix default back: the
/// process ends silently, as `cat` would. The servers keep ignoring it: a
/// console pipe that closes must not take a cluster down, and the clients
/// that start clusters (`check`, `assess`) must stop them first.
fn exit_quietly_on_closed_pipe() {
    // SAFETY: called once at start, before any thread is spawned; SIG_DFL is
    // a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Logs go to stderr; `RUST_LOG` overrides the level. The coordinator's event
/// log is separate (stdout) and always on unless `--quiet`. `kvlab up` logs
/// nothing by default: its console is the event log, and raw log lines would
/// interleave with it (the events say what the warnings would).
fn init_tracing(command: &Command) {
    let default = match command {
        Command::Node(_) => "info",
        Command::Up(_) => "off",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Nodes' stderr is a log file: colour only on a terminal.
    let ansi = kvlab::events::color_on(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Control characters in logged values are escaped (see `events`).
        .with_writer(kvlab::events::LogWriter { ansi })
        .with_ansi(ansi)
        .init();
}
