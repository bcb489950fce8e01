//! The provider trait: what the server asks of whoever decides identities.
//!
//! The server authenticates nothing itself. For every call it hands the provider a [`Caller`]
//! (the peer credentials of the Unix socket connection) and turns what the provider returns into
//! Workload API messages. [`ProviderError`] is mapped to a gRPC status in exactly one place, its
//! `From<ProviderError> for tonic::Status` impl.

use std::{
    collections::BTreeMap,
    fmt, io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    sync::Arc,
};

use bytes::Bytes;
use futures::stream::BoxStream;

/// A stream of complete snapshots produced by a [`Provider`].
///
/// Every item replaces the previous one entirely. An `Err` item ends the stream with that
/// error's status; the end of the stream (`None`) ends it with `Unavailable`, never with OK.
pub type ProviderStream<T> = BoxStream<'static, Result<T, ProviderError>>;

/// The process at the other end of a Workload API connection.
///
/// Taken from `SO_PEERCRED` of the accepted Unix socket, plus a pidfd of the process that
/// connected, so that the provider can tell whether the process it attested is still the one
/// that connected even if the pid has been reused since. The kernel hands that pidfd over with
/// the socket (`SO_PEERPIDFD`, Linux 6.5 and later), so no pid reuse can come in between; older
/// kernels get a pidfd opened right after `accept`.
///
/// # Limitations
///
/// - `SO_PEERCRED` records the process that called `connect`. A process that inherits or
///   receives the connected socket afterwards is not seen; it is served the identity of the
///   original caller.
/// - Before Linux 6.5 the pidfd is opened after `accept`, not atomically with `connect`. If the
///   caller exits and its pid is reused by another process in between (a window of
///   microseconds, and a recycled pid space is needed), the pidfd refers to the new process.
///   Attestation then describes the wrong process. [`Caller::ensure_alive`] cannot detect this
///   case, only a later exit.
/// - Without pidfd support (Linux before 5.3, or a seccomp filter denying `pidfd_open`),
///   [`Caller::ensure_alive`] falls back to `kill(pid, 0)`, which does not detect pid reuse.
/// - A peer in another pid namespace whose pid cannot be mapped into ours is reported with
///   pid 0 and no pidfd; [`Caller::ensure_alive`] then always fails.
#[derive(Clone)]
pub struct Caller {
    pid: i32,
    uid: u32,
    gid: u32,
    pidfd: Option<Arc<OwnedFd>>,
}

impl Caller {
    /// Builds a caller from known credentials, for tests and for providers that obtain
    /// credentials another way.
    pub fn new(pid: i32, uid: u32, gid: u32, pidfd: Option<OwnedFd>) -> Self {
        Self {
            pid,
            uid,
            gid,
            pidfd: pidfd.map(Arc::new),
        }
    }

    /// Reads the peer credentials of an accepted Unix stream and a pidfd of the peer process.
    ///
    /// The pidfd comes from the socket itself where the kernel offers it (`SO_PEERPIDFD`);
    /// otherwise it is opened by pid. Failing to open it by pid (process already gone, no
    /// kernel support) is not an error: the caller then has no pidfd. When the kernel says the
    /// peer that connected is gone, the caller is reported with pid 0, which no attestation
    /// accepts.
    ///
    /// # Errors
    ///
    /// Returns the I/O error of `getsockopt(SO_PEERCRED)`.
    pub fn from_unix_stream(stream: &tokio::net::UnixStream) -> io::Result<Self> {
        let cred = stream.peer_cred()?;
        let pid = cred.pid().unwrap_or(0);
        if pid <= 0 {
            return Ok(Self::new(0, cred.uid(), cred.gid(), None));
        }
        let pidfd = match peer_pidfd(stream) {
            Ok(fd) => Some(fd),
            Err(error) if is_unsupported(&error) => match pidfd_open(pid) {
                Ok(fd) => Some(fd),
                Err(error) => {
                    tracing::debug!(pid, %error, "cannot open pidfd for caller");
                    None
                }
            },
            Err(error) => {
                // The process that connected has exited (and may have been reaped, its pid
                // free for reuse): nothing read under /proc/<pid> could be trusted.
                tracing::debug!(pid, %error, "caller exited before its connection was accepted");
                return Ok(Self::new(0, cred.uid(), cred.gid(), None));
            }
        };
        Ok(Self::new(pid, cred.uid(), cred.gid(), pidfd))
    }

    /// The process id of the caller, as seen in the server's pid namespace; 0 when unknown.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The effective user id of the caller at `connect` time.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The effective group id of the caller at `connect` time.
    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// The pidfd opened at accept time, if any.
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_deref().map(AsFd::as_fd)
    }

    /// Checks that the process that connected still exists.
    ///
    /// With a pidfd the answer is exact: once the process has exited this fails, even if its
    /// pid now belongs to another process. Call it after attestation (reading `/proc/<pid>`)
    /// so that what was read is known to describe the caller.
    ///
    /// # Errors
    ///
    /// [`ProviderError::AttestationFailed`] when the process has exited, when its pid is
    /// unknown, or when the check itself fails.
    pub fn ensure_alive(&self) -> Result<(), ProviderError> {
        match &self.pidfd {
            Some(fd) => match pidfd_has_exited(fd) {
                Ok(false) => Ok(()),
                Ok(true) => Err(ProviderError::AttestationFailed(format!(
                    "caller process {} has exited",
                    self.pid
                ))),
                Err(error) => Err(ProviderError::AttestationFailed(format!(
                    "cannot poll pidfd of caller process {}: {error}",
                    self.pid
                ))),
            },
            None if self.pid > 0 => signal_zero(self.pid).map_err(|error| {
                ProviderError::AttestationFailed(format!(
                    "caller process {} is not alive: {error}",
                    self.pid
                ))
            }),
            None => Err(ProviderError::AttestationFailed(
                "caller pid is unknown".to_owned(),
            )),
        }
    }
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("pid", &self.pid)
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("pidfd", &self.pidfd.as_ref().map(|fd| fd.as_raw_fd()))
            .finish()
    }
}

/// One X509-SVID with its trust domain's bundle, as sent in `FetchX509SVID`.
///
/// The byte fields are [`Bytes`]: a clone shares them instead of copying, so a provider can
/// hand the same SVID and bundle to every open stream at the cost of a reference count.
/// Equality compares contents, taking a shortcut when both sides share the same buffer.
///
/// See the SPIFFE X509-SVID standard and the Workload API standard, `X509SVID` message.
#[derive(Clone, Eq)]
pub struct X509Svid {
    /// The SPIFFE ID; must string-equal the URI SAN of the leaf.
    pub spiffe_id: String,
    /// Concatenated DER certificates, leaf first.
    pub cert_chain: Bytes,
    /// Unencrypted PKCS#8 DER private key. `Debug` redacts it.
    pub private_key: Bytes,
    /// Concatenated DER CA certificates of the SVID's trust domain; must not be empty.
    pub bundle: Bytes,
    /// Operator-chosen label, unique within a response, at most 1024 bytes; may be empty.
    pub hint: String,
}

impl PartialEq for X509Svid {
    fn eq(&self, other: &Self) -> bool {
        self.spiffe_id == other.spiffe_id
            && self.hint == other.hint
            && same_bytes(&self.cert_chain, &other.cert_chain)
            && same_bytes(&self.private_key, &other.private_key)
            && same_bytes(&self.bundle, &other.bundle)
    }
}

impl fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("cert_chain_len", &self.cert_chain.len())
            .field("private_key", &"<redacted>")
            .field("bundle_len", &self.bundle.len())
            .field("hint", &self.hint)
            .finish()
    }
}

/// The complete X.509 state of a caller: every SVID it holds and the bundles of federated
/// trust domains.
#[derive(Clone, Debug, Default, Eq)]
pub struct X509Context {
    /// The caller's SVIDs; the first is the default identity. An empty list is sent as
    /// `PermissionDenied` ("no identity issued").
    pub svids: Vec<X509Svid>,
    /// Concatenated DER CA certificates keyed by `spiffe://<trust domain>`. Entries with empty
    /// values are left out of the response.
    pub federated_bundles: BTreeMap<String, Bytes>,
}

impl PartialEq for X509Context {
    fn eq(&self, other: &Self) -> bool {
        self.svids == other.svids && same_bundles(&self.federated_bundles, &other.federated_bundles)
    }
}

/// The X.509 bundles a caller trusts, sent in `FetchX509Bundles`.
#[derive(Clone, Debug, Default, Eq)]
pub struct X509Bundles {
    /// Concatenated DER CA certificates keyed by `spiffe://<trust domain>`; must include the
    /// caller's own trust domain. Entries with empty values are left out.
    pub bundles: BTreeMap<String, Bytes>,
}

impl PartialEq for X509Bundles {
    fn eq(&self, other: &Self) -> bool {
        same_bundles(&self.bundles, &other.bundles)
    }
}

/// The JWT bundles a caller trusts, sent in `FetchJWTBundles`.
#[derive(Clone, Debug, Default, Eq)]
pub struct JwtBundles {
    /// JWKS JSON documents keyed by `spiffe://<trust domain>`; must include the caller's own
    /// trust domain. Entries with empty values are left out.
    pub bundles: BTreeMap<String, Bytes>,
}

impl PartialEq for JwtBundles {
    fn eq(&self, other: &Self) -> bool {
        same_bundles(&self.bundles, &other.bundles)
    }
}

/// One minted JWT-SVID.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtSvid {
    /// The SPIFFE ID in the token's `sub`.
    pub spiffe_id: String,
    /// The JWS compact serialization. `Debug` redacts it.
    pub token: String,
    /// Operator-chosen label; may be empty.
    pub hint: String,
}

impl fmt::Debug for JwtSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("token", &"<redacted>")
            .field("hint", &self.hint)
            .finish()
    }
}

/// The outcome of a successful `ValidateJWTSVID`.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidatedJwt {
    /// The SPIFFE ID in the token's `sub`.
    pub spiffe_id: String,
    /// Every claim of the token. Must contain `sub` (string), `aud` (string or list of
    /// strings; sent as a list) and `exp` (number).
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// Why a provider could not answer. Each variant maps to one gRPC status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The caller was attested but has no identity. Sent as `PermissionDenied` with the message
    /// "no identity issued", which clients recognise.
    #[error("no identity issued")]
    NoIdentity,
    /// The caller could not be attested; the client should retry. Sent as `Unavailable`.
    #[error("attestation failed: {0}")]
    AttestationFailed(String),
    /// The request is invalid and must not be retried as is. Sent as `InvalidArgument`.
    #[error("{0}")]
    InvalidArgument(String),
    /// The caller may not have what it asked for. Sent as `PermissionDenied`.
    #[error("{0}")]
    PermissionDenied(String),
    /// The provider cannot answer now; the client should retry. Sent as `Unavailable`.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or unexpected failure in the provider. Sent as `Internal`.
    #[error("{0}")]
    Internal(String),
}

impl From<ProviderError> for tonic::Status {
    fn from(error: ProviderError) -> Self {
        let message = error.to_string();
        match error {
            ProviderError::NoIdentity | ProviderError::PermissionDenied(_) => {
                tonic::Status::permission_denied(message)
            }
            ProviderError::AttestationFailed(_) | ProviderError::Unavailable(_) => {
                tonic::Status::unavailable(message)
            }
            ProviderError::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            ProviderError::Internal(_) => tonic::Status::internal(message),
        }
    }
}

/// Decides the identities of callers. The server calls it once per RPC with the caller's
/// credentials.
///
/// Streams must yield their first item promptly (the server sends it as the first message)
/// and then a new complete snapshot whenever anything changes.
#[tonic::async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Streams the caller's X509-SVIDs and federated bundles (`FetchX509SVID`).
    ///
    /// # Errors
    ///
    /// Any [`ProviderError`]; [`ProviderError::NoIdentity`] when the caller has no identity.
    async fn watch_x509_context(
        &self,
        caller: &Caller,
    ) -> Result<ProviderStream<X509Context>, ProviderError>;

    /// Streams the X.509 bundles the caller trusts (`FetchX509Bundles`).
    ///
    /// # Errors
    ///
    /// Any [`ProviderError`].
    async fn watch_x509_bundles(
        &self,
        caller: &Caller,
    ) -> Result<ProviderStream<X509Bundles>, ProviderError>;

    /// Streams the JWT bundles the caller trusts (`FetchJWTBundles`).
    ///
    /// # Errors
    ///
    /// Any [`ProviderError`].
    async fn watch_jwt_bundles(
        &self,
        caller: &Caller,
    ) -> Result<ProviderStream<JwtBundles>, ProviderError>;

    /// Mints JWT-SVIDs carrying every audience in `audience` (never empty; the server checks).
    /// `spiffe_id` of `None` asks for every identity of the caller.
    ///
    /// # Errors
    ///
    /// [`ProviderError::PermissionDenied`] when the caller may not have `spiffe_id`;
    /// [`ProviderError::NoIdentity`] when it has none; any other [`ProviderError`].
    async fn fetch_jwt_svids(
        &self,
        caller: &Caller,
        audience: Vec<String>,
        spiffe_id: Option<String>,
    ) -> Result<Vec<JwtSvid>, ProviderError>;

    /// Validates `token` for `audience` (both non-empty; the server checks).
    ///
    /// # Errors
    ///
    /// [`ProviderError::InvalidArgument`] when the token is invalid; any other
    /// [`ProviderError`].
    async fn validate_jwt_svid(
        &self,
        caller: &Caller,
        audience: &str,
        token: &str,
    ) -> Result<ValidatedJwt, ProviderError>;
}

/// Whether `a` and `b` hold the same bytes. Two views of one buffer (a clone) are equal without
/// reading it, which keeps comparing an unchanged snapshot with the last one sent cheap.
fn same_bytes(a: &Bytes, b: &Bytes) -> bool {
    (a.as_ptr() == b.as_ptr() && a.len() == b.len()) || a == b
}

fn same_bundles(a: &BTreeMap<String, Bytes>, b: &BTreeMap<String, Bytes>) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && same_bytes(va, vb))
}

/// `SO_PEERPIDFD` where its value is the generic one (every architecture but Alpha, MIPS,
/// PA-RISC and SPARC).
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "s390x"
))]
const SO_PEERPIDFD: libc::c_int = 77;

/// The pidfd the kernel recorded for the peer of `stream` when it connected.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "s390x"
))]
fn peer_pidfd(stream: &tokio::net::UnixStream) -> io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .map_err(|_| io::Error::other("socklen_t too small"))?;
    // SAFETY: `fd` and `len` are live locals; `len` holds the size of `fd`, so the kernel
    // writes at most that many bytes into it.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            std::ptr::from_mut(&mut fd).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if fd < 0 {
        return Err(io::Error::other("the kernel returned no pidfd"));
    }
    // SAFETY: getsockopt succeeded, so `fd` is a new open file descriptor that nothing else
    // owns; OwnedFd takes sole ownership and closes it on drop.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Architectures where this crate does not know `SO_PEERPIDFD`: as on old kernels.
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "s390x"
)))]
fn peer_pidfd(_stream: &tokio::net::UnixStream) -> io::Result<OwnedFd> {
    Err(io::Error::from_raw_os_error(libc::ENOPROTOOPT))
}

/// Whether `getsockopt(SO_PEERPIDFD)` failed because the kernel does not offer it, rather than
/// because the peer is gone.
fn is_unsupported(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENOPROTOOPT | libc::EOPNOTSUPP | libc::ENODATA | libc::ENOSYS | libc::EPERM)
    )
}

fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and a flags word by value and touches no memory of ours;
    // an invalid pid only produces an error return.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let raw = i32::try_from(ret).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: the syscall succeeded, so `raw` is a new open file descriptor that nothing else
    // owns; OwnedFd takes sole ownership and closes it on drop.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A pidfd becomes readable once its process has exited (even as a zombie).
fn pidfd_has_exited(fd: &OwnedFd) -> io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pollfd` is a valid, exclusively borrowed array of one element that outlives
        // the call, `nfds` is 1 to match, and the timeout of 0 makes the call non-blocking.
        let ret = unsafe { libc::poll(&mut pollfd, 1, 0) };
        if ret < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        return Ok(ret > 0 && pollfd.revents & (libc::POLLIN | libc::POLLHUP) != 0);
    }
}

fn signal_zero(pid: i32) -> io::Result<()> {
    // SAFETY: kill with signal 0 sends nothing; it only checks that the pid exists.
    let ret = unsafe { libc::kill(pid, 0) };
    if ret == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    // EPERM: the process exists but belongs to someone else.
    if error.raw_os_error() == Some(libc::EPERM) {
        return Ok(());
    }
    Err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_identity_maps_to_permission_denied_with_standard_wording() {
        let status = tonic::Status::from(ProviderError::NoIdentity);
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(status.message(), "no identity issued");
    }

    #[test]
    fn attestation_failure_maps_to_unavailable() {
        let status = tonic::Status::from(ProviderError::AttestationFailed("gone".into()));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("gone"));
    }

    #[test]
    fn debug_of_secrets_redacts() {
        let svid = X509Svid {
            spiffe_id: "spiffe://example.org/a".into(),
            cert_chain: Bytes::from_static(&[1]),
            private_key: Bytes::from_static(b"SECRETKEY"),
            bundle: Bytes::from_static(&[2]),
            hint: String::new(),
        };
        assert!(!format!("{svid:?}").contains("83, 69"));
        assert!(format!("{svid:?}").contains("redacted"));
        let jwt = JwtSvid {
            spiffe_id: "spiffe://example.org/a".into(),
            token: "eyJsecret".into(),
            hint: String::new(),
        };
        assert!(!format!("{jwt:?}").contains("eyJsecret"));
    }

    fn svid_with(chain: &[u8], bundle: &[u8]) -> X509Svid {
        X509Svid {
            spiffe_id: "spiffe://example.org/a".into(),
            cert_chain: Bytes::copy_from_slice(chain),
            private_key: Bytes::from_static(b"key"),
            bundle: Bytes::copy_from_slice(bundle),
            hint: String::new(),
        }
    }

    #[test]
    fn cloned_svid_shares_its_bytes_instead_of_copying_them() {
        let svid = svid_with(b"chain", b"bundle");
        let clone = svid.clone();
        assert_eq!(svid.cert_chain.as_ptr(), clone.cert_chain.as_ptr());
        assert_eq!(svid.private_key.as_ptr(), clone.private_key.as_ptr());
        assert_eq!(svid.bundle.as_ptr(), clone.bundle.as_ptr());
        assert_eq!(svid, clone);
    }

    #[test]
    fn equality_compares_contents_whatever_buffer_holds_them() {
        let context = |chain: &[u8], bundle: &[u8], federated: &[u8]| X509Context {
            svids: vec![svid_with(chain, bundle)],
            federated_bundles: BTreeMap::from([(
                "spiffe://other.org".to_owned(),
                Bytes::copy_from_slice(federated),
            )]),
        };
        let a = context(b"chain", b"bundle", b"other");

        assert_eq!(a, context(b"chain", b"bundle", b"other"));
        assert_ne!(a, context(b"chaiN", b"bundle", b"other"));
        assert_ne!(a, context(b"chain", b"bundlE", b"other"));
        assert_ne!(a, context(b"chain", b"bundle", b"otheR"));
        let mut renamed = a.clone();
        renamed.svids[0].hint = "web".into();
        assert_ne!(a, renamed);
        let mut fewer = a.clone();
        fewer.federated_bundles.clear();
        assert_ne!(a, fewer);

        // A prefix of the same buffer starts at the same address but is not equal.
        let mut prefix = a.clone();
        prefix.svids[0].bundle.truncate(3);
        assert_ne!(a, prefix);

        let bundles = |value: &[u8]| X509Bundles {
            bundles: BTreeMap::from([("spiffe://td".to_owned(), Bytes::copy_from_slice(value))]),
        };
        assert_eq!(bundles(b"x"), bundles(b"x"));
        assert_ne!(bundles(b"x"), bundles(b"y"));
        let jwks = |value: &[u8]| JwtBundles {
            bundles: BTreeMap::from([("spiffe://td".to_owned(), Bytes::copy_from_slice(value))]),
        };
        assert_eq!(jwks(b"{}"), jwks(b"{}"));
        assert_ne!(jwks(b"{}"), jwks(b"[]"));
    }

    #[test]
    fn ensure_alive_succeeds_for_own_process_and_fails_after_child_exit() {
        let me = std::process::id() as i32;
        let caller = Caller::new(me, 0, 0, Some(pidfd_open(me).unwrap()));
        caller.ensure_alive().unwrap();

        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let caller = Caller::new(pid, 0, 0, Some(pidfd_open(pid).unwrap()));
        // Exited but not reaped yet (a zombie): the pidfd already reports it.
        while !pidfd_has_exited(caller.pidfd.as_ref().unwrap()).unwrap() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(matches!(
            caller.ensure_alive(),
            Err(ProviderError::AttestationFailed(_))
        ));
        child.wait().unwrap();
        assert!(caller.ensure_alive().is_err());
    }

    /// A child process that connects to `path`, says so on stdout, then waits for stdin to
    /// close (or exits at once when `linger` is false).
    fn connecting_child(path: &std::path::Path, linger: bool) -> std::process::Child {
        let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n\
                      print('connected', flush=True)\nif sys.argv[2] == '1': sys.stdin.read()\n";
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                script,
                path.to_str().unwrap(),
                if linger { "1" } else { "0" },
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "connected");
        child
    }

    #[tokio::test]
    async fn the_caller_is_the_process_that_connected_and_its_pidfd_comes_with_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let mut child = connecting_child(&path, true);
        let (stream, _) = listener.accept().await.unwrap();

        let caller = Caller::from_unix_stream(&stream).unwrap();
        assert_eq!(caller.pid(), child.id() as i32);
        assert!(caller.pidfd().is_some());
        caller.ensure_alive().unwrap();
        match peer_pidfd(&stream) {
            Ok(_) => {}
            // Kernels before 6.5 lack SO_PEERPIDFD; the pidfd was then opened by pid.
            Err(error) => assert!(is_unsupported(&error), "{error}"),
        }

        drop(child.stdin.take());
        child.wait().unwrap();
        assert!(caller.ensure_alive().is_err());
    }

    #[tokio::test]
    async fn a_caller_gone_before_its_connection_is_accepted_is_never_alive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let mut child = connecting_child(&path, false);
        // Exited and reaped: its pid is free for another process.
        child.wait().unwrap();

        let (stream, _) = listener.accept().await.unwrap();
        let caller = Caller::from_unix_stream(&stream).unwrap();
        assert!(matches!(
            caller.ensure_alive(),
            Err(ProviderError::AttestationFailed(_))
        ));
    }

    #[test]
    fn ensure_alive_fails_for_unknown_pid() {
        assert!(Caller::new(0, 0, 0, None).ensure_alive().is_err());
    }
}
