//! rustls configuration for both ends of the link, always with the `ring` provider.
//!
//! There is deliberately no way to turn certificate verification off: a node either trusts the system's
//! roots or the one CA file it was given for a private central.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};

use crate::Error;

/// The crypto provider of every TLS configuration in this crate.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs `ring` as the process's default rustls provider, for HTTP clients built elsewhere in the
/// node without a preconfigured TLS setup. Harmless if one is installed already.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How the drain authenticates central, and itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// PEM file of the CA(s) that signed central's certificate. Without it, the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain for mTLS; needs `client_key_file`.
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

/// Central's certificate, and the CA of the clients it requires (mTLS) if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// With it, every client must present a certificate signed by this CA.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// HTTP/1.1 only: one request in flight per connection is all the drain needs.
const ALPN_HTTP1: &[u8] = b"http/1.1";

pub fn client_config(config: &ClientTlsConfig) -> Result<ClientConfig, Error> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::Tls {
            what: "protocol versions",
            source,
        })?;
    let builder = match &config.ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path, "CA certificate")? {
                roots.add(cert).map_err(|source| Error::Tls {
                    what: "CA certificate",
                    source,
                })?;
            }
            builder.with_root_certificates(roots)
        }
        None => {
            use rustls_platform_verifier::BuilderVerifierExt;
            builder
                .with_platform_verifier()
                .map_err(|source| Error::Tls {
                    what: "system roots",
                    source,
                })?
        }
    };
    let mut tls = match (&config.client_cert_file, &config.client_key_file) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                read_certs(cert, "client certificate")?,
                read_key(key, "client key")?,
            )
            .map_err(|source| Error::Tls {
                what: "client certificate",
                source,
            })?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(Error::Config(
                "client_cert_file and client_key_file go together".into(),
            ));
        }
    };
    tls.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(tls)
}

pub fn server_config(config: &ServerTlsConfig) -> Result<Arc<ServerConfig>, Error> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::Tls {
            what: "protocol versions",
            source,
        })?;
    let builder = match &config.client_ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path, "client CA certificate")? {
                roots.add(cert).map_err(|source| Error::Tls {
                    what: "client CA certificate",
                    source,
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|source| Error::ClientVerifier {
                path: path.clone(),
                source,
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut tls = builder
        .with_single_cert(
            read_certs(&config.cert_file, "server certificate")?,
            read_key(&config.key_file, "server key")?,
        )
        .map_err(|source| Error::Tls {
            what: "server certificate",
            source,
        })?;
    tls.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    Ok(Arc::new(tls))
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read_file(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem {
            what,
            path: path.into(),
            source,
        })?;
    if certs.is_empty() {
        return Err(Error::PemEmpty {
            what,
            path: path.into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path, what: &'static str) -> Result<PrivateKeyDer<'static>, Error> {
    let pem = read_file(path, what)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => Error::PemEmpty {
            what,
            path: path.into(),
        },
        source => Error::Pem {
            what,
            path: path.into(),
            source,
        },
    })
}

/// Reads a whole configuration file (a key, a certificate, the token list), naming it on failure.
pub fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::ReadFile {
        what,
        path: path.into(),
        source,
    })
}
