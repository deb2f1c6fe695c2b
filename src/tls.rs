//! TLS between a cluster's components, so that the cluster secret, the
//! admin token and the data do not cross a network in clear text.
//!
//! - **Which listeners speak TLS** ([`Mode`], `--tls`): `auto` (the default)
//!   makes every listener bound off loopback TLS-only and leaves loopback
//!   ones plain HTTP (their traffic never leaves the machine, and the lab's
//!   `curl localhost:7000/...` keeps working); `on` makes every listener
//!   TLS-only; `off` none (a network you trust). Every process of a cluster
//!   is given the same mode, so a URL's scheme follows from the address its
//!   listener is bound to ([`scheme`]).
//! - **One cluster CA.** `kvlab up` makes a CA and one certificate for a
//!   run ([`make`]); its key is thrown away once the certificate is signed,
//!   so nobody can issue another. An operator may give their own
//!   (`--tls-ca`, `--tls-cert`, `--tls-key`: Compose, Kubernetes), which
//!   should be a CA made for the cluster alone.
//! - **The CA is the identity.** kvlab's own clients trust exactly one root,
//!   the cluster CA, and accept any certificate it signed, whatever names the
//!   certificate holds ([`ClusterCa`]): nodes move between addresses (Docker
//!   networks, namespaces, joins) and a certificate made at start cannot
//!   know them all. Who may *call* an internal route is still decided by the
//!   cluster secret (`auth`); TLS keeps it from being read on the way.
//! - **Plain HTTP is refused where TLS is on** ([`handshake`]): a request in
//!   clear text to a TLS listener gets a 400 that says to use https, and
//!   reaches no handler.
//!
//! Invariant: a process installs its TLS settings once, at start
//! ([`install`]), before it listens or calls anyone; a listener that must
//! speak TLS and has no certificate is an error at start, never a silent
//! plain listener.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Environment variables the `--tls*` flags also read (Compose sets them once
/// for every service).
pub const ENV_MODE: &str = "KVLAB_TLS";
pub const ENV_CA: &str = "KVLAB_TLS_CA";
pub const ENV_CERT: &str = "KVLAB_TLS_CERT";
pub const ENV_KEY: &str = "KVLAB_TLS_KEY";

/// The files of a cluster's TLS material, as [`make`] names them.
pub const CA_FILE: &str = "ca.pem";
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";

/// How long a TLS listener waits for a connection's first byte and for its
/// handshake (as long as a plain listener waits for a request's headers).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `--tls`: which listeners speak TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// TLS off loopback, plain HTTP on loopback.
    #[default]
    Auto,
    /// TLS on every listener, loopback included.
    On,
    /// No TLS anywhere.
    Off,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::On => "on",
            Mode::Off => "off",
        }
    }

    /// Does a listener bound to `ip` speak TLS in this mode? Loopback is
    /// 127.0.0.0/8 and ::1; 0.0.0.0 and :: (every address) are not.
    pub fn tls_at(self, ip: IpAddr) -> bool {
        match self {
            Mode::On => true,
            Mode::Off => false,
            Mode::Auto => !ip.is_loopback(),
        }
    }
}

/// The TLS flags of every component that listens or calls another.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Which listeners speak TLS (and refuse plain HTTP): `auto`, those off
    /// loopback; `on`, all; `off`, none (only on a network you trust).
    #[arg(long = "tls", value_enum, default_value_t = Mode::Auto, env = ENV_MODE, value_name = "MODE")]
    pub mode: Mode,
    /// The cluster CA's certificate (PEM): the only root kvlab's clients trust.
    #[arg(long, value_name = "PATH", env = ENV_CA)]
    pub tls_ca: Option<PathBuf>,
    /// This process's certificate (PEM, signed by the cluster CA).
    #[arg(long, value_name = "PATH", env = ENV_CERT, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "PATH", env = ENV_KEY, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// These flags with the material of `files` (what `kvlab up` made).
    pub fn with_files(&self, files: &Files) -> TlsArgs {
        TlsArgs {
            mode: self.mode,
            tls_ca: Some(files.ca.clone()),
            tls_cert: Some(files.cert.clone()),
            tls_key: Some(files.key.clone()),
        }
    }

    /// Were the CA, certificate and key all given?
    pub fn files(&self) -> Option<Files> {
        Some(Files {
            ca: self.tls_ca.clone()?,
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }
}

/// The three files of a cluster's TLS material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Files {
    /// The files [`make`] writes in `dir`.
    pub fn in_dir(dir: &Path) -> Files {
        Files {
            ca: dir.join(CA_FILE),
            cert: dir.join(CERT_FILE),
            key: dir.join(KEY_FILE),
        }
    }
}

/// `kvlab certs`: a cluster CA and certificate for clusters whose
/// components someone else starts (Compose, Kubernetes, by hand).
#[derive(Debug, Clone, clap::Parser)]
pub struct CertsArgs {
    /// The folder to write ca.pem, cert.pem and key.pem in (made if missing).
    pub dir: PathBuf,
    /// A DNS name or IP address the certificate names, for tools that check
    /// (curl); repeat it. kvlab's own clients check only the CA. Default:
    /// localhost, this machine's name and its addresses.
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
    /// Leave the files alone if all three exist (for a Compose service
    /// that runs at every `up`: the nodes keep trusting the same CA).
    #[arg(long)]
    pub keep: bool,
}

/// Runs `kvlab certs`.
pub fn certs(args: &CertsArgs) -> Result<(), TlsError> {
    let files = Files::in_dir(&args.dir);
    if args.keep
        && [&files.ca, &files.cert, &files.key]
            .iter()
            .all(|p| p.exists())
    {
        println!(
            "kvlab certs: {} holds a CA, a certificate and a key already: kept (--keep)",
            args.dir.display()
        );
        return Ok(());
    }
    if let Some(bad) = args.names.iter().find(|n| !valid_name(n)) {
        return Err(TlsError::BadName(bad.clone()));
    }
    let names = if args.names.is_empty() {
        names_for(IpAddr::from([0, 0, 0, 0]), &[])
    } else {
        args.names.clone()
    };
    let files = make(&args.dir, &names)?;
    println!(
        "kvlab certs: a cluster CA {} and a certificate {} (key {}) for {}; give every \
         component --tls-ca, --tls-cert and --tls-key",
        files.ca.display(),
        files.cert.display(),
        files.key.display(),
        names.join(", ")
    );
    Ok(())
}

/// A DNS name or an IP address, as a certificate may hold it.
fn valid_name(name: &str) -> bool {
    name.parse::<IpAddr>().is_ok()
        || (!name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }))
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--name {0:?} is neither a DNS name (letters, digits, `-`, dots) nor an IP address")]
    BadName(String),
    #[error(
        "{what} listens on {addr}, off loopback, where TLS is on by default: give it \
         --tls-ca, --tls-cert and --tls-key (kvlab up makes them itself), or --tls off \
         on a network you trust"
    )]
    Missing { what: String, addr: IpAddr },
    #[error(
        "--tls-cert and --tls-key need --tls-ca too: kvlab's clients trust only the cluster CA"
    )]
    NoCa,
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} holds no {what} in PEM form")]
    Empty { path: PathBuf, what: &'static str },
    #[error("the certificate {cert} and key {key} do not make a usable TLS identity: {reason}")]
    BadIdentity {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("cannot make the cluster's certificates: {0}")]
    Generate(String),
    // `reason`, not `source`: a `source` field is also the error's cause,
    // and `{:#}` would then print the I/O error twice.
    #[error("cannot write {path}: {reason}")]
    Write {
        path: PathBuf,
        reason: std::io::Error,
    },
}

/// This process's TLS settings, once installed.
struct Installed {
    mode: Mode,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    client: Option<Arc<rustls::ClientConfig>>,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Reads the flags' files and makes them this process's TLS settings.
/// `listens`: (what, address) of each listener this process will open;
/// one that must speak TLS without a certificate is an error. A process
/// belongs to one cluster: a second call keeps the first settings.
pub fn install(args: &TlsArgs, listens: &[(&str, IpAddr)]) -> Result<(), TlsError> {
    if args.tls_cert.is_some() && args.tls_ca.is_none() {
        return Err(TlsError::NoCa);
    }
    if args.tls_cert.is_none() {
        if let Some((what, addr)) = listens.iter().find(|(_, ip)| args.mode.tls_at(*ip)) {
            return Err(TlsError::Missing {
                what: what.to_string(),
                addr: *addr,
            });
        }
    }
    let client = match &args.tls_ca {
        Some(ca) => Some(Arc::new(verifying_config(&read_certs(ca)?)?)),
        None => None,
    };
    let acceptor = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(acceptor(cert, key)?),
        _ => None,
    };
    let _ = INSTALLED.set(Installed {
        mode: args.mode,
        acceptor,
        client,
    });
    Ok(())
}

/// The mode in force: what was installed, else plain HTTP (a process that
/// installed nothing, such as a unit test's server, listens on loopback).
fn mode() -> Mode {
    INSTALLED.get().map_or(Mode::Off, |i| i.mode)
}

/// The scheme of a URL to a listener bound to `listen_ip`, by this
/// cluster's mode: `https` where listeners there speak TLS.
pub fn scheme(listen_ip: IpAddr) -> &'static str {
    if mode().tls_at(listen_ip) {
        "https"
    } else {
        "http"
    }
}

/// `scheme://host:port` of a listener bound to `listen_ip` and reached at
/// `reach_ip` (IPv6 in brackets).
pub fn url(listen_ip: IpAddr, reach_ip: IpAddr, port: u16) -> String {
    format!(
        "{}://{}",
        scheme(listen_ip),
        std::net::SocketAddr::new(reach_ip, port)
    )
}

/// The acceptor of a listener bound to `ip`, if it speaks TLS. [`install`]
/// refused a process whose TLS listener would have no certificate.
pub fn acceptor_for(ip: IpAddr) -> Option<tokio_rustls::TlsAcceptor> {
    let installed = INSTALLED.get()?;
    if installed.mode.tls_at(ip) {
        installed.acceptor.clone()
    } else {
        None
    }
}

/// The rustls client settings kvlab's clients use (the cluster CA as the
/// only root), if a CA was installed.
pub fn client_config() -> Option<rustls::ClientConfig> {
    INSTALLED.get()?.client.as_deref().cloned()
}

/// Does this process speak TLS to listeners bound to `ip`?
pub fn tls_at(ip: IpAddr) -> bool {
    mode().tls_at(ip)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Read {
            path: path.into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.into(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let chain = read_certs(cert)?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Read {
        path: key.into(),
        reason: e.to_string(),
    })?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private))
        .map_err(|e| TlsError::BadIdentity {
            cert: cert.into(),
            key: key.into(),
            reason: e.to_string(),
        })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// rustls's `ring` provider, named explicitly: it is the one compiled in.
/// (rustls prefers aws-lc-rs, for its post-quantum key exchange, but that
/// needs cmake and nasm to build; ring builds with a C compiler alone.)
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn verifying_config(ca: &[CertificateDer<'static>]) -> Result<rustls::ClientConfig, TlsError> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Generate(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ClusterCa::new(ca)?))
        .with_no_client_auth();
    Ok(config)
}

/// The check kvlab's clients make of a peer: its certificate chains to the
/// cluster CA and is valid now (webpki's checks, all of them), whatever
/// names it holds. webpki checks the name last, after the chain, so a
/// name mismatch is only ever reported for a certificate the CA signed.
#[derive(Debug)]
struct ClusterCa(Arc<WebPkiServerVerifier>);

impl ClusterCa {
    /// Trusts `ca` (the certificates of the CA file) and nothing else.
    fn new(ca: &[CertificateDer<'static>]) -> Result<ClusterCa, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in ca {
            roots.add(cert.clone()).map_err(|e| TlsError::Read {
                path: "the CA certificate".into(),
                reason: e.to_string(),
            })?;
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        Ok(ClusterCa(webpki))
    }
}

impl ServerCertVerifier for ClusterCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// A new connection to a TLS listener: its handshake, or `None` when it
/// has none to offer. A client that speaks plain HTTP instead gets a 400
/// saying to use https (its request reaches no handler); one that sends
/// nothing, or stalls, is dropped after [`HANDSHAKE_TIMEOUT`].
pub async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await;
    if !matches!(peeked, Ok(Ok(1))) {
        return None;
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        refuse_plain(stream).await;
        return None;
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        // A client that does not trust us, or speaks an old TLS: its business.
        _ => None,
    }
}

/// The answer to plain HTTP on a TLS listener, in the `{"detail": ...}`
/// shape of every error answer.
pub const PLAIN_REFUSED: &str = "this listener speaks TLS only: use https:// and trust the \
     cluster CA (kvlab up prints where its ca.pem is; curl --cacert ca.pem https://...)";

/// Answers a plain-HTTP client with 400 and closes. The request is read
/// first (as much as has come, within a second), so that closing does not
/// reset the connection before the client reads the answer.
async fn refuse_plain(mut stream: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
    let body = serde_json::json!({"detail": {"error": "TLS required", "reason": PLAIN_REFUSED}})
        .to_string();
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Drain until the client closes, so our answer is not cut by a reset.
        while stream.read(&mut buf).await? > 0 {}
        Ok::<(), std::io::Error>(())
    })
    .await;
}

/// Makes a cluster CA and one certificate signed by it for `names` (DNS
/// names or IP addresses, for tools such as curl that check them), in
/// `dir` (created private to the user): `ca.pem`, `cert.pem` and `key.pem`
/// (readable by the user only). The CA's key is never written: once the
/// certificate is signed nobody can issue another, so the files of an
/// earlier run are replaced, not added to.
pub fn make(dir: &Path, names: &[String]) -> Result<Files, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let ca_key = KeyPair::generate().map_err(gen)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    // A name of its own per CA, so that two runs' CAs are told apart (by
    // people, and by verifiers looking for a certificate's issuer).
    let mut tag = [0u8; 4];
    getrandom::fill(&mut tag).map_err(|e| TlsError::Generate(e.to_string()))?;
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    ca.distinguished_name
        .push(DnType::CommonName, format!("kvlab cluster CA {tag}"));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(gen)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().map_err(gen)?;
    let mut member = CertificateParams::new(names.to_vec()).map_err(gen)?;
    member
        .distinguished_name
        .push(DnType::CommonName, "kvlab cluster member");
    member.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    member.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = member.signed_by(&key, &issuer).map_err(gen)?;

    private_dir(dir)?;
    let files = Files::in_dir(dir);
    write_file(&files.ca, ca_cert.pem().as_bytes(), 0o644)?;
    write_file(&files.cert, cert.pem().as_bytes(), 0o644)?;
    write_file(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
    Ok(files)
}

/// Creates `dir` (and its parents) private to the user. A folder that
/// exists keeps its mode: it may be one an operator shares on purpose
/// (Compose's bind mount, for ca.pem); the key file is private anyway.
fn private_dir(dir: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|reason| TlsError::Write {
            path: dir.into(),
            reason,
        })
}

/// Writes `path` whole (aside, then renamed) with `mode`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |reason| TlsError::Write {
        path: path.into(),
        reason,
    };
    let aside = path.with_extension("tmp");
    let _ = std::fs::remove_file(&aside);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&aside)
        .map_err(err)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(err)?;
    std::fs::rename(&aside, path).map_err(err)
}

/// The names a certificate for a cluster listening on `host` should hold,
/// for tools that check them (kvlab's clients do not): `localhost`, this
/// machine's name, the loopback addresses, and `host`, or every address of
/// this machine when `host` is 0.0.0.0 or ::. `extra`: more addresses
/// (the bridge of netns hosts).
pub fn names_for(host: IpAddr, extra: &[IpAddr]) -> Vec<String> {
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        host,
    ];
    if host.is_unspecified() {
        ips.extend(local_addresses());
    }
    ips.extend(extra);
    let mut names = vec!["localhost".to_string()];
    if let Some(name) = hostname() {
        names.push(name);
    }
    for ip in ips {
        let text = ip.to_string();
        if !names.contains(&text) {
            names.push(text);
        }
    }
    names
}

fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty() && name != "localhost").then(|| name.to_string())
}

/// The addresses of this machine's interfaces.
fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; we only
    // read its nodes, and each address as the family it says it is.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut node = head;
        while !node.is_null() {
            let addr = (*node).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let a = &*(addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let a = &*(addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(a.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            node = (*node).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kvlab certs /proc/nope` once said "No such file or directory" twice.
    #[test]
    fn a_folder_that_cannot_be_made_is_named_with_its_reason_once() {
        let e = make(Path::new("/proc/kvlab-nope/tls"), &["localhost".into()]).unwrap_err();
        let text = format!("{:#}", anyhow::Error::new(e));
        assert!(text.starts_with("cannot write /proc/kvlab-nope"), "{text}");
        assert_eq!(text.matches("os error").count(), 1, "{text}");
    }

    #[test]
    fn auto_means_tls_off_loopback_only() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lo8: IpAddr = "127.9.9.9".parse().unwrap();
        let lo6: IpAddr = "::1".parse().unwrap();
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let lan: IpAddr = "10.1.2.3".parse().unwrap();
        for ip in [lo, lo8, lo6] {
            assert!(!Mode::Auto.tls_at(ip), "{ip}");
            assert!(Mode::On.tls_at(ip), "{ip}");
        }
        for ip in [any, lan, "::".parse().unwrap()] {
            assert!(Mode::Auto.tls_at(ip), "{ip}");
            assert!(!Mode::Off.tls_at(ip), "{ip}");
        }
    }

    #[test]
    fn made_material_loads_and_the_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        let names = names_for("0.0.0.0".parse().unwrap(), &[]);
        assert!(names.contains(&"127.0.0.1".to_string()), "{names:?}");
        let files = make(&tls, &names).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&files.key), 0o600);
        assert_eq!(mode(&tls), 0o700);
        acceptor(&files.cert, &files.key).unwrap();
        verifying_config(&read_certs(&files.ca).unwrap()).unwrap();
        // The CA's key is not among the files.
        let listed = std::fs::read_dir(&tls).unwrap().count();
        assert_eq!(listed, 3);
    }

    #[test]
    fn missing_or_wrong_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_certs(&dir.path().join("nope.pem")).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = read_certs(&empty).unwrap_err();
        assert!(e.to_string().contains("holds no certificate"), "{e}");
        let files = make(&dir.path().join("a"), &["localhost".into()]).unwrap();
        let other = make(&dir.path().join("b"), &["localhost".into()]).unwrap();
        let Err(e) = acceptor(&files.cert, &other.key) else {
            panic!("a certificate with another's key was taken");
        };
        assert!(
            e.to_string().contains("do not make a usable TLS identity"),
            "{e}"
        );
    }

    #[test]
    fn a_certificate_of_the_cluster_ca_passes_whatever_its_names_and_no_other_does() {
        let dir = tempfile::tempdir().unwrap();
        let ours = make(&dir.path().join("ours"), &["localhost".into()]).unwrap();
        let theirs = make(&dir.path().join("theirs"), &["10.0.0.7".into()]).unwrap();
        let verifier = ClusterCa::new(&read_certs(&ours.ca).unwrap()).unwrap();
        let check = |files: &Files, name: &str| {
            let cert = read_certs(&files.cert).unwrap().remove(0);
            let name = ServerName::try_from(name.to_string()).unwrap();
            verifier.verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
        };
        // Named or not, a certificate our CA signed is a member.
        check(&ours, "localhost").unwrap();
        check(&ours, "10.89.0.12").unwrap();
        check(&ours, "follower-1").unwrap();
        // Another CA's certificate is not, even for the name it holds.
        let e = check(&theirs, "10.0.0.7").unwrap_err();
        assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    }

    #[test]
    fn certs_checks_names_and_keeps_existing_files_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let args = |names: &[&str], keep: bool| CertsArgs {
            dir: dir.path().join("tls"),
            names: names.iter().map(|n| n.to_string()).collect(),
            keep,
        };
        for bad in ["", "a b", "x..y", "a/b", "ü.example"] {
            let e = certs(&args(&[bad], false)).unwrap_err();
            assert!(e.to_string().contains("neither a DNS name"), "{bad:?}: {e}");
        }
        certs(&args(&["cluster", "follower-1", "10.0.0.1", "::1"], false)).unwrap();
        let ca = std::fs::read(dir.path().join("tls").join(CA_FILE)).unwrap();
        certs(&args(&["cluster"], true)).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("tls").join(CA_FILE)).unwrap(),
            ca
        );
        certs(&args(&["cluster"], false)).unwrap();
        assert_ne!(
            std::fs::read(dir.path().join("tls").join(CA_FILE)).unwrap(),
            ca
        );
    }
}
