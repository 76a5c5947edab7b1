//! Accepting connections on a listener: every socket gets `TCP_NODELAY`
//! (a response written in pieces must not wait for the client's delayed
//! ACK), and on mutual-TLS listeners the handshake is ours, so a refused
//! handshake (no certificate, an unknown CA, an expired certificate,
//! plaintext to a TLS port) is counted per listener and reason, logged at a
//! bounded rate and recorded in the audit chain, aggregated per peer and
//! reason over a window so a flood cannot grow the chain without bound.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::{self, CertificateError};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

use crate::audit::AuditEvent;
use crate::{ListenerTls, Node, ServerError};
use custody_audit::Outcome;

/// Pause after a failed accept (out of descriptors and the like) before
/// the next one.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshake refusals are written to the audit chain once per window, one
/// record per peer address and reason, with the count.
pub(super) const REFUSAL_WINDOW: Duration = Duration::from_secs(10);
/// At most this many refusal lines are logged per listener and window.
const LOG_LINES_PER_WINDOW: u32 = 10;
/// At most this many distinct (peer, reason) pairs are kept per window;
/// beyond it refusals are still counted, under one `other peers` entry.
const MAX_PEERS_PER_WINDOW: usize = 1000;

/// Builds the rustls configuration of a mutual-TLS listener: its identity,
/// client certificates required and verified against `client_ca`, HTTP/2.
pub(super) fn server_config(
    listener: &str,
    tls: &ListenerTls,
) -> Result<rustls::ServerConfig, ServerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        ServerError::FailedPrecondition(format!("listener {listener}: tls.{what}: {e}"))
    };
    let read = |what: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| bad(what, &format!("{}: {e}", p.display())))
    };
    let certs = CertificateDer::pem_slice_iter(&read("cert", &tls.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("cert", &e))?;
    let key = PrivateKeyDer::from_pem_slice(&read("key", &tls.key)?).map_err(|e| bad("key", &e))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&read("client_ca", &tls.client_ca)?) {
        roots
            .add(ca.map_err(|e| bad("client_ca", &e))?)
            .map_err(|e| bad("client_ca", &e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| bad("client_ca", &e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("cert", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| bad("cert", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Plain connections with `TCP_NODELAY` set. A failed accept (out of
/// descriptors and the like) is logged and retried after a pause, as on
/// mutual-TLS listeners, rather than retried at once in a busy loop.
pub(super) fn plain(
    listener: TcpListener,
    name: String,
) -> impl Stream<Item = io::Result<TcpStream>> {
    futures::stream::unfold(listener, move |listener| {
        let name = name.clone();
        async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let item = stream.set_nodelay(true).map(|()| stream);
                        return Some((item, listener));
                    }
                    Err(e) => {
                        warn!(listener = name, error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_RETRY).await;
                    }
                }
            }
        }
    })
}

/// Connections whose mutual-TLS handshake succeeded, `TCP_NODELAY` set.
/// Handshakes run concurrently, so a slow client does not hold up others.
pub(super) fn tls(
    listener: TcpListener,
    config: rustls::ServerConfig,
    name: String,
    node: Node,
) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let refusals = Arc::new(Refusals::new(name.clone(), node));
    tokio::spawn(flush_refusals(refusals.clone(), tx.clone()));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                () = tx.closed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors and the like: say so, keep accepting.
                    warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            };
            if let Err(e) = stream.set_nodelay(true) {
                debug!(listener = name, error = %e, "TCP_NODELAY");
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let refusals = refusals.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => refusals.refused(peer.ip(), classify(&e), &e.to_string()),
                    Err(_) => refusals.refused(
                        peer.ip(),
                        "tls-handshake-timeout",
                        "handshake not finished in time",
                    ),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The reason a handshake failed, as counted and audited.
fn classify(e: &io::Error) -> &'static str {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return "tls-aborted";
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "tls-no-certificate",
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "tls-expired-certificate"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "tls-certificate-not-yet-valid"
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "tls-unknown-ca",
            CertificateError::Revoked => "tls-revoked-certificate",
            _ => "tls-bad-certificate",
        },
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => "tls-protocol",
        rustls::Error::NoApplicationProtocol => "tls-no-h2",
        _ => "tls-other",
    }
}

/// Handshake refusals of one listener: counted at once, logged at a
/// bounded rate, audited once per window per (peer, reason).
struct Refusals {
    listener: String,
    node: Node,
    window: Mutex<Window>,
}

struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
    counts: BTreeMap<(String, &'static str), (u64, String)>,
}

impl Refusals {
    fn new(listener: String, node: Node) -> Refusals {
        Refusals {
            listener,
            node,
            window: Mutex::new(Window {
                started: Instant::now(),
                logged: 0,
                suppressed: 0,
                counts: BTreeMap::new(),
            }),
        }
    }

    fn refused(&self, peer: IpAddr, reason: &'static str, message: &str) {
        let n = self.node.denials().count(&self.listener, reason);
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.logged < LOG_LINES_PER_WINDOW {
            w.logged += 1;
            warn!(listener = self.listener, %peer, reason, refusals = n, error = message, "TLS handshake refused");
        } else {
            w.suppressed += 1;
        }
        let full = w.counts.len() >= MAX_PEERS_PER_WINDOW;
        let key = if full && !w.counts.contains_key(&(peer.to_string(), reason)) {
            ("other peers".to_string(), reason)
        } else {
            (peer.to_string(), reason)
        };
        let entry = w.counts.entry(key).or_insert((0, message.to_string()));
        entry.0 += 1;
    }

    /// Takes the window's refusals as audit events and starts a new window.
    fn take(&self) -> Vec<AuditEvent> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.suppressed > 0 {
            warn!(
                listener = self.listener,
                suppressed = w.suppressed,
                "more TLS handshakes refused (log lines suppressed; all are counted and audited)"
            );
        }
        let counts = std::mem::take(&mut w.counts);
        w.started = Instant::now();
        w.logged = 0;
        w.suppressed = 0;
        counts
            .into_iter()
            .map(|((peer, reason), (count, message))| {
                let mut e = AuditEvent::node("tls.handshake");
                e.principal = format!("peer:{peer}");
                e.listener = self.listener.clone();
                e.outcome = Outcome::Refused;
                e.reason = reason.to_string();
                e.detail = format!(
                    "{count} refused handshakes in {} s; last: {message}",
                    REFUSAL_WINDOW.as_secs()
                );
                e
            })
            .collect()
    }
}

/// Writes each window's refusals to the audit chain until the listener stops.
async fn flush_refusals<T>(refusals: Arc<Refusals>, alive: tokio::sync::mpsc::Sender<T>) {
    let mut tick = tokio::time::interval(REFUSAL_WINDOW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = alive.closed() => {
                for e in refusals.take() {
                    refusals.node.audit.record(e).await;
                }
                return;
            }
        }
        for e in refusals.take() {
            refusals.node.audit.record(e).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn accepted_plain_sockets_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(plain(listener, "test".into()));
        let client = TcpStream::connect(addr).await.unwrap();
        let server_side = incoming.next().await.unwrap().unwrap();
        assert!(
            server_side.nodelay().unwrap(),
            "accepted socket keeps Nagle on"
        );
        drop(client);
    }

    #[test]
    fn handshake_errors_are_classified() {
        let tls = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        assert_eq!(
            classify(&tls(rustls::Error::NoCertificatesPresented)),
            "tls-no-certificate"
        );
        assert_eq!(
            classify(&tls(rustls::Error::InvalidCertificate(
                CertificateError::Expired
            ))),
            "tls-expired-certificate"
        );
        assert_eq!(
            classify(&tls(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))),
            "tls-unknown-ca"
        );
        assert_eq!(
            classify(&io::Error::from(io::ErrorKind::UnexpectedEof)),
            "tls-aborted"
        );
    }
}
