//! Receivers for the notifications context's channels, for tests: a small SMTP server
//! (enough of RFC 5321 for lettre: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) and a
//! webhook endpoint that verifies each delivery's HMAC-SHA256 signature. Both listen on
//! 127.0.0.1:0 and record what they receive.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;

/// One e-mail received.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The envelope recipients.
    pub to: Vec<String>,
    /// The raw message (headers and body).
    pub data: String,
}

impl Mail {
    /// The message with quoted-printable soft line breaks and escapes undone (enough
    /// to search the bodies lettre encodes).
    pub fn text(&self) -> String {
        let s = self.data.replace("=\r\n", "").replace("=\n", "");
        let mut out = String::with_capacity(s.len());
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'='
                && i + 2 < b.len()
                && let Ok(v) = u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or("zz"), 16)
            {
                out.push(char::from(v));
                i += 3;
                continue;
            }
            out.push(char::from(b[i]));
            i += 1;
        }
        out
    }

    /// The decoded Subject header (lettre encodes non-ASCII; tests use ASCII).
    pub fn subject(&self) -> String {
        self.data
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_default()
            .to_owned()
    }
}

/// A running SMTP sink.
#[derive(Clone)]
pub struct SmtpSink {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it received.
    pub mails: Arc<Mutex<Vec<Mail>>>,
}

impl SmtpSink {
    /// Starts it on a free loopback port.
    pub async fn start() -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts it on `addr` (for a server that comes back where one was before).
    pub async fn start_at(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let m = mails.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let m = m.clone();
                tokio::spawn(async move {
                    let (r, mut w) = sock.into_split();
                    let mut r = BufReader::new(r);
                    let _ = w.write_all(b"220 sink ESMTP ready\r\n").await;
                    let mut to = Vec::new();
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let cmd = line.trim_end().to_ascii_uppercase();
                        let reply: &[u8] = if cmd.starts_with("EHLO") {
                            b"250-sink\r\n250 8BITMIME\r\n"
                        } else if cmd.starts_with("HELO")
                            || cmd.starts_with("MAIL")
                            || cmd.starts_with("NOOP")
                        {
                            b"250 OK\r\n"
                        } else if cmd.starts_with("RSET") {
                            to.clear();
                            b"250 OK\r\n"
                        } else if cmd.starts_with("RCPT") {
                            let addr = line
                                .split_once('<')
                                .and_then(|(_, rest)| rest.split_once('>'))
                                .map(|(a, _)| a.to_owned())
                                .unwrap_or_default();
                            to.push(addr);
                            b"250 OK\r\n"
                        } else if cmd.starts_with("DATA") {
                            let _ = w.write_all(b"354 go ahead\r\n").await;
                            let mut data = String::new();
                            loop {
                                line.clear();
                                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                                    return;
                                }
                                if line == ".\r\n" || line == ".\n" {
                                    break;
                                }
                                data.push_str(line.strip_prefix('.').unwrap_or(&line));
                            }
                            m.lock().unwrap().push(Mail {
                                to: std::mem::take(&mut to),
                                data,
                            });
                            b"250 queued\r\n"
                        } else if cmd.starts_with("QUIT") {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            return;
                        } else {
                            b"502 not implemented\r\n"
                        };
                        if w.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, mails }
    }

    /// What was received so far.
    pub fn received(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }

    /// Waits (bounded) until a mail to `to` whose subject contains `needle` arrived.
    pub async fn wait_for(&self, to: &str, needle: &str) -> Mail {
        for _ in 0..1000 {
            if let Some(m) = self
                .received()
                .into_iter()
                .find(|m| m.to.iter().any(|t| t == to) && m.subject().contains(needle))
            {
                return m;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!(
            "no mail to {to} about {needle:?}; got {:?}",
            self.received()
                .iter()
                .map(|m| (m.to.clone(), m.subject()))
                .collect::<Vec<_>>()
        );
    }
}

/// One webhook call received, its signature verified.
#[derive(Debug, Clone)]
pub struct Hook {
    /// The `Tenure-Webhook-Id` header.
    pub webhook_id: String,
    /// The `Tenure-Notification-Id` header.
    pub notification_id: String,
    /// The JSON body.
    pub body: serde_json::Value,
    /// Whether the signature matched the shared secret.
    pub signature_ok: bool,
}

/// A running webhook receiver.
#[derive(Clone)]
pub struct WebhookSink {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it received.
    pub hooks: Arc<Mutex<Vec<Hook>>>,
}

/// Verifies `t=<ts>,v1=<hex>` over `"<ts>.<body>"` with `secret`.
pub fn verify_signature(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        if let Some(x) = part.strip_prefix("t=") {
            t = Some(x.to_owned());
        } else if let Some(x) = part.strip_prefix("v1=") {
            v1 = hex::decode(x).ok();
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}

impl WebhookSink {
    /// Starts it; deliveries are verified against `secret`.
    pub async fn start(secret: &str) -> Self {
        use axum::body::Bytes;
        use axum::http::{HeaderMap, StatusCode};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hooks = Arc::new(Mutex::new(Vec::new()));
        let h = hooks.clone();
        let secret = secret.to_owned();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let h = h.clone();
                let secret = secret.clone();
                async move {
                    let get = |k: &str| {
                        headers
                            .get(k)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let ok = verify_signature(&secret, &get("tenure-signature"), &body);
                    h.lock().unwrap().push(Hook {
                        webhook_id: get("tenure-webhook-id"),
                        notification_id: get("tenure-notification-id"),
                        body: serde_json::from_slice(&body).unwrap_or_default(),
                        signature_ok: ok,
                    });
                    if ok {
                        StatusCode::NO_CONTENT
                    } else {
                        StatusCode::UNAUTHORIZED
                    }
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, hooks }
    }

    /// The endpoint URL.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// What was received so far.
    pub fn received(&self) -> Vec<Hook> {
        self.hooks.lock().unwrap().clone()
    }

    /// Waits (bounded) until a call whose `eventKind` is `kind` and whose
    /// `referenceId` is `reference` (any when empty) arrived.
    pub async fn wait_for(&self, kind: &str, reference: &str) -> Hook {
        for _ in 0..1000 {
            if let Some(h) = self.received().into_iter().find(|h| {
                h.body["eventKind"] == kind
                    && (reference.is_empty() || h.body["referenceId"] == reference)
            }) {
                return h;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("no webhook call of {kind}; got {:?}", self.received());
    }
}
