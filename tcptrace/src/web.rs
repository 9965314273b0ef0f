//! The HTTP endpoint: `/metrics`, `/-/healthy`, `/-/ready`, the JSON API
//! ([`crate::api`]) and a page for browsers at `/`.
//!
//! Small and defensive: GET and HEAD only, a bounded request head read
//! within a deadline, and a cap on connections served at once.

use std::{
    convert::Infallible, future::Future, io, net::SocketAddr, pin::Pin, sync::Arc, time::Duration,
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::{
    api::{self, SocketQuery},
    web_config::{Verdict, WebSecurity},
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
}

/// The page at `/`: self-contained, it reads the JSON API.
static INDEX_HTML: &str = include_str!("index.html");

/// Connections served at once; more wait in the kernel's accept queue.
/// High enough that hundreds of idle or slow clients cannot crowd out a
/// scrape; each costs a task and at most [`MAX_HEAD_BYTES`] of buffer, so
/// all of them stay under 20 MiB.
const MAX_CONNECTIONS: usize = 1024;
/// A client must send its request head within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted (hyper's minimum buffer is 8 KiB).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Longest life of a connection, keep-alive included: a client that stops
/// reading its response cannot hold a connection for ever. Prometheus
/// simply opens a new one.
const MAX_CONNECTION_TIME: Duration = Duration::from_secs(60);
/// Pause after a failed accept (out of file descriptors, say), so that the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `site` on `listener` until `shutdown` resolves; the socket list
/// goes to loopback clients only unless `expose_sockets`. `security` may
/// require TLS and a user.
pub async fn serve(
    listener: TcpListener,
    site: Arc<dyn Site>,
    expose_sockets: bool,
    security: Arc<WebSecurity>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => return Ok(()),
            permit = permits.clone().acquire_owned() => permit.expect("semaphore never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
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
        let (site, security) = (site.clone(), security.clone());
        tokio::spawn(async move {
            let served = async {
                match &security.tls {
                    // The handshake counts against the head's deadline.
                    Some(tls) => match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream))
                        .await
                    {
                        Ok(Ok(stream)) => {
                            connection(stream, site, security.clone(), peer, expose_sockets).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    },
                    None => connection(stream, site, security.clone(), peer, expose_sockets).await,
                }
            };
            if tokio::time::timeout(MAX_CONNECTION_TIME, served)
                .await
                .is_err()
            {
                tracing::debug!(%peer, "HTTP connection closed after its time");
            }
            drop(permit);
        });
    }
}

/// Serves HTTP/1 requests on one connection, plain or TLS.
async fn connection<S>(
    stream: S,
    site: Arc<dyn Site>,
    security: Arc<WebSecurity>,
    peer: SocketAddr,
    expose_sockets: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let (site, security) = (site.clone(), security.clone());
        async move {
            if let Some(auth) = &security.auth {
                let header = request
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                match auth.check(header, peer.ip()).await {
                    Verdict::Allowed => {}
                    Verdict::Denied => return Ok::<_, Infallible>(unauthorized()),
                    Verdict::Limited { retry_after } => {
                        return Ok(too_many_attempts(retry_after));
                    }
                }
            }
            Ok(respond(site, request, peer, expose_sockets).await)
        }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = served {
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut response = text(
        StatusCode::UNAUTHORIZED,
        "a user and password are required\n",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"tcptrace\""),
    );
    response
}

fn too_many_attempts(retry_after: Duration) -> Response<Full<Bytes>> {
    let mut response = text(
        StatusCode::TOO_MANY_REQUESTS,
        "too many failed logins from this address: try again later\n",
    );
    let seconds = retry_after.as_secs().max(1);
    if let Ok(value) = header::HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

async fn respond(
    site: Arc<dyn Site>,
    request: Request<Incoming>,
    peer: SocketAddr,
    expose_sockets: bool,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/metrics" => body(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            site.metrics().into(),
        ),
        "/-/healthy" => text(StatusCode::OK, "tcptrace is healthy\n"),
        "/-/ready" if site.ready() => text(StatusCode::OK, "tcptrace is ready\n"),
        "/-/ready" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "tcptrace is starting: attaching programs and reading existing sockets\n",
        ),
        "/" => body(
            StatusCode::OK,
            "text/html; charset=utf-8",
            INDEX_HTML.into(),
        ),
        api::OVERVIEW_PATH => json(StatusCode::OK, site.overview()),
        api::SOCKETS_PATH if !expose_sockets && !peer.ip().to_canonical().is_loopback() => text(
            StatusCode::FORBIDDEN,
            "the socket list shows addresses and command lines: it is served to loopback clients only (start tcptrace with --web.enable-api to serve it to every client)\n",
        ),
        api::SOCKETS_PATH => match SocketQuery::parse(request.uri().query().unwrap_or_default()) {
            Ok(query) => json(StatusCode::OK, site.sockets(query).await),
            Err(error) => json(
                StatusCode::BAD_REQUEST,
                serde_json::to_vec(&serde_json::json!({ "error": error })).unwrap_or_default(),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn json(status: StatusCode, content: Vec<u8>) -> Response<Full<Bytes>> {
    body(status, "application/json", content.into())
}

fn body(status: StatusCode, content_type: &'static str, content: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(content));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

fn text(status: StatusCode, content: &'static str) -> Response<Full<Bytes>> {
    body(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(content.as_bytes()),
    )
}
