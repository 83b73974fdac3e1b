//! The agent's own small HTTP endpoints (`/metrics`, `/healthz`, `/readyz`): bind at startup,
//! so that a taken port is a startup error naming the key to change, then serve from a task.
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{key} = {value} is not an address:port")]
    Address { key: &'static str, value: String },
    #[error("cannot listen on {addr} (port in use? change {key})")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds `listen` (the value of configuration key `key`) now.
pub fn bind(key: &'static str, listen: &str) -> Result<(std::net::TcpListener, SocketAddr), ServeError> {
    let addr: SocketAddr = listen.parse().map_err(|_| ServeError::Address {
        key,
        value: listen.to_string(),
    })?;
    let bind_error = |source| ServeError::Bind { key, addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    Ok((listener, addr))
}

/// Answers every request on `listener` with `handler`, from a task on `runtime`.
pub fn serve<F>(listener: std::net::TcpListener, runtime: &tokio::runtime::Handle, what: &'static str, handler: F)
where
    F: Fn(&Request<hyper::body::Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    runtime.spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => return tracing::warn!(error = %e, endpoint = what, "endpoint could not start"),
        };
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // out of file descriptors and the like: back off instead of spinning
                    tracing::debug!(error = %e, endpoint = what, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let response = handler(&req);
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
