//! The coordinator in etcd mode (`--control-store etcd://...`): one of
//! several coordinator processes sharing a cluster, of which one is
//! *active* and the others are *standbys*, as Patroni runs PostgreSQL.
//!
//! Life of a coordinator process here:
//! 1. It takes a lease in etcd (`--lease-ttl`, kept alive every third of
//!    it), registers under `members/<id>`, and serves its port as a
//!    **standby**: `/status` (who is in charge), `/health` and `/metrics`;
//!    every other route answers 503 [`NOT_ACTIVE_COORDINATOR`] naming the
//!    active one in [`HEADER_ACTIVE_COORDINATOR`].
//! 2. It polls `active` every 100 ms; when it is absent it campaigns
//!    ([`EtcdStore::campaign`]). Winning gives it an epoch higher than any
//!    before.
//! 3. **Takeover**: it loads the cluster map from etcd and becomes a full
//!    coordinator on the same port, with its epoch on every request to a
//!    node; it takes charge of the nodes that still run instead of starting
//!    them again.
//! 4. **Deposition**: if etcd says the lease expired, or a lease's TTL has
//!    passed since the last renewal etcd confirmed (counted from when that
//!    renewal was *sent*, so before etcd could have let the lease go), or
//!    `active` is no longer its own, it stops acting at once (every route
//!    answers 503) and the process exits with code 0, so that its
//!    supervisor (`kvlab up --ha`, systemd, Compose) starts it again as a
//!    standby. It does not stop the nodes: they belong to the next active
//!    coordinator. A standby whose lease lapses exits the same way.
//!
//! Invariant: a coordinator acts (serves the cluster's routes) only while
//! its lease is valid by its own clock ([`ControlPlane::acting`]); the
//! nodes' epoch fencing covers the rest (a request already sent when the
//! process was paused carries an epoch the nodes have since seen beaten).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tower::ServiceExt;

use super::{Args, Config, Coordinator};
use crate::api::*;
use crate::control::etcd::{Active, EtcdError, EtcdStore, Mandate, DEFAULT_CLUSTER_NAME};
use crate::control::StoreSpec;
use crate::http::ApiError;

/// How often a coordinator reads `active` (a standby, to campaign as soon
/// as it is gone; the active one, to notice it is no longer its own).
const POLL: Duration = Duration::from_millis(100);

/// How often the standbys list is read again.
const MEMBERS_EVERY: Duration = Duration::from_secs(1);

/// The flags of the control plane (`kvlab coordinator`).
#[derive(Debug, Clone, clap::Args)]
pub struct ControlArgs {
    /// Where the cluster map lives: `file` (coordinator.json in the data
    /// directory; one coordinator) or `etcd://HOST:PORT[,HOST:PORT...]`
    /// (several coordinators share the cluster; the one holding etcd's
    /// lease is active, the others stand by and take over when it lapses).
    #[arg(
        long,
        value_name = "file|etcd://HOST:PORT[,...]",
        default_value = "file"
    )]
    pub control_store: StoreSpec,
    /// Seconds of the active coordinator's lease in etcd: how long the
    /// standbys wait after it stops renewing (it dies, pauses, or loses
    /// etcd) before one takes over.
    #[arg(long, value_name = "S", default_value_t = 3)]
    pub lease_ttl: u64,
    /// The cluster's name in etcd: its keys live under `/kvlab/<name>/`, so
    /// several clusters can share one etcd.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_CLUSTER_NAME)]
    pub cluster_name: String,
    /// The URL the other processes reach this coordinator at, as the
    /// control plane shows it (etcd mode; default: from --host and --port,
    /// which is no use when listening on 0.0.0.0 in a container).
    #[arg(long, value_name = "URL")]
    pub advertise: Option<String>,
}

impl Default for ControlArgs {
    fn default() -> ControlArgs {
        ControlArgs {
            control_store: StoreSpec::File,
            lease_ttl: 3,
            cluster_name: DEFAULT_CLUSTER_NAME.into(),
            advertise: None,
        }
    }
}

/// A setting etcd mode cannot run with.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ControlConfigError {
    #[error("--lease-ttl must be between 1 and 300 seconds, got {0}")]
    BadLeaseTtl(u64),
    #[error(
        "--fresh does not go with --control-store etcd: a coordinator that takes over must \
         keep the cluster. To start empty, stop every coordinator, delete the cluster's keys \
         (`etcdctl del --prefix /kvlab/{0}/`) and the data directory"
    )]
    Fresh(String),
    #[error("--coordinator-id must be 1 to 64 letters, digits, '-', '_' or '.', got {0:?}")]
    BadId(String),
}

/// Checks `--coordinator-id` for etcd mode: it names a key there.
fn check_id(id: &str) -> Result<(), ControlConfigError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ControlConfigError::BadId(id.to_string()))
    }
}

impl ControlArgs {
    fn validate(&self, fresh: bool) -> Result<(), ControlConfigError> {
        if !(1..=300).contains(&self.lease_ttl) {
            return Err(ControlConfigError::BadLeaseTtl(self.lease_ttl));
        }
        if fresh {
            return Err(ControlConfigError::Fresh(self.cluster_name.clone()));
        }
        Ok(())
    }
}

/// This process's part in the control plane.
enum Role {
    Standby,
    Active {
        coordinator: Arc<Coordinator>,
        router: Router,
        epoch: u64,
    },
    Deposed,
}

/// What the last reads of etcd found.
#[derive(Default)]
struct Seen {
    active: Option<Active>,
    members: Vec<CoordinatorRef>,
}

/// One coordinator process's control plane state.
pub struct ControlPlane {
    store: EtcdStore,
    me: CoordinatorRef,
    lease: i64,
    ttl: Duration,
    /// When the last renewal etcd confirmed was sent.
    renewed: tokio::sync::watch::Receiver<Instant>,
    role: Mutex<Role>,
    seen: Mutex<Seen>,
}

impl ControlPlane {
    /// Whether the lease is still ours by our clock: less than a TTL since
    /// the last confirmed renewal was sent.
    fn lease_valid(&self) -> bool {
        self.renewed.borrow().elapsed() < self.ttl
    }

    /// The active coordinator's router, if this process is it and may act.
    fn acting(&self) -> Option<(Arc<Coordinator>, Router)> {
        if !self.lease_valid() {
            return None;
        }
        match &*self.role.lock().unwrap() {
            Role::Active {
                coordinator,
                router,
                ..
            } => Some((coordinator.clone(), router.clone())),
            _ => None,
        }
    }

    fn this(&self) -> &'static str {
        match &*self.role.lock().unwrap() {
            Role::Active { .. } if self.lease_valid() => "active",
            Role::Active { .. } | Role::Deposed => "deposed",
            Role::Standby => "standby",
        }
    }

    /// `/status`' `control_plane` as this process sees it.
    pub fn view(&self) -> ControlPlaneView {
        let seen = self.seen.lock().unwrap();
        let mine = match &*self.role.lock().unwrap() {
            Role::Active { epoch, .. } => Some(*epoch),
            _ => None,
        };
        let (active, epoch) = match (mine, &seen.active) {
            (Some(epoch), _) => (Some(self.me.clone()), epoch),
            (None, Some(a)) => (Some(a.record.coordinator.clone()), a.record.epoch),
            (None, None) => (None, 0),
        };
        let active_id = active.as_ref().map(|a| a.id.clone());
        ControlPlaneView {
            mode: "etcd".into(),
            store: self.store.endpoints(),
            active,
            epoch,
            standbys: seen
                .members
                .iter()
                .filter(|m| Some(&m.id) != active_id.as_ref())
                .cloned()
                .collect(),
            lease_ttl_s: Some(self.ttl.as_secs()),
            this: self.this().into(),
        }
    }

    fn active_url(&self) -> Option<String> {
        let seen = self.seen.lock().unwrap();
        seen.active
            .as_ref()
            .map(|a| a.record.coordinator.url.clone())
    }

    /// Stops acting at once and ends the process (see the module's
    /// "Deposition"): code 0, so that a supervisor starts it again.
    fn depose(&self, why: &str) -> ! {
        let was_active = {
            let mut role = self.role.lock().unwrap();
            let was = matches!(*role, Role::Active { .. });
            *role = Role::Deposed;
            was
        };
        if was_active {
            println!(
                "⛔ coordinator {} deposed: {why}. It no longer acts for the cluster (its \
                 nodes keep running for the next active coordinator) and exits, so that its \
                 supervisor starts it again as a standby.",
                self.me.id
            );
        } else {
            println!(
                "⛔ standby coordinator {} lost its lease: {why}. It exits, so that its \
                 supervisor starts it again with a new one.",
                self.me.id
            );
        }
        std::process::exit(0)
    }

    /// Reads `active` (and, every [`MEMBERS_EVERY`], the members) into
    /// [`Seen`]; returns what `active` holds.
    async fn refresh(&self, members_due: bool) -> Result<Option<Active>, EtcdError> {
        let active = self.store.active().await?;
        let members = if members_due {
            Some(self.store.members().await?)
        } else {
            None
        };
        let mut seen = self.seen.lock().unwrap();
        seen.active = active.clone();
        if let Some(m) = members {
            seen.members = m;
        }
        Ok(active)
    }
}

/// Runs this coordinator in etcd mode until Ctrl-C / SIGTERM, or until it
/// is deposed (then the process exits).
pub async fn run(args: &Args, config: Config, endpoints: Vec<String>) -> anyhow::Result<()> {
    let control = &args.control;
    control.validate(args.cluster.storage.fresh)?;
    let me = config.me();
    check_id(&me.id)?;
    let id = me.id.clone();
    let ttl = Duration::from_secs(control.lease_ttl);
    let store = EtcdStore::connect(&endpoints, &control.cluster_name, etcd_timeout(ttl)).await?;
    let lease = store.grant_lease(ttl).await?;
    let (renewed_tx, renewed) = tokio::sync::watch::channel(Instant::now());
    let cp = Arc::new(ControlPlane {
        store,
        me,
        lease,
        ttl,
        renewed,
        role: Mutex::new(Role::Standby),
        seen: Mutex::default(),
    });
    tokio::spawn(keep_lease(cp.clone(), renewed_tx));
    tokio::spawn(watchdog(cp.clone()));
    cp.store.register(&cp.me, lease).await?;
    let listener = crate::http::bind(config.addr).await?;
    println!(
        "kvlab coordinator {id}: control plane in etcd at {} (keys /kvlab/{}/, lease {} s); \
         standing by until it holds the lease",
        cp.store.endpoints(),
        control.cluster_name,
        ttl.as_secs()
    );

    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let on_stop = cp.clone();
    let shutdown = async move {
        crate::http::shutdown_signal().await;
        let _ = stopping_tx.send(true);
        if let Some((c, _)) = on_stop.acting() {
            c.ui.close();
        }
    };
    let server = tokio::spawn(crate::http::serve(
        listener,
        dispatcher(cp.clone(), config.admin_token.clone()),
        shutdown,
    ));
    let mut wait_stop = stopping.clone();
    let mandate = tokio::select! {
        m = campaign(&cp) => m,
        _ = wait_stop.wait_for(|s| *s) => {
            let _ = server.await;
            resign(&cp).await;
            return Ok(());
        }
    };
    let coordinator = take_over(&cp, config, mandate.clone()).await?;
    tokio::spawn(watch_active(cp.clone(), mandate.revision));
    let result = super::run_cluster(coordinator, server, stopping).await;
    resign(&cp).await;
    result
}

/// etcd calls get a third of the lease each: a keep-alive that took
/// longer would leave too little of the lease to renew it in time.
fn etcd_timeout(ttl: Duration) -> Duration {
    (ttl / 3).clamp(Duration::from_millis(300), Duration::from_secs(2))
}

/// Ends the lease on the way out: a standby need not wait out the TTL.
async fn resign(cp: &ControlPlane) {
    if let Err(e) = cp.store.revoke_lease(cp.lease).await {
        eprintln!("kvlab coordinator {}: {e}", cp.me.id);
    }
}

/// Keeps the lease alive every third of its TTL. A failed stream is opened
/// again (etcd may have changed leader) until the watchdog sees the TTL
/// pass; a lease etcd says has expired deposes at once.
async fn keep_lease(cp: Arc<ControlPlane>, renewed: tokio::sync::watch::Sender<Instant>) {
    loop {
        let e = cp
            .store
            .keep_alive(cp.lease, cp.ttl / 3, renewed.clone())
            .await;
        if matches!(e, EtcdError::LeaseExpired { .. }) {
            cp.depose(&e.to_string());
        }
        eprintln!("kvlab coordinator {}: {e}; trying again", cp.me.id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deposes the moment the lease's TTL has passed since the last renewal.
async fn watchdog(cp: Arc<ControlPlane>) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        if !cp.lease_valid() {
            let since = cp.renewed.borrow().elapsed();
            cp.depose(&format!(
                "no renewal of its lease confirmed for {:.1} s (TTL {} s)",
                since.as_secs_f64(),
                cp.ttl.as_secs()
            ));
        }
    }
}

/// One round of a standby's loop.
enum Round {
    Won(Mandate),
    /// Someone is active.
    Held(Active),
    /// `active` was absent, but another campaign got there first.
    Lost,
}

async fn round(cp: &ControlPlane, members_due: bool) -> Result<Round, EtcdError> {
    if let Some(active) = cp.refresh(members_due).await? {
        return Ok(Round::Held(active));
    }
    Ok(match cp.store.campaign(&cp.me, cp.lease).await? {
        Some(mandate) => Round::Won(mandate),
        None => Round::Lost,
    })
}

/// The standby's loop: polls `active`, campaigns when it is absent, and
/// returns the mandate once it wins.
async fn campaign(cp: &ControlPlane) -> Mandate {
    let mut last_members: Option<Instant> = None;
    let mut last_error = String::new();
    let mut announced = String::new();
    loop {
        let due = last_members.is_none_or(|t| t.elapsed() >= MEMBERS_EVERY);
        if due {
            last_members = Some(Instant::now());
        }
        match round(cp, due).await {
            Ok(Round::Won(mandate)) => return mandate,
            Ok(Round::Held(active)) => {
                let a = &active.record;
                let pid = a
                    .coordinator
                    .pid
                    .map(|p| format!("pid {p}, "))
                    .unwrap_or_default();
                let who = format!(
                    "{} ({pid}epoch {}) at {}",
                    a.coordinator.id, a.epoch, a.coordinator.url
                );
                if announced != who {
                    println!("kvlab coordinator {}: standby; {who} is active", cp.me.id);
                    announced = who;
                }
            }
            Ok(Round::Lost) => {}
            Err(e) => {
                let text = e.to_string();
                if text != last_error {
                    eprintln!("kvlab coordinator {}: {text}", cp.me.id);
                    last_error = text;
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Becomes the active coordinator: the map from etcd, then a full
/// coordinator on this port that takes charge of the running nodes.
async fn take_over(
    cp: &Arc<ControlPlane>,
    config: Config,
    mandate: Mandate,
) -> anyhow::Result<Arc<Coordinator>> {
    let map = mandate.store().load_map().await?;
    println!(
        "👑 coordinator {} is active (epoch {}){}",
        cp.me.id,
        mandate.epoch,
        match &map {
            Some(m) => format!(
                ": taking over the cluster of term {} ({} slots) from etcd",
                m.term,
                m.slots.len()
            ),
            None => ": no cluster map in etcd yet, starting the cluster".into(),
        }
    );
    let epoch = mandate.epoch;
    let view = {
        let cp = cp.clone();
        Arc::new(move || cp.view())
    };
    let control = super::state::ControlState::taken_over(mandate, map, cp.me.clone(), view);
    let coordinator = Coordinator::with_control(config, control);
    let router = super::router(coordinator.clone());
    *cp.role.lock().unwrap() = Role::Active {
        coordinator: coordinator.clone(),
        router,
        epoch,
    };
    Ok(coordinator)
}

/// The active coordinator's check that `active` is still the key its
/// campaign created (another coordinator's, or none, means its lease is
/// gone whatever its clock says).
async fn watch_active(cp: Arc<ControlPlane>, revision: i64) {
    let mut last_members: Option<Instant> = None;
    loop {
        tokio::time::sleep(POLL).await;
        let due = last_members.is_none_or(|t| t.elapsed() >= MEMBERS_EVERY);
        if due {
            last_members = Some(Instant::now());
        }
        match cp.refresh(due).await {
            Ok(Some(a)) if a.revision == revision => {}
            Ok(Some(a)) => cp.depose(&format!(
                "etcd names {} (epoch {}) as the active coordinator",
                a.record.coordinator.id, a.record.epoch
            )),
            Ok(None) => cp.depose("its `active` key in etcd is gone (the lease lapsed)"),
            // etcd unreachable: the keep-alive's deadline decides.
            Err(_) => {}
        }
    }
}

/// The one router of the port, whatever the role: the active coordinator's
/// own router while it acts, the standby's answers otherwise.
fn dispatcher(cp: Arc<ControlPlane>, admin_token: Option<crate::auth::Secret>) -> Router {
    let standby = crate::auth::guard(
        Router::new()
            .route("/status", get(standby_status))
            .route("/metrics", get(standby_metrics))
            .fallback(not_active),
        crate::auth::coordinator_access,
        admin_token,
    )
    .with_state(cp.clone());
    Router::new()
        .route("/health", get(health))
        .fallback(move |State(cp): State<Arc<ControlPlane>>, req: Request| {
            let standby = standby.clone();
            async move {
                match cp.acting() {
                    Some((_, router)) => router.oneshot(req).await.into_response(),
                    None => standby.oneshot(req).await.into_response(),
                }
            }
        })
        .with_state(cp)
}

async fn health(State(cp): State<Arc<ControlPlane>>) -> Json<CoordinatorHealth> {
    Json(CoordinatorHealth {
        status: "ok".into(),
        this: cp.this().into(),
    })
}

async fn standby_status(State(cp): State<Arc<ControlPlane>>) -> Json<StandbyStatus> {
    let view = cp.view();
    let note = match &view.active {
        Some(a) => format!(
            "coordinator {} is {}: {} (epoch {}) serves the cluster at {}",
            cp.me.id, view.this, a.id, view.epoch, a.url
        ),
        None => format!(
            "coordinator {} is {}: no coordinator is active right now (one takes over \
             within the lease TTL, {} s)",
            cp.me.id,
            view.this,
            cp.ttl.as_secs()
        ),
    };
    Json(StandbyStatus {
        control_plane: view,
        note,
    })
}

async fn standby_metrics() -> Response {
    static REGISTRY: std::sync::OnceLock<prometheus_client::registry::Registry> =
        std::sync::OnceLock::new();
    crate::metrics::render(REGISTRY.get_or_init(|| crate::metrics::registry("coordinator")))
}

/// Every other route of a standby (or a deposed coordinator).
async fn not_active(State(cp): State<Arc<ControlPlane>>) -> Response {
    let mut response = ApiError::unavailable(NOT_ACTIVE_COORDINATOR).into_response();
    if let Some(url) = cp.active_url().filter(|u| *u != cp.me.url) {
        if let Ok(value) = axum::http::HeaderValue::from_str(&url) {
            response
                .headers_mut()
                .insert(HEADER_ACTIVE_COORDINATOR, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_mode_flags_are_checked() {
        let args = ControlArgs::default();
        assert!(check_id("coordinator-8000").is_ok());
        assert!(args.validate(false).is_ok());
        let e = args.validate(true).unwrap_err().to_string();
        assert!(e.contains("--fresh") && e.contains("/kvlab/kvlab/"), "{e}");
        let zero = ControlArgs {
            lease_ttl: 0,
            ..ControlArgs::default()
        };
        assert_eq!(
            zero.validate(false),
            Err(ControlConfigError::BadLeaseTtl(0))
        );
        assert_eq!(
            check_id("c 1/x"),
            Err(ControlConfigError::BadId("c 1/x".into()))
        );
    }

    #[test]
    fn a_call_to_etcd_gets_a_third_of_the_lease_within_bounds() {
        assert_eq!(etcd_timeout(Duration::from_secs(3)), Duration::from_secs(1));
        assert_eq!(
            etcd_timeout(Duration::from_secs(1)),
            Duration::from_secs(1) / 3
        );
        assert_eq!(
            etcd_timeout(Duration::from_secs(60)),
            Duration::from_secs(2)
        );
    }
}
