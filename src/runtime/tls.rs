//! The mTLS listener's TLS context and peer identity extraction, and the
//! TLS client settings for outbound HTTPS.
//!
//! The server asks every client for a certificate but lets the handshake
//! finish without one, so `GET /health` works without a client certificate.
//! A presented certificate is always verified against the trust bundle; the
//! verdict is recorded and [`peer_identity`] refuses anything but a clean
//! result, which lets protected routes answer 401 `spiffe_id_required` with
//! a JSON body instead of a bare handshake failure.

use std::path::{Path, PathBuf};

use openssl::ssl::{
    SslAcceptor, SslAcceptorBuilder, SslConnector, SslFiletype, SslMethod, SslRef, SslVerifyMode,
};
use openssl::x509::X509VerifyResult;

use serde::{Deserialize, Serialize};

use crate::runtime::ca_bundle::CaBundle;
use crate::spiffe::{SpiffeError, SpiffeId};

/// Server certificate and the trust bundle client certificates must chain to.
/// There is deliberately no mode without client-certificate verification.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: PathBuf,
    /// Extra CA certificates (PEM) trusted for outbound HTTPS (JWKS,
    /// connectors, OPA, approver IdP) next to the system trust store, e.g.
    /// the CA of AgentAuth's `:8444` certificate.
    pub outbound_ca_file: Option<PathBuf>,
}

/// Why a connection carries no usable SPIFFE identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("no client certificate was presented")]
    NoCertificate,
    #[error("the client certificate is not trusted: {0}")]
    Untrusted(String),
    #[error("the client certificate has no URI SAN with a SPIFFE ID")]
    NoSpiffeId,
    #[error("the client certificate has {0} URI SANs; exactly one SPIFFE ID is required")]
    SeveralUris(usize),
    #[error("the client certificate's SPIFFE ID is malformed: {0}")]
    Malformed(SpiffeError),
    /// Trusted for the handshake (some configured CA issued it), but not
    /// by the CA bundle of whoever owns its SPIFFE ID.
    #[error("the client certificate is not trusted for its SPIFFE ID: it does not chain to the client CA bundle of the tenant owning that ID")]
    WrongIssuer,
}

/// A TLS context that could not be built; names the config key at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS setup failed: {0}")]
    Setup(#[from] openssl::error::ErrorStack),
    #[error("{key} {}: {reason}", path.display())]
    File {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("tls.key_file does not match tls.cert_file: {0}")]
    KeyMismatch(openssl::error::ErrorStack),
    #[error("{key}: {source}")]
    Bundle {
        key: String,
        source: crate::runtime::ca_bundle::BundleError,
    },
}

fn file_error<E: std::fmt::Display>(key: &'static str, path: &Path) -> impl FnOnce(E) -> TlsError {
    let path = path.to_owned();
    move |e| TlsError::File {
        key,
        path,
        reason: e.to_string(),
    }
}

/// TLS for outbound HTTPS (JWKS, connectors, OPA, approver IdP): peer
/// verification on, the system trust store plus `tls.outbound_ca_file`.
pub fn outbound(config: &TlsConfig) -> Result<SslConnector, TlsError> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    if let Some(ca) = &config.outbound_ca_file {
        b.set_ca_file(ca)
            .map_err(file_error("tls.outbound_ca_file", ca))?;
    }
    // As awc's own default: HTTP/2 when the server offers it.
    b.set_alpn_protos(b"\x02h2\x08http/1.1")?;
    Ok(b.build())
}

/// How long an idle pooled connection to a connector (or JWKS, OPA) is
/// kept for reuse: under the 5 s idle timeout of common servers (Node,
/// actix-web, many proxies), so the broker drops an idle connection before
/// the server does, rather than sending a request on a connection the
/// server is closing (a 502 for a request it never saw). awc's default is
/// 15 s.
pub const POOLED_IDLE: std::time::Duration = std::time::Duration::from_secs(4);

/// An HTTP client for outbound calls, verifying servers with `tls`.
pub fn http_client(tls: &SslConnector, connect_timeout: std::time::Duration) -> awc::Client {
    awc::Client::builder()
        .connector(
            awc::Connector::new()
                .openssl(tls.clone())
                .timeout(connect_timeout)
                .conn_keep_alive(POOLED_IDLE)
                // No pool-wide cap (awc's default is 100 per worker, shared
                // by every tenant and connector): one tenant's unread
                // answers filled it and starved the others. Each tenant's
                // `max_in_flight`, held until an answer's last byte, bounds
                // what it can hold instead.
                .limit(0),
        )
        .disable_redirects()
        .finish()
}

/// Builds the TLS acceptor for an mTLS listener trusting
/// `tls.client_ca_file`.
pub fn acceptor(config: &TlsConfig) -> Result<SslAcceptorBuilder, TlsError> {
    acceptor_with(config, &[])
}

/// Builds the TLS acceptor for the agent listener: the handshake trusts
/// `tls.client_ca_file` and every bundle of `extra_client_cas` (each
/// named by its config key, e.g. `tenants[1].client_ca_file`). Which of
/// them may vouch for which identity is decided after the handshake.
pub fn acceptor_with(
    config: &TlsConfig,
    extra_client_cas: &[(String, PathBuf)],
) -> Result<SslAcceptorBuilder, TlsError> {
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    builder
        .set_certificate_chain_file(&config.cert_file)
        .map_err(file_error("tls.cert_file", &config.cert_file))?;
    builder
        .set_private_key_file(&config.key_file, SslFiletype::PEM)
        .map_err(file_error("tls.key_file", &config.key_file))?;
    builder.check_private_key().map_err(TlsError::KeyMismatch)?;
    load_client_ca(&mut builder, &config.client_ca_file, extra_client_cas)?;
    // Ask for a certificate, verify it against the bundle, but let the
    // handshake complete so the HTTP layer can answer with a JSON 401. The
    // verification result is kept on the session (SSL_get_verify_result)
    // and checked by `peer_identity` on every connection.
    builder.set_verify_callback(SslVerifyMode::PEER, |_preverified, _ctx| true);
    // A session resumed on a new connection (curl and other clients offer
    // the last one) needs a session id context whenever client
    // certificates are asked for; without one OpenSSL aborts the handshake
    // with an `internal_error` alert. The resumed session carries the
    // certificate and its verification result, which `peer_identity`
    // checks on every connection as for a full handshake.
    builder.set_session_id_context(b"atb")?;
    // HTTP/1.1 only: actix-http's HTTP/2 server sets no
    // SETTINGS_MAX_CONCURRENT_STREAMS and no header-list bound, so one
    // client without a certificate could queue 150,000 answered streams
    // behind a zero window (≈ 780 MB) or park ≈ 15 MB of unfinished
    // headers per connection. actix-web is built without its `http2`
    // feature, so `bind_openssl` (which installs its own ALPN callback)
    // offers http/1.1 alone as well.
    builder.set_alpn_select_callback(|_, client| {
        openssl::ssl::select_next_proto(b"\x08http/1.1", client)
            .ok_or(openssl::ssl::AlpnError::NOACK)
    });
    Ok(builder)
}

fn load_client_ca(
    builder: &mut SslAcceptorBuilder,
    path: &Path,
    extra: &[(String, PathBuf)],
) -> Result<(), TlsError> {
    const KEY: &str = "tls.client_ca_file";
    let pem = std::fs::read(path).map_err(file_error(KEY, path))?;
    let mut certs = openssl::x509::X509::stack_from_pem(&pem).map_err(file_error(KEY, path))?;
    if certs.is_empty() {
        return Err(file_error(KEY, path)("no certificates found"));
    }
    for (key, extra_path) in extra {
        let bundle = CaBundle::load(extra_path).map_err(|source| TlsError::Bundle {
            key: key.clone(),
            source,
        })?;
        certs.extend(bundle.certs().iter().cloned());
    }
    // The union of the bundles, each certificate once.
    let mut seen = Vec::with_capacity(certs.len());
    let mut store = openssl::x509::store::X509StoreBuilder::new()?;
    let mut names = openssl::stack::Stack::new()?;
    for cert in certs {
        let der = cert.to_der()?;
        if seen.contains(&der) {
            continue;
        }
        seen.push(der);
        names.push(cert.subject_name().to_owned()?)?;
        store.add_cert(cert).map_err(file_error(KEY, path))?;
    }
    builder.set_verify_cert_store(store.build())?;
    builder.set_client_ca_list(names);
    Ok(())
}

/// The SPIFFE identity of a TLS session's peer. Requires a presented
/// certificate whose chain verified cleanly and which holds exactly one URI
/// SAN, a well-formed SPIFFE ID (X509-SVID rules; no lenient fallback).
pub fn peer_identity(ssl: &SslRef) -> Result<SpiffeId, IdentityError> {
    let cert = ssl.peer_certificate().ok_or(IdentityError::NoCertificate)?;
    let verdict = ssl.verify_result();
    if verdict != X509VerifyResult::OK {
        return Err(IdentityError::Untrusted(verdict.error_string().to_owned()));
    }
    let uris: Vec<String> = cert
        .subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.uri().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [] => Err(IdentityError::NoSpiffeId),
        [one] => SpiffeId::parse(one).map_err(IdentityError::Malformed),
        more => Err(IdentityError::SeveralUris(more.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_ca_file_errors_name_the_setting() {
        assert!(outbound(&TlsConfig::default()).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        for path in [not_pem, dir.path().join("missing.pem")] {
            let config = TlsConfig {
                outbound_ca_file: Some(path),
                ..TlsConfig::default()
            };
            let e = outbound(&config).unwrap_err();
            assert!(e.to_string().contains("tls.outbound_ca_file"), "{e}");
        }
    }
}
