//! Sending one `ExportMetricsServiceRequest` over gRPC (tonic) or HTTP/protobuf (reqwest), with
//! TLS (system roots or a CA file, optional client certificate), gzip and custom headers.
use std::io::Write;
use std::str::FromStr;

use flate2::write::GzEncoder;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use super::settings::{OtlpSettings, Protocol};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot read {what} {path}")]
    File {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid OTLP endpoint {url}: {reason}")]
    Endpoint { url: String, reason: String },
    #[error("invalid OTLP header {name}: header names must be lowercase ASCII and values visible ASCII")]
    Header { name: String },
    #[error("gRPC export failed: {0}")]
    Grpc(String),
    #[error("HTTP export failed: {0}")]
    Http(String),
    #[error("HTTP export rejected with status {status}: {body}")]
    Status { status: u16, body: String },
}

enum Inner {
    Grpc {
        channel: Channel,
        client: MetricsServiceClient<Channel>,
        metadata: MetadataMap,
    },
    Http {
        client: reqwest::Client,
        url: String,
        headers: reqwest::header::HeaderMap,
        gzip: bool,
    },
}

/// A connection to one OTLP endpoint. Creating it does not contact the collector: an
/// unreachable collector shows up as export errors, never as a startup failure.
pub struct OtlpClient {
    inner: Inner,
}

fn read(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::File {
        what,
        path: path.display().to_string(),
        source,
    })
}

impl OtlpClient {
    /// Must run inside a tokio runtime (the gRPC channel spawns its connection task there).
    pub fn new(settings: &OtlpSettings) -> Result<Self, TransportError> {
        // one process-wide rustls provider for tonic and reqwest; a second install is a no-op
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = settings.ca_file.as_deref().map(|p| read("CA file", p)).transpose()?;
        let identity = match (&settings.client_cert_file, &settings.client_key_file) {
            (Some(cert), Some(key)) => Some((read("client certificate", cert)?, read("client key", key)?)),
            _ => None,
        };
        let inner = match settings.protocol {
            Protocol::Grpc => {
                let bad = |reason: String| TransportError::Endpoint {
                    url: settings.url.clone(),
                    reason,
                };
                let mut endpoint = Channel::from_shared(settings.url.clone())
                    .map_err(|e| bad(e.to_string()))?
                    .timeout(settings.timeout)
                    .connect_timeout(settings.timeout);
                if settings.url.starts_with("https://") {
                    let mut tls = ClientTlsConfig::new().with_native_roots();
                    if let Some(ca) = &ca {
                        tls = tls.ca_certificate(Certificate::from_pem(ca));
                    }
                    if let Some((cert, key)) = &identity {
                        tls = tls.identity(Identity::from_pem(cert, key));
                    }
                    endpoint = endpoint.tls_config(tls).map_err(|e| bad(e.to_string()))?;
                }
                let channel = endpoint.connect_lazy();
                let mut client = MetricsServiceClient::new(channel.clone());
                if settings.gzip {
                    client = client.send_compressed(CompressionEncoding::Gzip);
                }
                let mut metadata = MetadataMap::new();
                for (name, value) in &settings.headers {
                    let key = MetadataKey::from_str(&name.to_ascii_lowercase())
                        .map_err(|_| TransportError::Header { name: name.clone() })?;
                    let mut value = MetadataValue::try_from(value.as_str())
                        .map_err(|_| TransportError::Header { name: name.clone() })?;
                    // header values are credentials: kept out of any debug output of the request
                    value.set_sensitive(true);
                    metadata.insert(key, value);
                }
                Inner::Grpc {
                    channel,
                    client,
                    metadata,
                }
            }
            Protocol::HttpProtobuf => {
                let mut builder = reqwest::Client::builder().timeout(settings.timeout);
                if let Some(ca) = &ca {
                    let cert = reqwest::Certificate::from_pem(ca).map_err(|e| TransportError::Http(e.to_string()))?;
                    builder = builder.tls_certs_only([cert]);
                }
                if let Some((cert, key)) = &identity {
                    let pem = [cert.as_slice(), key.as_slice()].concat();
                    let id = reqwest::Identity::from_pem(&pem).map_err(|e| TransportError::Http(e.to_string()))?;
                    builder = builder.identity(id);
                }
                let client = builder.build().map_err(|e| TransportError::Http(e.to_string()))?;
                let mut headers = reqwest::header::HeaderMap::new();
                for (name, value) in &settings.headers {
                    let bad = || TransportError::Header { name: name.clone() };
                    let mut value = reqwest::header::HeaderValue::from_str(value).map_err(|_| bad())?;
                    value.set_sensitive(true);
                    headers.insert(reqwest::header::HeaderName::from_str(name).map_err(|_| bad())?, value);
                }
                Inner::Http {
                    client,
                    url: settings.url.clone(),
                    headers,
                    gzip: settings.gzip,
                }
            }
        };
        Ok(Self { inner })
    }

    /// Sends one request; returns the bytes put on the wire (body after compression). Borrowed,
    /// so that the caller keeps it for retries without a copy per attempt (HTTP encodes straight
    /// from it; gRPC needs one owned copy).
    pub async fn export(&mut self, request: &ExportMetricsServiceRequest) -> Result<usize, TransportError> {
        match &mut self.inner {
            Inner::Grpc {
                channel,
                client,
                metadata,
            } => {
                let size = request.encoded_len();
                let mut req = tonic::Request::new(request.clone());
                *req.metadata_mut() = metadata.clone();
                match client.export(req).await {
                    Ok(_) => Ok(size),
                    // a receiver without gzip: send uncompressed from now on, and retry at once
                    Err(status)
                        if status.code() == tonic::Code::Unimplemented && status.message().contains("compress") =>
                    {
                        tracing::warn!(
                            message = status.message(),
                            "the OTLP receiver does not accept gzip; sending uncompressed"
                        );
                        *client = MetricsServiceClient::new(channel.clone());
                        let mut req = tonic::Request::new(request.clone());
                        *req.metadata_mut() = metadata.clone();
                        client
                            .export(req)
                            .await
                            .map_err(|status| TransportError::Grpc(status_line(&status)))?;
                        Ok(size)
                    }
                    Err(status) => Err(TransportError::Grpc(status_line(&status))),
                }
            }
            Inner::Http {
                client,
                url,
                headers,
                gzip,
            } => {
                let mut body = request.encode_to_vec();
                let mut req = client
                    .post(url.as_str())
                    .headers(headers.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf");
                if *gzip {
                    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
                    encoder
                        .write_all(&body)
                        .map_err(|e| TransportError::Http(e.to_string()))?;
                    body = encoder.finish().map_err(|e| TransportError::Http(e.to_string()))?;
                    req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
                }
                let size = body.len();
                let response = req
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| TransportError::Http(error_chain(&e)))?;
                let status = response.status();
                if !status.is_success() {
                    let body = response.text().await.unwrap_or_default();
                    return Err(TransportError::Status {
                        status: status.as_u16(),
                        body: body.chars().take(200).collect(),
                    });
                }
                Ok(size)
            }
        }
    }
}

fn status_line(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// reqwest puts the useful part ("connection refused") at the end of the source chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}
