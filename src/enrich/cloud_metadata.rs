//! The host's zone, region, account and VPC from the cloud's instance metadata service: AWS
//! IMDSv2 (token, then the identity document and the primary interface's VPC) and Google Cloud's
//! metadata server. Bounded by one timeout and never fatal: a failure is one log line.
use std::time::Duration;

use serde::Deserialize;

use super::resources::{CloudDetect, CloudMetadataSection, HostPlacement};

const AWS_TOKEN_TTL: &str = "60";

#[derive(Debug, thiserror::Error)]
enum DetectError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("{0}")]
    Document(String),
}

/// Asks the configured metadata service; `None` when detection is off or found nothing.
pub async fn detect(section: &CloudMetadataSection) -> Option<HostPlacement> {
    let providers: &[CloudDetect] = match section.detect {
        CloudDetect::Off => return None,
        CloudDetect::Aws => &[CloudDetect::Aws],
        CloudDetect::Gcp => &[CloudDetect::Gcp],
        CloudDetect::Auto => &[CloudDetect::Aws, CloudDetect::Gcp],
    };
    let timeout = Duration::from_millis(section.timeout_ms);
    let base = section.endpoint.trim_end_matches('/');
    // the rustls provider reqwest needs even for plain HTTP; a second install is a no-op
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match reqwest::Client::builder().timeout(timeout).no_proxy().build() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cloud metadata detection skipped: no HTTP client");
            return None;
        }
    };
    let attempt = async {
        let mut errors = Vec::new();
        for provider in providers {
            let found = match provider {
                CloudDetect::Gcp => gcp(&client, base).await,
                _ => aws(&client, base).await,
            };
            match found {
                Ok(placement) => return Ok(placement),
                Err(e) => errors.push(format!("{}: {e}", provider_name(*provider))),
            }
        }
        Err(errors.join("; "))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(placement)) => {
            tracing::info!(
                provider = placement.provider,
                zone = placement.zone.as_deref(),
                region = placement.region.as_deref(),
                "cloud placement detected"
            );
            Some(placement)
        }
        Ok(Err(e)) => {
            tracing::warn!(
                endpoint = base,
                error = e,
                "cloud metadata not available; set [resources.host] or resources.cloud_metadata.detect = \"off\""
            );
            None
        }
        Err(_) => {
            tracing::warn!(
                endpoint = base,
                timeout_ms = section.timeout_ms,
                "cloud metadata timed out; set [resources.host] or resources.cloud_metadata.detect = \"off\""
            );
            None
        }
    }
}

fn provider_name(p: CloudDetect) -> &'static str {
    match p {
        CloudDetect::Gcp => "gcp",
        _ => "aws",
    }
}

async fn text(response: reqwest::Response) -> Result<String, DetectError> {
    let status = response.status();
    if !status.is_success() {
        return Err(DetectError::Status {
            url: response.url().to_string(),
            status: status.as_u16(),
        });
    }
    Ok(response.text().await?.trim().to_string())
}

async fn aws(client: &reqwest::Client, base: &str) -> Result<HostPlacement, DetectError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Identity {
        availability_zone: Option<String>,
        region: Option<String>,
        account_id: Option<String>,
    }
    let token = text(
        client
            .put(format!("{base}/latest/api/token"))
            .header("X-aws-ec2-metadata-token-ttl-seconds", AWS_TOKEN_TTL)
            .send()
            .await?,
    )
    .await?;
    let get = |path: &str| {
        client
            .get(format!("{base}{path}"))
            .header("X-aws-ec2-metadata-token", token.as_str())
            .send()
    };
    let document = text(get("/latest/dynamic/instance-identity/document").await?).await?;
    let identity: Identity =
        serde_json::from_str(&document).map_err(|e| DetectError::Document(format!("identity document: {e}")))?;
    // the VPC is per interface: the primary one's, best effort
    let vpc = match text(get("/latest/meta-data/mac").await?).await {
        Ok(mac) => text(get(&format!("/latest/meta-data/network/interfaces/macs/{mac}/vpc-id")).await?)
            .await
            .ok(),
        Err(_) => None,
    };
    Ok(HostPlacement {
        provider: Some("aws"),
        zone: identity.availability_zone,
        region: identity.region,
        account: identity.account_id,
        vpc: vpc.filter(|v| !v.is_empty()),
    })
}

async fn gcp(client: &reqwest::Client, base: &str) -> Result<HostPlacement, DetectError> {
    let get = |path: &str| {
        client
            .get(format!("{base}/computeMetadata/v1/{path}"))
            .header("Metadata-Flavor", "Google")
            .send()
    };
    // "projects/123456/zones/europe-west1-b"
    let zone_path = text(get("instance/zone").await?).await?;
    let zone = zone_path
        .rsplit('/')
        .next()
        .filter(|z| !z.is_empty())
        .ok_or_else(|| DetectError::Document(format!("zone {zone_path:?}")))?
        .to_string();
    let region = zone.rsplit_once('-').map(|(r, _)| r.to_string());
    let project = text(get("project/project-id").await?).await.ok();
    Ok(HostPlacement {
        provider: Some("gcp"),
        zone: Some(zone),
        region,
        account: project,
        vpc: None,
    })
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::time::Instant;

    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper::{Method, Request, Response};
    use hyper_util::rt::TokioIo;

    use super::*;

    const TOKEN: &str = "token-123";

    /// A fake metadata server: AWS IMDSv2 (a token is required, as on a real instance) and
    /// Google's (the flavor header is required). `stall` never answers, for the timeout.
    async fn fake_metadata(stall: bool) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                        if stall {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        Ok::<_, Infallible>(answer(&req))
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    fn answer(req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let ok = |body: &str| Response::new(Full::new(Bytes::from(body.to_string())));
        let status = |code: u16| {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = hyper::StatusCode::from_u16(code).expect("status");
            r
        };
        let path = req.uri().path();
        if path.starts_with("/computeMetadata/") {
            if header("Metadata-Flavor") != Some("Google") {
                return status(403);
            }
            return match path {
                "/computeMetadata/v1/instance/zone" => ok("projects/42/zones/europe-west1-b"),
                "/computeMetadata/v1/project/project-id" => ok("my-project"),
                _ => status(404),
            };
        }
        if path == "/latest/api/token" {
            return if req.method() == Method::PUT && header("X-aws-ec2-metadata-token-ttl-seconds").is_some() {
                ok(TOKEN)
            } else {
                status(405)
            };
        }
        if header("X-aws-ec2-metadata-token") != Some(TOKEN) {
            return status(401);
        }
        match path {
            "/latest/dynamic/instance-identity/document" => ok(
                r#"{"accountId":"123456789012","availabilityZone":"us-east-1b","region":"us-east-1","instanceId":"i-0abc"}"#,
            ),
            "/latest/meta-data/mac" => ok("0e:aa:bb:cc:dd:ee"),
            "/latest/meta-data/network/interfaces/macs/0e:aa:bb:cc:dd:ee/vpc-id" => ok("vpc-0123"),
            _ => status(404),
        }
    }

    fn section(detect: CloudDetect, endpoint: String, timeout_ms: u64) -> CloudMetadataSection {
        CloudMetadataSection {
            detect,
            endpoint,
            timeout_ms,
        }
    }

    #[tokio::test]
    async fn aws_imdsv2_gives_zone_region_account_and_vpc() {
        let addr = fake_metadata(false).await;
        let found = detect(&section(CloudDetect::Aws, format!("http://{addr}"), 2000))
            .await
            .expect("detected");
        assert_eq!(
            found,
            HostPlacement {
                provider: Some("aws"),
                zone: Some("us-east-1b".into()),
                region: Some("us-east-1".into()),
                account: Some("123456789012".into()),
                vpc: Some("vpc-0123".into()),
            }
        );
    }

    #[tokio::test]
    async fn gcp_zone_gives_the_region() {
        let addr = fake_metadata(false).await;
        let found = detect(&section(CloudDetect::Gcp, format!("http://{addr}/"), 2000))
            .await
            .expect("detected");
        assert_eq!(found.provider, Some("gcp"));
        assert_eq!(found.zone.as_deref(), Some("europe-west1-b"));
        assert_eq!(found.region.as_deref(), Some("europe-west1"));
        assert_eq!(found.account.as_deref(), Some("my-project"));
    }

    #[tokio::test]
    async fn off_unreachable_and_silent_services_are_not_fatal() {
        assert_eq!(
            detect(&section(CloudDetect::Off, "http://127.0.0.1:1".into(), 100)).await,
            None
        );
        // nothing listens on port 1 of loopback: refused at once
        assert_eq!(
            detect(&section(CloudDetect::Auto, "http://127.0.0.1:1".into(), 500)).await,
            None
        );
        let addr = fake_metadata(true).await;
        let started = Instant::now();
        assert_eq!(
            detect(&section(CloudDetect::Auto, format!("http://{addr}"), 300)).await,
            None
        );
        // bounded by the timeout, not by the server (which stalls for 30 s)
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }
}
