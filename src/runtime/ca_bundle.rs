//! Client CA bundles as trust stores of their own: a PEM bundle loaded
//! into an [`X509Store`], and a check that a peer's certificate (with the
//! intermediates the peer sent) chains to it.
//!
//! The mTLS listener trusts the union of every configured bundle for the
//! handshake; a bundle of its own is what binds an identity to whoever
//! owns the bundle (e.g. a tenant's CA may only vouch for that tenant's
//! SPIFFE IDs). Verification uses the same rules as the handshake: TLS
//! client purpose, the current time, chains that end at a self-signed
//! certificate of the bundle (no partial chains: an intermediate alone is
//! not a trust anchor, so a tenant's bundle must not hold a root shared
//! with other tenants).

use std::path::{Path, PathBuf};

use openssl::error::ErrorStack;
use openssl::ssl::SslRef;
use openssl::stack::Stack;
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::{X509PurposeId, X509Ref, X509StoreContext, X509};

/// A bundle that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a PEM certificate bundle: {source}", path.display())]
    Parse { path: PathBuf, source: ErrorStack },
    #[error("{} holds no certificate", path.display())]
    Empty { path: PathBuf },
    #[error("cannot build a trust store from {}: {source}", path.display())]
    Store { path: PathBuf, source: ErrorStack },
}

/// Why a certificate does not chain to a bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("{0}")]
    Untrusted(String),
    #[error("verification failed: {0}")]
    Openssl(String),
}

/// The certificates a TLS peer presented: its own and the intermediates it
/// sent along (untrusted until verified).
#[derive(Clone)]
pub struct PeerCerts {
    pub leaf: X509,
    pub chain: Vec<X509>,
}

impl PeerCerts {
    /// The peer's certificates on a server-side session, if it sent any.
    pub fn from_ssl(ssl: &SslRef) -> Option<Self> {
        let leaf = ssl.peer_certificate()?;
        let chain = ssl
            .peer_cert_chain()
            .map(|s| s.iter().map(X509Ref::to_owned).collect())
            .unwrap_or_default();
        Some(Self { leaf, chain })
    }
}

/// A PEM bundle of CA certificates and the trust store built from it.
pub struct CaBundle {
    certs: Vec<X509>,
    /// The certificates' DER encodings, to compare bundles.
    der: Vec<Vec<u8>>,
    store: X509Store,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle")
            .field("certificates", &self.certs.len())
            .finish()
    }
}

impl CaBundle {
    /// Reads a PEM bundle; it must hold at least one certificate.
    pub fn load(path: &Path) -> Result<Self, BundleError> {
        let pem = std::fs::read(path).map_err(|source| BundleError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_pem(&pem, path)
    }

    /// Parses a PEM bundle (`path` only names it in errors).
    pub fn from_pem(pem: &[u8], path: &Path) -> Result<Self, BundleError> {
        let certs = X509::stack_from_pem(pem).map_err(|source| BundleError::Parse {
            path: path.to_owned(),
            source,
        })?;
        if certs.is_empty() {
            return Err(BundleError::Empty {
                path: path.to_owned(),
            });
        }
        let store_error = |source| BundleError::Store {
            path: path.to_owned(),
            source,
        };
        let mut der = Vec::with_capacity(certs.len());
        let mut builder = X509StoreBuilder::new().map_err(store_error)?;
        builder
            .set_purpose(X509PurposeId::SSL_CLIENT)
            .map_err(store_error)?;
        for cert in &certs {
            let bytes = cert.to_der().map_err(store_error)?;
            if der.contains(&bytes) {
                continue;
            }
            der.push(bytes);
            builder.add_cert(cert.clone()).map_err(store_error)?;
        }
        Ok(Self {
            certs,
            der,
            store: builder.build(),
        })
    }

    /// The bundle's certificates, in file order.
    pub fn certs(&self) -> &[X509] {
        &self.certs
    }

    /// Whether both bundles hold the same certificates.
    pub fn same_certs(&self, other: &CaBundle) -> bool {
        self.der == other.der
    }

    /// Checks that `leaf`, with the untrusted intermediates `chain`, chains
    /// to a certificate of this bundle (TLS client purpose, now).
    pub fn verify(&self, leaf: &X509Ref, chain: &[X509]) -> Result<(), ChainError> {
        let openssl = |e: ErrorStack| ChainError::Openssl(e.to_string());
        let mut untrusted = Stack::new().map_err(openssl)?;
        for c in chain {
            untrusted.push(c.clone()).map_err(openssl)?;
        }
        let mut ctx = X509StoreContext::new().map_err(openssl)?;
        let verdict = ctx
            .init(&self.store, leaf, &untrusted, |c| {
                Ok(if c.verify_cert()? {
                    Ok(())
                } else {
                    Err(c.error().error_string().to_owned())
                })
            })
            .map_err(openssl)?;
        verdict.map_err(ChainError::Untrusted)
    }

    /// [`CaBundle::verify`] for a peer's presented certificates.
    pub fn verify_peer(&self, peer: &PeerCerts) -> Result<(), ChainError> {
        self.verify(&peer.leaf, &peer.chain)
    }
}

#[cfg(test)]
pub(crate) mod test_pki {
    //! Small in-memory CAs and leaf certificates for unit tests.
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::{PKey, Private};
    use openssl::x509::extension::{
        BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    };
    use openssl::x509::{X509Name, X509};

    pub struct Ca {
        pub cert: X509,
        pub key: PKey<Private>,
    }

    fn key() -> PKey<Private> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
    }

    fn name(cn: &str) -> X509Name {
        let mut n = X509Name::builder().unwrap();
        n.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
        n.build()
    }

    fn serial() -> openssl::asn1::Asn1Integer {
        let mut bn = BigNum::new().unwrap();
        bn.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
        bn.to_asn1_integer().unwrap()
    }

    /// A CA certificate: self-signed, or signed by `issuer` (an
    /// intermediate).
    pub fn ca(cn: &str, issuer: Option<&Ca>) -> Ca {
        let key = key();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&serial()).unwrap();
        b.set_subject_name(&name(cn)).unwrap();
        b.set_issuer_name(issuer.map_or(&name(cn), |i| i.cert.subject_name()))
            .unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
            .unwrap();
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .unwrap(),
        )
        .unwrap();
        b.sign(issuer.map_or(&key, |i| &i.key), MessageDigest::sha256())
            .unwrap();
        Ca {
            cert: b.build(),
            key,
        }
    }

    /// A client certificate with one URI SAN, signed by `issuer`.
    pub fn leaf(uri: &str, issuer: &Ca) -> X509 {
        let key = key();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&serial()).unwrap();
        b.set_subject_name(&name("agent")).unwrap();
        b.set_issuer_name(issuer.cert.subject_name()).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        let san = SubjectAlternativeName::new()
            .uri(uri)
            .build(&b.x509v3_context(Some(&issuer.cert), None))
            .unwrap();
        b.append_extension(san).unwrap();
        b.append_extension(ExtendedKeyUsage::new().client_auth().build().unwrap())
            .unwrap();
        b.sign(&issuer.key, MessageDigest::sha256()).unwrap();
        b.build()
    }

    /// A PEM bundle of `cas`.
    pub fn pem(cas: &[&Ca]) -> Vec<u8> {
        cas.iter().flat_map(|c| c.cert.to_pem().unwrap()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_pki::*;
    use super::*;

    fn bundle(cas: &[&Ca]) -> CaBundle {
        CaBundle::from_pem(&pem(cas), Path::new("test.pem")).unwrap()
    }

    #[test]
    fn a_certificate_verifies_only_against_its_issuers_bundle() {
        let a = ca("tenant-a-ca", None);
        let b = ca("tenant-b-ca", None);
        let from_a = leaf("spiffe://b.example/agent", &a);
        let from_b = leaf("spiffe://b.example/agent", &b);
        assert_eq!(bundle(&[&a]).verify(&from_a, &[]), Ok(()));
        assert_eq!(bundle(&[&b]).verify(&from_b, &[]), Ok(()));
        // Tenant A's CA cannot vouch for anything in tenant B's bundle.
        let e = bundle(&[&b]).verify(&from_a, &[]).unwrap_err();
        assert!(matches!(e, ChainError::Untrusted(_)), "{e:?}");
        // A shared bundle trusts both.
        let shared = bundle(&[&a, &b]);
        assert_eq!(shared.verify(&from_a, &[]), Ok(()));
        assert_eq!(shared.verify(&from_b, &[]), Ok(()));
    }

    #[test]
    fn intermediates_sent_by_the_peer_are_used_but_not_trusted() {
        let root = ca("root", None);
        let inter = ca("intermediate", Some(&root));
        let cert = leaf("spiffe://a.example/agent", &inter);
        let roots = bundle(&[&root]);
        assert_eq!(
            roots.verify(&cert, std::slice::from_ref(&inter.cert)),
            Ok(())
        );
        assert!(roots.verify(&cert, &[]).is_err());
        // A bundle with the intermediate and its root needs nothing sent.
        assert_eq!(bundle(&[&inter, &root]).verify(&cert, &[]), Ok(()));
        // As in the handshake, there are no partial chains: an intermediate
        // alone is not a trust anchor.
        assert!(bundle(&[&inter]).verify(&cert, &[]).is_err());
        // A peer-sent "intermediate" that is another CA does not help.
        let other = ca("other", None);
        assert!(bundle(&[&other])
            .verify(&cert, &[inter.cert.clone(), root.cert.clone()])
            .is_err());
    }

    #[test]
    fn a_leaf_is_not_a_trust_anchor_for_itself() {
        let a = ca("a", None);
        let cert = leaf("spiffe://a.example/agent", &a);
        let only_leaf = CaBundle::from_pem(&cert.to_pem().unwrap(), Path::new("x")).unwrap();
        // The bundle's store would accept the leaf as a self-signed anchor
        // only with partial chains; it must not verify.
        assert!(only_leaf.verify(&cert, &[]).is_err());
    }

    #[test]
    fn bad_bundles_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = CaBundle::load(&missing).unwrap_err();
        assert!(matches!(e, BundleError::Read { .. }));
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let e = CaBundle::load(&garbage).unwrap_err();
        assert!(
            matches!(e, BundleError::Empty { .. } | BundleError::Parse { .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("garbage.pem"), "{e}");
        let broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(CaBundle::from_pem(broken, Path::new("b")).is_err());
    }

    #[test]
    fn bundles_compare_by_certificates() {
        let a = ca("a", None);
        let b = ca("b", None);
        assert!(bundle(&[&a]).same_certs(&bundle(&[&a])));
        assert!(!bundle(&[&a]).same_certs(&bundle(&[&a, &b])));
        // Duplicates in a file are kept once.
        assert!(bundle(&[&a, &a]).same_certs(&bundle(&[&a])));
        assert_eq!(bundle(&[&a, &b]).certs().len(), 2);
    }
}
