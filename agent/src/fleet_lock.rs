//! The cluster's built-in FleetLock server: `POST /v1/pre-reboot` and `/v1/steady-state`
//! on TCP 4242 of every node in a cluster, decided by the control plane's leader.
//!
//! The protocol is Zincati's and Airlock's: each request carries the `fleet-lock-protocol:
//! true` header and `{"client_params": {"id": …, "group": …}}`; `200` grants (or confirms
//! the release), anything else refuses with `{"kind": …, "value": …}`. Keelson's own nodes
//! use it when their reboot policy is `fleet-lock` and no URL is given; other machines
//! may use it too. Like Airlock it does not authenticate its clients: it trusts the
//! network it listens on.
//!
//! Parsing is [`parse`], pure; [`serve`] is the thin TCP shell around it.

use std::sync::Arc;
use std::time::Duration;

use keelson_api::cluster::LockRequest;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::control_plane::ControlPlane;

/// The port every node of a cluster serves FleetLock on.
pub const FLEET_LOCK_PORT: u16 = 4242;
/// A request larger than this is refused: FleetLock bodies are a few dozen bytes.
const MAX_REQUEST: usize = 16 * 1024;
/// A client that has not sent its request by then is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The URL a node's own updater uses for the built-in server.
pub fn built_in_url() -> String {
    format!("http://127.0.0.1:{FLEET_LOCK_PORT}")
}

/// A refusal: the HTTP status and FleetLock's `kind` and `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// FleetLock's error kind.
    pub kind: String,
    /// What went wrong, in words.
    pub value: String,
}

impl Refusal {
    fn new(status: u16, kind: &str, value: impl Into<String>) -> Refusal {
        Refusal {
            status,
            kind: kind.to_owned(),
            value: value.into(),
        }
    }
}

/// Reads a whole request (head and body) out of `bytes`: `None` while more is needed.
pub fn parse(bytes: &[u8]) -> Option<Result<LockRequest, Refusal>> {
    let head_end = bytes.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..head_end]);
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut length = 0usize;
    let mut protocol = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().unwrap_or(usize::MAX),
            "fleet-lock-protocol" => protocol = value.trim() == "true",
            _ => {}
        }
    }
    let body_start = head_end + 4;
    if length != usize::MAX && bytes.len() < body_start.saturating_add(length) {
        return None;
    }
    Some(request(
        request_line,
        protocol,
        length,
        &bytes[body_start..],
    ))
}

fn request(
    request_line: &str,
    protocol: bool,
    length: usize,
    body: &[u8],
) -> Result<LockRequest, Refusal> {
    let mut words = request_line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let action = match path {
        "/v1/pre-reboot" => "pre-reboot",
        "/v1/steady-state" => "steady-state",
        other => {
            return Err(Refusal::new(
                404,
                "failed_unknown_path",
                format!("{other} is not a FleetLock path (/v1/pre-reboot, /v1/steady-state)"),
            ))
        }
    };
    if method != "POST" {
        return Err(Refusal::new(
            405,
            "failed_method",
            format!("{path} takes POST, not {method}"),
        ));
    }
    if !protocol {
        return Err(Refusal::new(
            400,
            "failed_missing_header",
            "the fleet-lock-protocol: true header is missing",
        ));
    }
    if length == usize::MAX {
        return Err(Refusal::new(
            400,
            "failed_body",
            "content-length is not a number",
        ));
    }
    let params: Value =
        serde_json::from_slice(&body[..length.min(body.len())]).map_err(|error| {
            Refusal::new(400, "failed_body", format!("the body is not JSON: {error}"))
        })?;
    let id = params["client_params"]["id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| Refusal::new(400, "failed_body", "client_params.id is missing"))?;
    let group = params["client_params"]["group"]
        .as_str()
        .filter(|group| !group.is_empty())
        .unwrap_or("default");
    Ok(LockRequest {
        action: action.to_owned(),
        group: group.to_owned(),
        id: id.to_owned(),
    })
}

/// An HTTP response with `body`.
fn response(status: u16, body: &str) -> String {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        _ => "Service Unavailable",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn refusal_body(refusal: &Refusal) -> String {
    json!({"kind": refusal.kind, "value": refusal.value}).to_string()
}

/// Serves FleetLock on every address until the agent stops; a port that cannot be bound
/// is logged (the updater then reports that the lock cannot be reached).
pub async fn serve(control: Arc<ControlPlane>) {
    let listener = match tokio::net::TcpListener::bind(("0.0.0.0", FLEET_LOCK_PORT)).await {
        Ok(listener) => listener,
        Err(error) => {
            warn!("cluster: cannot serve FleetLock on port {FLEET_LOCK_PORT}: {error}");
            return;
        }
    };
    info!("cluster: serving FleetLock on port {FLEET_LOCK_PORT}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let control = control.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &control)).await;
        });
    }
}

/// Reads one request, asks the leader, writes the answer.
async fn answer(mut stream: tokio::net::TcpStream, control: &ControlPlane) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 4096];
    let parsed = loop {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        bytes.extend_from_slice(&buffer[..read]);
        if let Some(parsed) = parse(&bytes) {
            break parsed;
        }
        if bytes.len() > MAX_REQUEST {
            break Err(Refusal::new(413, "failed_body", "the request is too large"));
        }
    };
    let text = match parsed {
        Err(refusal) => response(refusal.status, &refusal_body(&refusal)),
        Ok(request) => match control.lock(request).await {
            Ok(reply) if reply.granted => response(200, ""),
            Ok(reply) => response(
                409,
                &refusal_body(&Refusal::new(409, &reply.kind, reply.message)),
            ),
            Err(status) => response(
                503,
                &refusal_body(&Refusal::new(503, "failed_unavailable", status.message())),
            ),
        },
    };
    stream.write_all(text.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(path: &str, protocol: bool, body: &str) -> Vec<u8> {
        format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\n{}content-length: {}\r\n\r\n{body}",
            if protocol {
                "fleet-lock-protocol: true\r\n"
            } else {
                ""
            },
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn requests_are_read_whole_as_zincati_sends_them() {
        let body = r#"{"client_params":{"id":"lab-2","group":"workers"}}"#;
        let whole = http("/v1/pre-reboot", true, body);
        assert_eq!(
            parse(&whole[..whole.len() - 3]),
            None,
            "the body is not all there"
        );
        let request = parse(&whole).unwrap().unwrap();
        assert_eq!(request.action, "pre-reboot");
        assert_eq!(request.group, "workers");
        assert_eq!(request.id, "lab-2");
        let release = parse(&http(
            "/v1/steady-state",
            true,
            r#"{"client_params":{"id":"lab-2"}}"#,
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            (release.action.as_str(), release.group.as_str()),
            ("steady-state", "default")
        );
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        let refused = |bytes: Vec<u8>| parse(&bytes).unwrap().unwrap_err();
        let body = r#"{"client_params":{"id":"a"}}"#;
        assert_eq!(
            refused(http("/v1/pre-reboot", false, body)).kind,
            "failed_missing_header"
        );
        assert_eq!(refused(http("/v2/lock", true, body)).status, 404);
        assert_eq!(
            refused(http("/v1/pre-reboot", true, "{")).kind,
            "failed_body"
        );
        let no_id = refused(http("/v1/pre-reboot", true, r#"{"client_params":{}}"#));
        assert!(no_id.value.contains("client_params.id"), "{no_id:?}");
        let get = b"GET /v1/pre-reboot HTTP/1.1\r\n\r\n".to_vec();
        assert_eq!(refused(get).status, 405);
    }

    #[test]
    fn responses_carry_fleetlocks_error_body() {
        let text = response(
            409,
            &refusal_body(&Refusal::new(
                409,
                "failed_lock_semaphore_full",
                "all 1 held",
            )),
        );
        assert!(text.starts_with("HTTP/1.1 409 Conflict\r\n"));
        let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["kind"], "failed_lock_semaphore_full");
    }
}
