//! The lab's shape with nothing else in it: how fast could *any* kvlab go on
//! this machine? For `bench/compare.sh`'s skeleton line (`kvlab
//! bench-skeleton`, hidden).
//!
//! [`super::bare`] is the ceiling of one HTTP request. A kvlab read is more
//! than that: the gateway answers only once R follower processes have
//! answered it. A write is answered only once the leader and W followers,
//! each a process of its own, have it on disk. The skeleton does exactly
//! that part, which the lab's contract makes every implementation do, and
//! nothing more:
//!
//! - **the gateway** (`--role gateway`) answers kvlab's public requests
//!   (`POST /write`, `GET /read/{key}`, JSON) through the same HTTP stack
//!   and runtime as `kvlab up`. Each read asks every `--read-from` replica
//!   and each write goes to the `--write-to` replica. Requests for one
//!   replica that arrive while its exchange is busy leave together in the
//!   next one: batching, one exchange in flight per replica, as kvlab's
//!   coordinator does;
//! - **a replica** (`--role replica`, a single-threaded runtime like a
//!   node's) keeps keys and values in a map. It answers a batch of reads
//!   from the map. It writes a batch of writes to its file and fdatasyncs it
//!   (on a blocking thread, never on the runtime's); given
//!   `--replicate-to`, it also sends the batch to those replicas at once and
//!   answers when its own fsync and `--quorum` of theirs are done;
//! - **between them, the cheapest wire there is**: one TCP connection per
//!   pair, length-prefixed binary frames, no HTTP, no JSON. That is the
//!   "compact binary encoding on long-lived streams" issue 26 proposed for
//!   kvlab's internal hops, at its best.
//!
//! No terms, seqs, versions, commit points, recovery, metrics, events or
//! checks: whatever kvlab adds is on top of this. So what the skeleton
//! reaches on a machine, kvlab (with this HTTP stack in front) cannot
//! exceed there. It is a measuring instrument, not a store: a replica that
//! fails stops answering, and nothing recovers it.

use std::collections::HashMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::api::WriteRequest;

/// `kvlab bench-skeleton`: one process of the skeleton.
#[derive(Debug, Clone, clap::Args)]
pub struct SkeletonArgs {
    /// Which process this is.
    #[arg(long, value_enum)]
    pub role: Role,
    /// Port to listen on, on loopback: HTTP for the gateway, the binary wire
    /// for a replica.
    #[arg(long)]
    pub port: u16,
    /// Gateway: the replicas every read asks (R of them), by port on loopback.
    #[arg(long, value_delimiter = ',')]
    pub read_from: Vec<u16>,
    /// Gateway: the replica every write goes to (the leader), by port.
    #[arg(long)]
    pub write_to: Option<u16>,
    /// Replica: the directory of its log file. Every batch of writes is
    /// written there and fdatasynced before it is answered.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Replica (the leader): the replicas each batch of writes is sent to.
    #[arg(long, value_delimiter = ',')]
    pub replicate_to: Vec<u16>,
    /// Replica (the leader): how many of them must have a batch on disk
    /// before it is answered (the lab's W).
    #[arg(long, default_value_t = 2)]
    pub quorum: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The public side: kvlab's HTTP/JSON requests in, binary batches out.
    Gateway,
    /// A leader or a follower: a map, a file, and maybe replicas of its own.
    Replica,
}

/// Starts the process `args` describes and serves until Ctrl-C or SIGTERM.
pub async fn serve(args: SkeletonArgs) -> anyhow::Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    match args.role {
        Role::Gateway => {
            let gateway = Gateway::connect(&args.read_from, args.write_to).await?;
            let listener = crate::http::bind(addr).await?;
            crate::http::serve(listener, gateway.router(), crate::http::shutdown_signal()).await
        }
        Role::Replica => {
            let dir = args.dir.as_deref().context(
                "a replica needs --dir: it writes every batch of writes to a file there",
            )?;
            let replica = Replica::open(dir, &args.replicate_to, args.quorum).await?;
            let listener = crate::http::bind(addr).await?;
            tokio::select! {
                served = replica.serve(listener) => served,
                () = crate::http::shutdown_signal() => Ok(()),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The wire: length-prefixed frames
// ---------------------------------------------------------------------------

/// A frame's first byte after its length: what the batch holds.
const READS: u8 = 0;
const WRITES: u8 = 1;
/// The largest frame either side accepts; a batch of 64 writes is a few KiB.
const MAX_FRAME: usize = 64 << 20;
/// How many requests one exchange carries at most.
const MAX_BATCH: usize = 1024;

/// What went wrong on the wire. Each ends the connection it happened on.
#[derive(Debug, Error)]
pub enum WireError {
    #[error("a frame of {0} bytes is over the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("the frame ends in the middle of an item")]
    Truncated,
    #[error("unknown batch kind {0}")]
    UnknownKind(u8),
    #[error("a key or value is not UTF-8")]
    NotUtf8,
    #[error("the answer holds {got} items for a batch of {sent}")]
    WrongCount { sent: usize, got: usize },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One request of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Read(String),
    Write(String, String),
}

/// A batch of items of one kind, as one frame body: the kind, the count,
/// then each item as length-prefixed strings.
pub fn encode_batch(items: &[Item]) -> Vec<u8> {
    let kind = match items.first() {
        Some(Item::Write(..)) => WRITES,
        _ => READS,
    };
    let mut body = vec![kind];
    body.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for item in items {
        match item {
            Item::Read(key) => put_str(&mut body, key),
            Item::Write(key, value) => {
                put_str(&mut body, key);
                put_str(&mut body, value);
            }
        }
    }
    body
}

/// The items of a frame body [`encode_batch`] made.
pub fn decode_batch(body: &[u8]) -> Result<Vec<Item>, WireError> {
    let mut cursor = Cursor(body);
    let kind = cursor.u8()?;
    if kind != READS && kind != WRITES {
        return Err(WireError::UnknownKind(kind));
    }
    let count = cursor.u32()? as usize;
    // Each item takes at least 4 bytes: a count beyond that is a lie.
    let mut items = Vec::with_capacity(count.min(body.len() / 4));
    for _ in 0..count {
        let key = cursor.string()?;
        items.push(match kind {
            READS => Item::Read(key),
            _ => Item::Write(key, cursor.string()?),
        });
    }
    Ok(items)
}

/// The answers to a batch: for reads, each value or none; for writes, none
/// (their count says they are durable).
pub fn encode_answers(count: usize, values: &[Option<String>]) -> Vec<u8> {
    let mut body = (count as u32).to_le_bytes().to_vec();
    for value in values {
        match value {
            Some(v) => {
                body.push(1);
                put_str(&mut body, v);
            }
            None => body.push(0),
        }
    }
    body
}

/// The answers [`encode_answers`] made, for a batch of `sent` items.
pub fn decode_answers(body: &[u8], sent: usize, reads: bool) -> Result<Vec<Answer>, WireError> {
    let mut cursor = Cursor(body);
    let got = cursor.u32()? as usize;
    if got != sent {
        return Err(WireError::WrongCount { sent, got });
    }
    (0..sent)
        .map(|_| match reads {
            false => Ok(Answer::Durable),
            true => match cursor.u8()? {
                0 => Ok(Answer::Value(None)),
                _ => Ok(Answer::Value(Some(cursor.string()?))),
            },
        })
        .collect()
}

/// A replica's answer to one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Value(Option<String>),
    Durable,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Reads a frame body; `None` when the peer closed between frames.
async fn read_frame(from: &mut BufReader<OwnedReadHalf>) -> Result<Option<Vec<u8>>, WireError> {
    let mut len = [0u8; 4];
    match from.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0; len];
    from.read_exact(&mut body).await?;
    Ok(Some(body))
}

async fn write_frame(to: &mut BufWriter<OwnedWriteHalf>, body: &[u8]) -> Result<(), WireError> {
    to.write_all(&(body.len() as u32).to_le_bytes()).await?;
    to.write_all(body).await?;
    to.flush().await?;
    Ok(())
}

/// Reads the little-endian fields of a frame body, checking each length.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn string(&mut self) -> Result<String, WireError> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?.to_vec();
        String::from_utf8(bytes).map_err(|_| WireError::NotUtf8)
    }
}

// ---------------------------------------------------------------------------
// A link: one connection to a replica, batched
// ---------------------------------------------------------------------------

type Waiting = (Item, oneshot::Sender<Result<Answer, String>>);

/// The gateway's side of one connection to a replica. Callers queue their
/// item; the link's task sends whatever is queued as one frame, waits for
/// the answer frame, hands each caller its answer, and goes again.
struct Link {
    queue: mpsc::UnboundedSender<Waiting>,
}

impl Link {
    async fn connect(port: u16) -> anyhow::Result<Link> {
        let stream = connect_patiently(port).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run_link(stream, rx));
        Ok(Link { queue: tx })
    }

    async fn call(&self, item: Item) -> Result<Answer, String> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send((item, tx))
            .map_err(|_| "the link to the replica is down".to_string())?;
        rx.await
            .map_err(|_| "the link to the replica is down".to_string())?
    }
}

async fn run_link(stream: TcpStream, mut queue: mpsc::UnboundedReceiver<Waiting>) {
    let (from, to) = stream.into_split();
    let (mut from, mut to) = (BufReader::new(from), BufWriter::new(to));
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (items, waiting): (Vec<Item>, Vec<_>) = batch.into_iter().unzip();
        let reads = matches!(items[0], Item::Read(_));
        let answers = exchange(&mut from, &mut to, &encode_batch(&items))
            .await
            .and_then(|body| decode_answers(&body, items.len(), reads));
        match answers {
            Ok(answers) => {
                for (tx, answer) in waiting.into_iter().zip(answers) {
                    let _ = tx.send(Ok(answer));
                }
            }
            Err(e) => {
                // The connection is out of step now: fail this batch and
                // every later one (dropping the queue fails their callers).
                for tx in waiting {
                    let _ = tx.send(Err(format!("replica link failed: {e}")));
                }
                return;
            }
        }
    }
}

async fn exchange(
    from: &mut BufReader<OwnedReadHalf>,
    to: &mut BufWriter<OwnedWriteHalf>,
    body: &[u8],
) -> Result<Vec<u8>, WireError> {
    write_frame(to, body).await?;
    read_frame(from)
        .await?
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into())
}

/// Connects to a replica on loopback, retrying for a while: the skeleton's
/// processes start together, and a replica may not listen yet.
async fn connect_patiently(port: u16) -> anyhow::Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("replica on port {port} not there yet: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e).context(format!("no replica listens on port {port}")),
        }
    }
}

// ---------------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------------

struct Gateway {
    readers: Vec<Link>,
    writer: Option<Link>,
}

/// Every answer: the size of kvlab's, without its fields about the cluster.
#[derive(Serialize)]
struct Answered {
    key: String,
    value: String,
    version: u64,
}

impl Gateway {
    async fn connect(read_from: &[u16], write_to: Option<u16>) -> anyhow::Result<Arc<Gateway>> {
        if read_from.is_empty() && write_to.is_none() {
            bail!(
                "a gateway needs --read-from, --write-to or both: it has nowhere to send requests"
            );
        }
        let mut readers = Vec::with_capacity(read_from.len());
        for &port in read_from {
            readers.push(Link::connect(port).await?);
        }
        let writer = match write_to {
            Some(port) => Some(Link::connect(port).await?),
            None => None,
        };
        Ok(Arc::new(Gateway { readers, writer }))
    }

    fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/read/{key}", get(read))
            .route("/write", post(write))
            .route("/health", get(|| async { "ok" }))
            .with_state(self)
    }
}

fn unavailable(why: String) -> Response {
    let body = serde_json::json!({ "detail": why });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

async fn read(State(g): State<Arc<Gateway>>, UrlPath(key): UrlPath<String>) -> Response {
    if g.readers.is_empty() {
        return unavailable("this gateway has no --read-from replicas".into());
    }
    let asked = g.readers.iter().map(|l| l.call(Item::Read(key.clone())));
    let mut found = None;
    for answer in futures::future::join_all(asked).await {
        match answer {
            Ok(Answer::Value(Some(v))) => found = Some(v),
            Ok(_) => {}
            Err(why) => return unavailable(why),
        }
    }
    match found {
        Some(value) => Json(Answered {
            key,
            value,
            version: 1,
        })
        .into_response(),
        None => {
            let body = serde_json::json!({ "detail": format!("Key '{key}' not found") });
            (StatusCode::NOT_FOUND, Json(body)).into_response()
        }
    }
}

async fn write(State(g): State<Arc<Gateway>>, Json(w): Json<WriteRequest>) -> Response {
    let Some(writer) = &g.writer else {
        return unavailable("this gateway has no --write-to replica".into());
    };
    match writer
        .call(Item::Write(w.key.clone(), w.value.clone()))
        .await
    {
        Ok(_) => Json(Answered {
            key: w.key,
            value: w.value,
            version: 1,
        })
        .into_response(),
        Err(why) => unavailable(why),
    }
}

// ---------------------------------------------------------------------------
// A replica
// ---------------------------------------------------------------------------

/// The file a replica writes its batches to: preallocated, written over in
/// a ring, so an fdatasync flushes data and never the file's size (as
/// kvlab's WAL segments are preallocated).
struct Disk {
    file: File,
    /// Where the next batch goes.
    at: Mutex<u64>,
}

const DISK_BYTES: u64 = 16 << 20;

impl Disk {
    fn open(dir: &Path) -> anyhow::Result<Disk> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join("skeleton.log");
        let file = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let zeros = vec![0u8; 1 << 20];
        for i in 0..DISK_BYTES / zeros.len() as u64 {
            file.write_all_at(&zeros, i * zeros.len() as u64)?;
        }
        file.sync_all()?;
        Ok(Disk {
            file,
            at: Mutex::new(0),
        })
    }

    /// Writes `batch` and fdatasyncs it. Blocks: call it off the runtime.
    fn append(&self, batch: &[u8]) -> std::io::Result<()> {
        let mut at = self.at.lock().unwrap();
        if *at + batch.len() as u64 > DISK_BYTES {
            *at = 0;
        }
        self.file.write_all_at(batch, *at)?;
        *at += batch.len() as u64;
        self.file.sync_data()
    }
}

/// The leader's side of one connection to a follower: one frame at a time.
type FollowerLink = Arc<tokio::sync::Mutex<(BufReader<OwnedReadHalf>, BufWriter<OwnedWriteHalf>)>>;

struct Replica {
    map: Mutex<HashMap<String, String>>,
    disk: Arc<Disk>,
    followers: Vec<FollowerLink>,
    quorum: usize,
}

impl Replica {
    async fn open(dir: &Path, replicate_to: &[u16], quorum: usize) -> anyhow::Result<Arc<Replica>> {
        if !replicate_to.is_empty() && quorum > replicate_to.len() {
            bail!(
                "--quorum {quorum} cannot be met by {} --replicate-to replicas",
                replicate_to.len()
            );
        }
        let dir = dir.to_path_buf();
        let disk = tokio::task::spawn_blocking(move || Disk::open(&dir)).await??;
        let mut followers = Vec::with_capacity(replicate_to.len());
        for &port in replicate_to {
            let (from, to) = connect_patiently(port).await?.into_split();
            followers.push(Arc::new(tokio::sync::Mutex::new((
                BufReader::new(from),
                BufWriter::new(to),
            ))));
        }
        Ok(Arc::new(Replica {
            map: Mutex::new(HashMap::new()),
            disk: Arc::new(disk),
            followers,
            quorum,
        }))
    }

    async fn serve(self: Arc<Self>, listener: TcpListener) -> anyhow::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.serve_connection(stream).await {
                    tracing::warn!("skeleton replica: a connection failed: {e}");
                }
            });
        }
    }

    async fn serve_connection(&self, stream: TcpStream) -> Result<(), WireError> {
        let (from, to) = stream.into_split();
        let (mut from, mut to) = (BufReader::new(from), BufWriter::new(to));
        while let Some(body) = read_frame(&mut from).await? {
            let answer = self.answer(body).await?;
            write_frame(&mut to, &answer).await?;
        }
        Ok(())
    }

    /// The answer frame to one batch.
    async fn answer(&self, body: Vec<u8>) -> Result<Vec<u8>, WireError> {
        let items = decode_batch(&body)?;
        if body[0] == READS {
            let map = self.map.lock().unwrap();
            let values: Vec<Option<String>> = items
                .iter()
                .map(|item| match item {
                    Item::Read(key) => map.get(key).cloned(),
                    Item::Write(..) => None,
                })
                .collect();
            return Ok(encode_answers(items.len(), &values));
        }
        let body = Arc::new(body);
        self.make_durable(&body).await?;
        let mut map = self.map.lock().unwrap();
        for item in items.iter() {
            if let Item::Write(key, value) = item {
                map.insert(key.clone(), value.clone());
            }
        }
        Ok(encode_answers(items.len(), &[]))
    }

    /// Own fsync and `quorum` followers', all started at once.
    async fn make_durable(&self, body: &Arc<Vec<u8>>) -> Result<(), WireError> {
        let disk = self.disk.clone();
        let own = body.clone();
        let own = tokio::task::spawn_blocking(move || disk.append(&own));
        let mut acks: FuturesUnordered<_> = self
            .followers
            .iter()
            .map(|link| {
                // A task of its own: a follower that answers after the
                // quorum still gets its whole exchange, so the connection
                // stays in step.
                let (link, body) = (link.clone(), body.clone());
                tokio::spawn(async move {
                    let mut link = link.lock().await;
                    let (from, to) = &mut *link;
                    exchange(from, to, &body).await
                })
            })
            .collect();
        let mut durable = 0;
        while durable < self.quorum.min(self.followers.len()) {
            match acks.next().await {
                Some(Ok(Ok(_))) => durable += 1,
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => return Err(std::io::Error::other(e).into()),
                None => break,
            }
        }
        own.await.map_err(std::io::Error::other)??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_and_answers_survive_the_wire() {
        let reads = vec![Item::Read("a".into()), Item::Read("bé".into())];
        assert_eq!(decode_batch(&encode_batch(&reads)).unwrap(), reads);
        let writes = vec![Item::Write("k".into(), "v".repeat(100))];
        assert_eq!(decode_batch(&encode_batch(&writes)).unwrap(), writes);
        let values = [Some("x".to_string()), None];
        let answers = decode_answers(&encode_answers(2, &values), 2, true).unwrap();
        assert_eq!(
            answers,
            vec![Answer::Value(Some("x".into())), Answer::Value(None)]
        );
        let durable = decode_answers(&encode_answers(3, &[]), 3, false).unwrap();
        assert_eq!(durable, vec![Answer::Durable; 3]);
    }

    #[test]
    fn a_damaged_frame_is_an_error_not_a_panic() {
        let body = encode_batch(&[Item::Write("key".into(), "value".into())]);
        for cut in 0..body.len() {
            assert!(decode_batch(&body[..cut]).is_err(), "cut at {cut}");
        }
        assert!(matches!(
            decode_batch(&[7, 0, 0, 0, 0]),
            Err(WireError::UnknownKind(7))
        ));
        // A count far beyond the bytes that follow allocates nothing big.
        assert!(matches!(
            decode_batch(&[READS, 255, 255, 255, 255]),
            Err(WireError::Truncated)
        ));
        assert!(matches!(
            decode_answers(&encode_answers(1, &[]), 2, false),
            Err(WireError::WrongCount { sent: 2, got: 1 })
        ));
    }

    #[tokio::test]
    async fn an_impossible_quorum_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = Replica::open(dir.path(), &[1], 2).await.err().unwrap();
        assert!(err.to_string().contains("--quorum 2"), "{err}");
        let err = Gateway::connect(&[], None).await.err().unwrap();
        assert!(err.to_string().contains("nowhere"), "{err}");
    }

    /// Three followers, a leader with W = 2, a gateway reading from two
    /// followers: a write is read back through the other followers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_written_value_is_read_back_through_the_skeleton() {
        let dir = tempfile::tempdir().unwrap();
        let mut ports = vec![];
        for i in 0..3 {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            ports.push(listener.local_addr().unwrap().port());
            let replica = Replica::open(&dir.path().join(format!("f{i}")), &[], 2)
                .await
                .unwrap();
            tokio::spawn(replica.serve(listener));
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let leader_port = listener.local_addr().unwrap().port();
        let leader = Replica::open(&dir.path().join("leader"), &ports, 2)
            .await
            .unwrap();
        tokio::spawn(leader.serve(listener));
        let gateway = Gateway::connect(&ports[1..], Some(leader_port))
            .await
            .unwrap();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(crate::http::serve(
            listener,
            gateway.router(),
            std::future::pending(),
        ));

        let http = reqwest::Client::new();
        let missing = http.get(format!("{url}/read/k")).send().await.unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let written = http
            .post(format!("{url}/write"))
            .json(&serde_json::json!({"key": "k", "value": "v1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(written.status(), StatusCode::OK);
        // The leader answered once two of three followers had it; the third
        // may still be writing, and a read asks followers 2 and 3.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let read = http.get(format!("{url}/read/k")).send().await.unwrap();
            if read.status() == StatusCode::OK {
                let body: serde_json::Value = read.json().await.unwrap();
                assert_eq!(body["value"], "v1");
                break;
            }
            assert!(Instant::now() < deadline, "never read back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let bad = http
            .post(format!("{url}/write"))
            .header("content-type", "application/json")
            .body("not json")
            .send()
            .await
            .unwrap();
        assert!(bad.status().is_client_error(), "{}", bad.status());
    }
}
