//! A bearer-token server for docker-registry's `auth: token`, the flow Docker Hub and GHCR
//! use: the registry answers `401` with `WWW-Authenticate: Bearer realm=…,service=…,scope=…`,
//! the client asks the realm for a token (here with basic credentials), and retries with
//! `Authorization: Bearer TOKEN`.
//!
//! Tokens are JWTs signed with ES256 (ring) by a self-signed certificate (rcgen) that the
//! registry trusts through `rootcertbundle`; the certificate travels in the token's `x5c`
//! header, as distribution expects. A request without the right credentials gets `401`.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// A running token server on 127.0.0.1.
pub struct TokenServer {
    /// Its port.
    pub port: u16,
    /// The `service` the registry names in its challenge (the tokens' audience).
    pub service: String,
    /// The tokens' issuer.
    pub issuer: String,
    /// The signing certificate (PEM), for the registry's `rootcertbundle`.
    pub cert_pem: String,
    issued: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

struct Signer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    service: String,
    issuer: String,
    basic: String,
}

impl TokenServer {
    /// Starts a server that grants tokens to `user` with `password` only.
    pub fn start(user: &str, password: &str) -> Result<TokenServer, String> {
        let key_pair = rcgen::KeyPair::generate().map_err(|error| error.to_string())?;
        let params = rcgen::CertificateParams::new(vec!["keelson-test-tokens".to_owned()])
            .map_err(|error| error.to_string())?;
        let cert = params
            .self_signed(&key_pair)
            .map_err(|error| error.to_string())?;
        let rng = ring::rand::SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &rng,
        )
        .map_err(|error| error.to_string())?;
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|error| error.to_string())?;
        let port = listener
            .local_addr()
            .map_err(|error| error.to_string())?
            .port();
        let (service, issuer) = (
            "keelson-test-registry".to_owned(),
            "keelson-test-tokens".to_owned(),
        );
        let signer = Arc::new(Signer {
            key,
            cert_der: cert.der().to_vec(),
            service: service.clone(),
            issuer: issuer.clone(),
            basic: base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")),
        });
        let (issued, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let counters = (issued.clone(), refused.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (signer, counters) = (signer.clone(), counters.clone());
                std::thread::spawn(move || {
                    let granted = answer(stream, &signer);
                    let counter = if granted { &counters.0 } else { &counters.1 };
                    counter.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Ok(TokenServer {
            port,
            service,
            issuer,
            cert_pem: cert.pem(),
            issued,
            refused,
        })
    }

    /// The realm the registry sends clients to.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// Tokens granted so far.
    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }

    /// Requests refused so far (no or wrong credentials).
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

/// Answers one request; true when it granted a token.
fn answer(stream: TcpStream, signer: &Signer) -> bool {
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(stream) => stream,
        Err(_) => return false,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return false;
    }
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if !matches!(reader.read_line(&mut line), Ok(read) if read > 0) || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_owned());
            }
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or_default();
    let query = target
        .split_once('?')
        .map(|(_, query)| query)
        .unwrap_or_default();
    let mut writer = stream;
    let expected = format!("Basic {}", signer.basic);
    if authorization.as_deref() != Some(expected.as_str()) {
        let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
        let _ = write!(
            writer,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nWWW-Authenticate: Basic realm=\"keelson-test\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return false;
    }
    let access: Vec<serde_json::Value> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(name, _)| *name == "scope")
        .filter_map(|(_, value)| {
            let scope = percent_decode(value);
            let mut parts = scope.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({
                "type": kind,
                "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }))
        })
        .collect();
    let token = match sign(signer, access) {
        Some(token) => token,
        None => return false,
    };
    let body =
        serde_json::json!({"token": token, "access_token": token, "expires_in": 300}).to_string();
    let _ = write!(
        writer,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    true
}

/// A JWT granting `access`, valid for five minutes.
fn sign(signer: &Signer, access: Vec<serde_json::Value>) -> Option<String> {
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    let header = serde_json::json!({
        "typ": "JWT",
        "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&signer.cert_der)],
    });
    let claims = serde_json::json!({
        "iss": signer.issuer,
        "sub": "test",
        "aud": signer.service,
        "iat": now,
        "nbf": now - 10,
        "exp": now + 300,
        "jti": format!("{now}-{}", access.len()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        url.encode(header.to_string()),
        url.encode(claims.to_string())
    );
    let signature = signer
        .key
        .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
        .ok()?;
    Some(format!(
        "{signing_input}.{}",
        url.encode(signature.as_ref())
    ))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        let escaped = (byte == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(value) => {
                decoded.push(value);
                index += 3;
            }
            None => {
                decoded.push(if byte == b'+' { b' ' } else { byte });
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}
