//! Reading a running daemon's JSON API, for `tcptrace sockets` and
//! `tcptrace top`.

use std::{net::SocketAddr, time::Duration};

use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, body::Bytes, header};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

/// How long a request may take in all.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the address: no daemon runs there.
    #[error("no tcptrace daemon answers at {address}: {source}")]
    Unreachable {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("tcptrace at {address} answered {status}: {message}")]
    Status {
        address: SocketAddr,
        status: StatusCode,
        message: String,
    },
    #[error("talking to tcptrace at {address}: {message}")]
    Protocol {
        address: SocketAddr,
        message: String,
    },
}

/// GETs `path_and_query` from the daemon at `address` and decodes the JSON.
pub async fn get_json<T: DeserializeOwned>(
    address: SocketAddr,
    path_and_query: &str,
) -> Result<T, ClientError> {
    let protocol = |message: String| ClientError::Protocol { address, message };
    let body = tokio::time::timeout(TIMEOUT, get(address, path_and_query))
        .await
        .map_err(|_| protocol(format!("no answer within {TIMEOUT:?}")))??;
    serde_json::from_slice(&body).map_err(|e| protocol(format!("unexpected answer: {e}")))
}

async fn get(address: SocketAddr, path_and_query: &str) -> Result<Bytes, ClientError> {
    let protocol = |message: String| ClientError::Protocol { address, message };
    let stream = TcpStream::connect(address)
        .await
        .map_err(|source| ClientError::Unreachable { address, source })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| protocol(e.to_string()))?;
    tokio::spawn(connection);
    let request = Request::get(path_and_query)
        .header(header::HOST, address.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| protocol(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| protocol(e.to_string()))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| protocol(e.to_string()))?
        .to_bytes();
    if !status.is_success() {
        let message = String::from_utf8_lossy(&body);
        return Err(ClientError::Status {
            address,
            status,
            message: message.trim().to_owned(),
        });
    }
    Ok(body)
}
