//! Real HTTPS on 127.0.0.1 with a CA and certificates made here (rcgen).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use uplink::tls::{ClientTlsConfig, ServerTlsConfig};

use crate::common::*;

struct Pki {
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    dir: &Path,
    name: &str,
    sans: &[&str],
    issuer: &CertifiedIssuer<'_, KeyPair>,
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    write(&cert_path, &cert.pem());
    write(&key_path, &key.serialize_pem());
    (cert_path, key_path)
}

/// Runs a drain with `config` until it reports an error (named by `what`), then stops it; returns
/// its status.
async fn refused(
    config: uplink::drain::DrainConfig,
    spool: &spool::Spool,
    what: &str,
) -> uplink::drain::DrainStatus {
    let mut drain = start_drain(config, spool);
    let status = wait_status(&mut drain.status, Duration::from_secs(30), what, |s| {
        s.last_error.is_some()
    })
    .await;
    drain.stop().await;
    status
}

/// Central's TLS settings from `pki`, asking for a client certificate when `client_ca`.
fn server_tls(pki: &Pki, client_ca: bool) -> ServerTlsConfig {
    ServerTlsConfig {
        cert_file: pki.server_cert.clone(),
        key_file: pki.server_key.clone(),
        client_ca_file: client_ca.then(|| pki.client_ca.clone()),
    }
}

fn pki(dir: &Path) -> Pki {
    let server_ca = ca("central CA");
    let other = ca("someone else's CA");
    let client_ca = ca("venue nodes CA");
    let (server_cert, server_key) = leaf(dir, "server", &["localhost", "127.0.0.1"], &server_ca);
    let (client_cert, client_key) = leaf(dir, "client", &["node-7f3a"], &client_ca);
    let paths = [
        ("ca.pem", server_ca.pem()),
        ("other-ca.pem", other.pem()),
        ("client-ca.pem", client_ca.pem()),
    ];
    for (name, pem) in &paths {
        write(&dir.join(name), pem);
    }
    Pki {
        ca: dir.join("ca.pem"),
        other_ca: dir.join("other-ca.pem"),
        server_cert,
        server_key,
        client_ca: dir.join("client-ca.pem"),
        client_cert,
        client_key,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_is_refused_and_the_right_one_drains() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (spool, head) = spool_of_passings(dir.path(), 500).await;
    let central = start_embedded_central(dir.path(), Some(&server_tls(&pki, false))).await;
    let url = format!("https://localhost:{}/", central.addr.port());
    let token = token_file(dir.path());

    let mut config = drain_config(&url, token.clone());
    config.tls.ca_file = Some(pki.other_ca.clone());
    let status = refused(config, &spool, "a TLS failure").await;
    let error = status.last_error.unwrap();
    assert!(
        error.contains("certificate") || error.contains("UnknownIssuer"),
        "{error}"
    );
    assert_eq!(status.forwarded, 0);
    assert!(
        central.central.stats().is_empty(),
        "nothing reached central"
    );

    let mut config = drain_config(&url, token);
    config.tls.ca_file = Some(pki.ca.clone());
    drain_all_exactly_once(config, &spool, &central, head).await;
    central.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (spool, head) = spool_of_passings(dir.path(), 300).await;
    let central = start_embedded_central(dir.path(), Some(&server_tls(&pki, true))).await;
    let url = format!("https://127.0.0.1:{}/", central.addr.port());
    let token = token_file(dir.path());

    // Without a client certificate the handshake fails.
    let mut config = drain_config(&url, token.clone());
    config.tls.ca_file = Some(pki.ca.clone());
    let status = refused(config, &spool, "a refused handshake").await;
    assert_eq!(status.forwarded, 0);
    assert!(central.central.stats().is_empty());

    let mut config = drain_config(&url, token);
    config.tls = ClientTlsConfig {
        ca_file: Some(pki.ca.clone()),
        client_cert_file: Some(pki.client_cert.clone()),
        client_key_file: Some(pki.client_key.clone()),
    };
    drain_all_exactly_once(config, &spool, &central, head).await;
    central.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_raise_an_alarm_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let (spool, head) = spool_of_passings(dir.path(), 400).await;
    let central = start_embedded_central(dir.path(), Some(&server_tls(&pki, false))).await;
    let url = format!("https://localhost:{}/", central.addr.port());
    let token = dir.path().join("token");
    let mut config = drain_config(&url, token.clone());
    config.tls.ca_file = Some(pki.ca.clone());

    // No token file at all.
    let mut drain = start_drain(config, &spool);
    wait_status(
        &mut drain.status,
        Duration::from_secs(30),
        "an alarm for the missing token",
        |s| s.alarm.as_deref().is_some_and(|a| a.contains("token file")),
    )
    .await;
    // A token for another track: 403.
    write(&token, OTHER_TRACK_TOKEN);
    wait_status(
        &mut drain.status,
        Duration::from_secs(30),
        "a 403 alarm",
        |s| s.alarm.as_deref().is_some_and(|a| a.contains("HTTP 403")),
    )
    .await;
    // An unknown token: 401.
    write(&token, "not-a-token");
    let status = wait_status(
        &mut drain.status,
        Duration::from_secs(30),
        "a 401 alarm",
        |s| s.alarm.as_deref().is_some_and(|a| a.contains("HTTP 401")),
    )
    .await;
    assert_eq!(status.forwarded, 0);
    assert_eq!(status.backlog, head, "everything kept");
    assert!(
        spool.parked(events::UPLINK_CURSOR).unwrap().is_empty(),
        "nothing parked for an auth failure"
    );
    assert!(central.central.store().stored().await.unwrap().is_empty());

    // The right token: picked up without a restart, and everything arrives once.
    write(&token, TOKEN);
    let status = drain
        .finish(head, Duration::from_secs(60), "everything acknowledged")
        .await;
    assert_eq!(status.alarm, None, "the alarm clears");
    let stored = central.central.store().stored().await.unwrap();
    assert_exactly_once(&stored, &(1..=head).collect::<HashSet<_>>());
    central.stop().await;
}
