//! The HTTP endpoint: `/metrics`, `/-/healthy`, `/-/ready`, the JSON API
//! ([`crate::export::api`]) and a page for browsers at `/`.
//!
//! Small and defensive, so that no client, nor a crowd of them, can take
//! the host's memory or keep a scrape out:
//! - GET and HEAD only, a request head of at most [`MAX_HEAD_BYTES`] within
//!   [`HEADER_TIMEOUT`] (keep-alive connections idle that long end too);
//! - every scrape within [`FRESH_FOR`] of the last gather shares its
//!   encoded body, and one gather runs at a time;
//! - bodies are written [`CHUNK_BYTES`] at a time as the socket takes them,
//!   so a client that does not read holds no copy of its own; the bodies
//!   held by unfinished responses together stay under [`MAX_PINNED_BYTES`]
//!   (beyond it, scrapes share the last body until some finish), and a
//!   response not written within [`RESPONSE_TIMEOUT`] ends its connection;
//! - at most [`MAX_CONNECTIONS`] at once: at the limit, the connection that
//!   has waited longest for a request is closed to make room, so a flood
//!   of idle or slow connections cannot refuse or stall a new one.
//!
//! Each connection costs at most [`PER_CONNECTION_BYTES`] of its own, and
//! the kernel buffers at most [`SEND_BUFFER_BYTES`] (twice that with its
//! bookkeeping) of its response.

pub mod security;
pub mod tls;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper::{
    Method, Request, Response, StatusCode,
    body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, task::AbortHandle};

use crate::{
    export::api::{self, SocketQuery},
    export::web::security::{Verdict, WebSecurity},
};

/// A response body still being computed.
pub type Pending = Pin<Box<dyn Future<Output = Vec<u8>> + Send>>;

/// What the endpoint serves.
pub trait Site: Send + Sync + 'static {
    /// The Prometheus text exposition.
    fn metrics(&self) -> Vec<u8>;
    /// Whether every program is attached and start-up seeding finished.
    fn ready(&self) -> bool;
    /// [`api::Overview`] as JSON.
    fn overview(&self) -> Vec<u8>;
    /// [`api::SocketList`] as JSON; owners may need looking up first.
    fn sockets(self: Arc<Self>, query: SocketQuery) -> Pending;
    /// [`api::PortView`] of a local port as JSON.
    fn port(&self, port: u16) -> Vec<u8>;
    /// The busiest [`api::DestinationRecord`]s as JSON.
    fn destinations(&self) -> Vec<u8>;
    /// [`api::TrendList`] as JSON.
    fn trends(&self) -> Vec<u8>;
}

/// The page at `/`: self-contained, it reads the JSON API.
static INDEX_HTML: &str = include_str!("index.html");

/// Connections open at once. At the limit, a new one closes the one that
/// has waited longest for a request (or, if every one is being answered,
/// the longest-running answer).
pub const MAX_CONNECTIONS: usize = 1024;
/// A client must send a complete request head within this time, the TLS
/// handshake included; a keep-alive connection idle this long is closed.
/// Prometheus opens a new one at its next scrape.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A response must be written within this time (Prometheus gives up on a
/// scrape after 10 s by default).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);
/// Scrapes this close to the last gather get its body.
pub const FRESH_FOR: Duration = Duration::from_millis(500);
/// Encoded bodies held by unfinished responses, all connections together.
pub const MAX_PINNED_BYTES: usize = 32 << 20;
/// What a response hands the connection at a time.
pub const CHUNK_BYTES: usize = 16 << 10;
/// The kernel's send buffer of a connection (it doubles this for its own
/// bookkeeping): 64 KiB in flight is 64 MB/s at 1 ms.
pub const SEND_BUFFER_BYTES: usize = 64 << 10;
/// Largest request head accepted (hyper's minimum buffer is 8 KiB); also
/// the most a connection buffers of its response beyond the chunk being
/// written.
const MAX_HEAD_BYTES: usize = 16 << 10;
/// What TLS buffers per connection, each way, beyond the record in hand.
const TLS_BUFFER_BYTES: usize = 16 << 10;
/// What one connection costs beyond the shared bodies, at most: its task,
/// hyper's read and write buffers, and with TLS its buffers and records.
/// About 20 KiB were measured for plain HTTP (tests/abuse.rs), 24 KiB with
/// TLS, each from 1,000 clients that never read.
pub const PER_CONNECTION_BYTES: usize = 64 << 10;
/// Longest life of a connection, keep-alive included.
const MAX_CONNECTION_TIME: Duration = Duration::from_secs(60);
/// Pause after a failed accept (out of file descriptors, say), so that the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How often responses past [`RESPONSE_TIMEOUT`] are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Freed memory is handed back to the system at most this often, after
/// connections have closed.
const RELEASE_EVERY: Duration = Duration::from_secs(10);

/// Where the exposition is served by default (`--web.telemetry-path`).
pub const DEFAULT_TELEMETRY_PATH: &str = "/metrics";

/// The paths a telemetry path may not take: the page, the health checks
/// and the API.
pub fn check_telemetry_path(path: &str) -> Result<(), String> {
    let reserved = path == "/" || path.starts_with("/-/") || path.starts_with("/api/");
    if !path.starts_with('/')
        || reserved
        || path.contains(['?', '#'])
        || path.contains(char::is_whitespace)
    {
        return Err(format!(
            "{path:?} cannot serve the metrics: use a path such as /metrics (not /, /-/… or /api/…)"
        ));
    }
    Ok(())
}

/// Serves `site` on `listener` until `shutdown` resolves, its exposition at
/// `telemetry_path`; the socket list goes to loopback clients only unless
/// `expose_sockets`. `security` may require TLS and a user.
pub async fn serve(
    listener: TcpListener,
    site: Arc<dyn Site>,
    expose_sockets: bool,
    telemetry_path: String,
    security: Arc<WebSecurity>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    // The page links to the exposition wherever it is.
    let routes = Arc::new(Routes {
        index: Bytes::from(INDEX_HTML.replace(
            "href=\"/metrics\">/metrics<",
            &format!("href=\"{telemetry_path}\">{telemetry_path}<"),
        )),
        telemetry_path,
    });
    let connections = Arc::new(Connections::default());
    let metrics = Arc::new(MetricsCache::default());
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    let mut last_release = Instant::now();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            _ = sweep.tick() => {
                connections.end_late_responses();
                if last_release.elapsed() >= RELEASE_EVERY && connections.take_closed() {
                    crate::support::memory::release_freed();
                    last_release = Instant::now();
                }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Per-connection failures (reset before accept, fd limits)
                // must not end the server.
                Err(error) => {
                    tracing::debug!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        limit_send_buffer(&stream);
        connections.make_room();
        let (id, phase) = connections.open();
        let context = Served {
            site: site.clone(),
            security: security.clone(),
            metrics: metrics.clone(),
            peer,
            expose_sockets,
            routes: routes.clone(),
            phase: phase.clone(),
        };
        let open = Open {
            connections: connections.clone(),
            id,
        };
        let task = tokio::spawn(async move {
            let _open = open;
            if tokio::time::timeout(MAX_CONNECTION_TIME, accept(stream, context))
                .await
                .is_err()
            {
                tracing::debug!(%peer, "HTTP connection closed after its time");
            }
        });
        connections.track(id, task.abort_handle(), phase);
    }
}

/// Caps what the kernel buffers of a response for one connection. Left to
/// itself it grows the buffer to 4 MiB on a fast link, for each client,
/// even one that reads nothing: memory of the host, charged to tcptrace's
/// cgroup.
fn limit_send_buffer(stream: &tokio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let bytes = libc::c_int::try_from(SEND_BUFFER_BYTES).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid socket descriptor, and a value of the option's type
    // and size.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const bytes).cast(),
            libc::socklen_t::try_from(size_of::<libc::c_int>()).unwrap_or(4),
        )
    };
    if set != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "send buffer left as it was");
    }
}

/// What every request of one connection needs.
#[derive(Clone)]
struct Served {
    site: Arc<dyn Site>,
    security: Arc<WebSecurity>,
    metrics: Arc<MetricsCache>,
    peer: SocketAddr,
    expose_sockets: bool,
    routes: Arc<Routes>,
    phase: Arc<Phase>,
}

/// What the paths configured at start serve.
struct Routes {
    telemetry_path: String,
    /// The page, linking to `telemetry_path`.
    index: Bytes,
}

/// Serves one accepted connection, after its TLS handshake if any.
async fn accept(stream: tokio::net::TcpStream, served: Served) {
    let peer = served.peer;
    match served.security.tls.clone() {
        // The handshake counts against the head's deadline.
        Some(tls) => match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream)).await {
            Ok(Ok(mut stream)) => {
                stream.get_mut().1.set_buffer_limit(Some(TLS_BUFFER_BYTES));
                connection(stream, served).await;
            }
            Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        },
        None => connection(stream, served).await,
    }
}

/// Serves HTTP/1 requests on one connection, plain or TLS.
async fn connection<S>(stream: S, served: Served)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let served = served.clone();
        async move {
            let turn = served.phase.responding();
            if let Some(auth) = &served.security.auth {
                let header = request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                let security = &served.security;
                match auth.check(header, served.peer.ip()).await {
                    Verdict::Allowed => {}
                    Verdict::Denied => {
                        return Ok::<_, Infallible>(with_headers(security, unauthorized(turn)));
                    }
                    Verdict::Limited { retry_after } => {
                        return Ok(with_headers(security, too_many_attempts(turn, retry_after)));
                    }
                }
            }
            let response = respond(&served, request, turn).await;
            Ok(with_headers(&served.security, response))
        }
    });
    let outcome = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = outcome {
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
}

/// `http_server_config.headers`, on every response as the toolkit does.
fn with_headers(security: &WebSecurity, mut response: Response<Body>) -> Response<Body> {
    for (name, value) in &security.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

fn unauthorized(turn: Responding) -> Response<Body> {
    let mut response = text(
        StatusCode::UNAUTHORIZED,
        "a user and password are required\n",
        turn,
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"tcptrace\""),
    );
    response
}

/// The `<port>` of `/api/v1/ports/<port>`: a number from 1 to 65535.
fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!(
            "{text:?} is not a port: use {}<1-65535>",
            api::PORTS_PATH
        )),
    }
}

fn too_many_attempts(turn: Responding, retry_after: Duration) -> Response<Body> {
    let mut response = text(
        StatusCode::TOO_MANY_REQUESTS,
        "too many failed logins from this address: try again later\n",
        turn,
    );
    let seconds = retry_after.as_secs().max(1);
    if let Ok(value) = header::HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

async fn respond(served: &Served, request: Request<Incoming>, turn: Responding) -> Response<Body> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n", turn);
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let site = &served.site;
    match request.uri().path() {
        path if path == served.routes.telemetry_path => {
            let shared = served.metrics.body(&**site);
            let gzip = accepts_gzip(request.headers()) && shared.gzipped().is_some();
            let mut response = reply(
                StatusCode::OK,
                crate::export::prometheus::CONTENT_TYPE,
                Content::Shared(shared, gzip),
                turn,
            );
            let headers = response.headers_mut();
            headers.insert(
                header::VARY,
                header::HeaderValue::from_static("Accept-Encoding"),
            );
            if gzip {
                headers.insert(
                    header::CONTENT_ENCODING,
                    header::HeaderValue::from_static("gzip"),
                );
            }
            response
        }
        "/-/healthy" => text(StatusCode::OK, "tcptrace is healthy\n", turn),
        "/-/ready" if site.ready() => text(StatusCode::OK, "tcptrace is ready\n", turn),
        "/-/ready" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "tcptrace is starting: attaching programs and reading existing sockets\n",
            turn,
        ),
        "/" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Content::Own(served.routes.index.clone()),
            turn,
        ),
        api::OVERVIEW_PATH => json(StatusCode::OK, site.overview(), turn),
        api::TRENDS_PATH => json(StatusCode::OK, site.trends(), turn),
        path if (path == api::SOCKETS_PATH
            || path == api::DESTINATIONS_PATH
            || path.starts_with(api::PORTS_PATH))
            && !served.expose_sockets
            && !served.peer.ip().to_canonical().is_loopback() =>
        {
            text(
                StatusCode::FORBIDDEN,
                "the socket and port views show addresses and processes: they are served to loopback clients only (start tcptrace with --web.enable-api to serve them to every client)\n",
                turn,
            )
        }
        api::SOCKETS_PATH => match SocketQuery::parse(request.uri().query().unwrap_or_default()) {
            Ok(query) => json(StatusCode::OK, site.clone().sockets(query).await, turn),
            Err(error) => json(
                StatusCode::BAD_REQUEST,
                serde_json::to_vec(&serde_json::json!({ "error": error })).unwrap_or_default(),
                turn,
            ),
        },
        api::DESTINATIONS_PATH => json(StatusCode::OK, site.destinations(), turn),
        path if path.starts_with(api::PORTS_PATH) => {
            match parse_port(&path[api::PORTS_PATH.len()..]) {
                Ok(port) => json(StatusCode::OK, site.port(port), turn),
                Err(error) => json(
                    StatusCode::BAD_REQUEST,
                    serde_json::to_vec(&serde_json::json!({ "error": error })).unwrap_or_default(),
                    turn,
                ),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n", turn),
    }
}

fn json(status: StatusCode, content: Vec<u8>, turn: Responding) -> Response<Body> {
    reply(
        status,
        "application/json",
        Content::Own(content.into()),
        turn,
    )
}

fn text(status: StatusCode, content: &'static str, turn: Responding) -> Response<Body> {
    reply(
        status,
        "text/plain; charset=utf-8",
        Content::Own(Bytes::from_static(content.as_bytes())),
        turn,
    )
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    content: Content,
    turn: Responding,
) -> Response<Body> {
    let mut response = Response::new(Body {
        content,
        at: 0,
        _turn: turn,
    });
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Whether a request's `Accept-Encoding` takes gzip (and does not give it
/// a quality of 0).
fn accepts_gzip(headers: &header::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|param| {
                param
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

/// What a response sends.
enum Content {
    /// An encoded `/metrics` body, shared with other scrapes; gzipped if
    /// the flag says so.
    Shared(Arc<Shared>, bool),
    /// A body of this response's own.
    Own(Bytes),
}

/// A response body, handed to the connection [`CHUNK_BYTES`] at a time:
/// hyper asks for the next chunk only once it has written most of the
/// last, so an unread response costs one chunk, not a copy of the body.
pub struct Body {
    content: Content,
    at: usize,
    /// Marks the connection as answering until the body is gone.
    _turn: Responding,
}

impl Body {
    fn bytes(&self) -> &Bytes {
        match &self.content {
            Content::Shared(shared, true) => shared.gzipped().unwrap_or(&shared.bytes),
            Content::Shared(shared, false) => &shared.bytes,
            Content::Own(bytes) => bytes,
        }
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let bytes = self.bytes();
        let end = bytes.len().min(self.at + CHUNK_BYTES);
        if self.at >= end {
            return Poll::Ready(None);
        }
        let chunk = bytes.slice(self.at..end);
        self.at = end;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.at >= self.bytes().len()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact((self.bytes().len() - self.at) as u64)
    }
}

/// One encoded `/metrics` body; alive while a response or the cache holds it.
struct Shared {
    bytes: Bytes,
    /// The body gzipped, made for the first scrape that asks for it
    /// (`None`: compression failed, the plain body is sent).
    gzipped: OnceLock<Option<Bytes>>,
}

impl Shared {
    fn new(bytes: Bytes) -> Self {
        Self {
            bytes,
            gzipped: OnceLock::new(),
        }
    }

    fn gzipped(&self) -> Option<&Bytes> {
        self.gzipped
            .get_or_init(|| {
                // The fastest level: a scrape compresses to about a tenth
                // even so, and the body is made once for every scrape.
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(self.bytes.len() / 8),
                    flate2::Compression::fast(),
                );
                io::Write::write_all(&mut encoder, &self.bytes).ok()?;
                Some(encoder.finish().ok()?.into())
            })
            .as_ref()
    }

    /// What it holds, the gzipped copy included.
    fn held_bytes(&self) -> usize {
        self.bytes.len()
            + self
                .gzipped
                .get()
                .and_then(Option::as_ref)
                .map_or(0, Bytes::len)
    }
}

/// The last `/metrics` body, and the ones unfinished responses still hold.
#[derive(Default)]
struct MetricsCache {
    state: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    latest: Option<(Instant, Arc<Shared>)>,
    /// Bodies handed out, to count what unfinished responses hold.
    handed_out: Vec<Weak<Shared>>,
}

impl MetricsCache {
    /// The body for a scrape now: the last one if it is fresh, or if the
    /// bodies still held leave no room for another; else a new gather.
    /// The lock is held while gathering, so one gather runs at a time and
    /// the scrapes waiting for it get its body.
    fn body(&self, site: &dyn Site) -> Arc<Shared> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.handed_out.retain(|body| body.strong_count() > 0);
        if let Some((at, latest)) = &state.latest {
            let held: usize = state
                .handed_out
                .iter()
                .filter_map(Weak::upgrade)
                .map(|body| body.held_bytes())
                .sum();
            if at.elapsed() < FRESH_FOR || held + latest.held_bytes() > MAX_PINNED_BYTES {
                return latest.clone();
            }
        }
        // Let go of the previous body first, so that it can be freed while
        // the next one is encoded if no response holds it.
        state.latest = None;
        let body = Arc::new(Shared::new(site.metrics().into()));
        state.handed_out.push(Arc::downgrade(&body));
        state.latest = Some((Instant::now(), body.clone()));
        body
    }
}

/// Whether a connection is waiting for a request or answering one, and
/// since when: (1 << 63 when answering) | milliseconds since [`Connections`]
/// began.
struct Phase {
    state: AtomicU64,
    origin: Instant,
}

const ANSWERING: u64 = 1 << 63;

impl Phase {
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(ANSWERING - 1)
    }

    /// Marks the connection as answering until the guard is dropped.
    fn responding(self: &Arc<Self>) -> Responding {
        self.state.store(ANSWERING | self.now(), Ordering::Relaxed);
        Responding(self.clone())
    }

    fn get(&self) -> u64 {
        self.state.load(Ordering::Relaxed)
    }
}

/// Held by a response until its body is written or dropped.
struct Responding(Arc<Phase>);

impl Drop for Responding {
    fn drop(&mut self) {
        self.0.state.store(self.0.now(), Ordering::Relaxed);
    }
}

struct Tracked {
    abort: AbortHandle,
    phase: Arc<Phase>,
}

/// The open connections, by id in the order they were accepted.
struct Connections {
    open: Mutex<BTreeMap<u64, Tracked>>,
    next_id: AtomicU64,
    /// Whether a connection has ended since the last look.
    closed: std::sync::atomic::AtomicBool,
    origin: Instant,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            open: Mutex::default(),
            next_id: AtomicU64::new(0),
            closed: std::sync::atomic::AtomicBool::new(false),
            origin: Instant::now(),
        }
    }
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Tracked>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn open(&self) -> (u64, Arc<Phase>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let phase = Arc::new(Phase {
            state: AtomicU64::new(0),
            origin: self.origin,
        });
        phase.state.store(phase.now(), Ordering::Relaxed);
        (id, phase)
    }

    fn track(&self, id: u64, abort: AbortHandle, phase: Arc<Phase>) {
        if !abort.is_finished() {
            self.lock().insert(id, Tracked { abort, phase });
        }
    }

    fn close(&self, id: u64) {
        self.lock().remove(&id);
        self.closed.store(true, Ordering::Relaxed);
    }

    fn take_closed(&self) -> bool {
        self.closed.swap(false, Ordering::Relaxed)
    }

    /// At the limit, closes the connection waiting longest for a request,
    /// or if all are answering, the one answering longest.
    fn make_room(&self) {
        let mut open = self.lock();
        open.retain(|_, tracked| !tracked.abort.is_finished());
        while open.len() >= MAX_CONNECTIONS {
            let Some(victim) = open
                .iter()
                .min_by_key(|(_, tracked)| tracked.phase.get())
                .map(|(id, _)| *id)
            else {
                break;
            };
            if let Some(tracked) = open.remove(&victim) {
                tracked.abort.abort();
            }
            tracing::debug!("HTTP connection limit reached: closed the longest-waiting one");
        }
    }

    /// Ends the connections whose response has taken too long to write.
    fn end_late_responses(&self) {
        let Some(since) = self.origin.elapsed().checked_sub(RESPONSE_TIMEOUT) else {
            return;
        };
        let cutoff = u64::try_from(since.as_millis()).unwrap_or(0);
        let late: Vec<u64> = self
            .lock()
            .iter()
            .filter(|(_, tracked)| {
                let state = tracked.phase.get();
                state & ANSWERING != 0 && state & !ANSWERING < cutoff
            })
            .map(|(id, _)| *id)
            .collect();
        if late.is_empty() {
            return;
        }
        let mut open = self.lock();
        for id in late {
            if let Some(tracked) = open.remove(&id) {
                tracked.abort.abort();
            }
        }
        tracing::debug!("closed HTTP connections whose response was not read in time");
    }
}

/// Removes its connection from [`Connections`] when the task ends, aborted
/// or not.
struct Open {
    connections: Arc<Connections>,
    id: u64,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.connections.close(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counting(AtomicU64);

    impl Site for Counting {
        fn metrics(&self) -> Vec<u8> {
            let n = self.0.fetch_add(1, Ordering::Relaxed);
            vec![u8::try_from(n % 256).expect("fits"); 1 << 20]
        }
        fn ready(&self) -> bool {
            true
        }
        fn overview(&self) -> Vec<u8> {
            Vec::new()
        }
        fn sockets(self: Arc<Self>, _: SocketQuery) -> Pending {
            Box::pin(async { Vec::new() })
        }
        fn port(&self, _: u16) -> Vec<u8> {
            Vec::new()
        }
        fn destinations(&self) -> Vec<u8> {
            Vec::new()
        }
        fn trends(&self) -> Vec<u8> {
            Vec::new()
        }
    }

    #[test]
    fn port_paths_take_a_port_number_only() {
        assert_eq!(parse_port("8080"), Ok(8080));
        assert_eq!(parse_port("65535"), Ok(65535));
        for bad in ["0", "65536", "", "80a", "-1", "8080/x"] {
            let error = parse_port(bad).expect_err(bad);
            assert!(error.contains("1-65535"), "{error}");
        }
    }

    /// Makes the cached body stale.
    fn age(cache: &MetricsCache) {
        if let Some((at, _)) = cache.state.lock().expect("lock").latest.as_mut() {
            *at -= FRESH_FOR;
        }
    }

    #[test]
    fn scrapes_share_a_fresh_body() {
        let site = Counting(AtomicU64::new(0));
        let cache = MetricsCache::default();
        let first = cache.body(&site);
        let second = cache.body(&site);
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(site.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn held_bodies_stay_under_the_cap() {
        let site = Counting(AtomicU64::new(0));
        let cache = MetricsCache::default();
        let mut held = Vec::new();
        for _ in 0..(MAX_PINNED_BYTES >> 20) * 2 {
            age(&cache);
            held.push(cache.body(&site));
        }
        let distinct = site.0.load(Ordering::Relaxed);
        assert_eq!(distinct, (MAX_PINNED_BYTES >> 20) as u64);
        // Once they are let go, the next scrape gathers anew.
        drop(held);
        age(&cache);
        cache.body(&site);
        assert_eq!(site.0.load(Ordering::Relaxed), distinct + 1);
    }

    #[test]
    fn gzip_is_sent_when_asked_for_and_not_refused() {
        let headers = |value: &'static str| {
            let mut headers = header::HeaderMap::new();
            headers.insert(
                header::ACCEPT_ENCODING,
                header::HeaderValue::from_static(value),
            );
            headers
        };
        assert!(accepts_gzip(&headers("gzip")));
        assert!(accepts_gzip(&headers("deflate, GZIP;q=0.5")));
        assert!(!accepts_gzip(&headers("gzip;q=0")));
        assert!(!accepts_gzip(&headers("gzip; q=0.0, identity")));
        assert!(!accepts_gzip(&headers("br, x-gzip2")));
        assert!(!accepts_gzip(&header::HeaderMap::new()));
    }

    #[test]
    fn a_gzipped_body_is_the_body() {
        use std::io::Read;
        let text = "tcptrace_sockets{state=\"TIME_WAIT\"} 1\n".repeat(1000);
        let shared = Shared::new(Bytes::from(text.clone()));
        let gzipped = shared.gzipped().expect("compressed").clone();
        assert!(gzipped.len() * 10 < text.len(), "{}", gzipped.len());
        assert_eq!(shared.held_bytes(), text.len() + gzipped.len());
        let mut unzipped = String::new();
        flate2::read::GzDecoder::new(&gzipped[..])
            .read_to_string(&mut unzipped)
            .expect("gzip");
        assert_eq!(unzipped, text);
    }

    #[test]
    fn bodies_go_out_in_chunks() {
        let site = Counting(AtomicU64::new(0));
        let cache = MetricsCache::default();
        let phase = Connections::default().open().1;
        let mut body = Body {
            content: Content::Shared(cache.body(&site), false),
            at: 0,
            _turn: phase.responding(),
        };
        assert_ne!(phase.get() & ANSWERING, 0);
        assert_eq!(body.size_hint().exact(), Some(1 << 20));
        let waker = std::task::Waker::noop();
        let mut context = Context::from_waker(waker);
        let mut total = 0;
        while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut context) {
            let chunk = frame.into_data().expect("data");
            assert!(chunk.len() <= CHUNK_BYTES);
            total += chunk.len();
        }
        assert_eq!(total, 1 << 20);
        assert!(body.is_end_stream());
        drop(body);
        assert_eq!(phase.get() & ANSWERING, 0, "waiting again");
    }
}
