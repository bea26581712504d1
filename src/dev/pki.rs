//! `atb pki dev`: a throw-away development PKI — a CA, a server certificate
//! for localhost, and agent client certificates whose URI SAN is a SPIFFE ID.
//! Keys are ECDSA P-256 so every common client (curl, Python, browsers,
//! openssl s_client) can use them.

use std::fs;

use std::path::{Path, PathBuf};

use crate::runtime::files::{write_file, WriteError};

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509Name, X509NameRef, X509};

/// An agent certificate to issue: file stem and SPIFFE ID.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub name: String,
    pub spiffe_id: String,
}

/// The agents `atb pki dev` issues by default: two tenants (one mapped by
/// trust domain, one by path prefix) and one agent no tenant owns.
pub fn default_agents() -> Vec<AgentSpec> {
    [
        ("acme-agent", "spiffe://acme.example/agent/demo"),
        ("acme-agent-2", "spiffe://acme.example/agent/reporter"),
        (
            "globex-agent",
            "spiffe://saas.example/tenants/globex/agent/demo",
        ),
        ("stranger-agent", "spiffe://unknown.example/agent/demo"),
    ]
    .into_iter()
    .map(|(n, s)| AgentSpec {
        name: n.into(),
        spiffe_id: s.into(),
    })
    .collect()
}

/// Paths of a generated PKI.
#[derive(Debug, Clone)]
pub struct DevPki {
    pub dir: PathBuf,
}

impl DevPki {
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    pub fn agent_cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.crt"))
    }
    pub fn agent_key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }
}

/// Why the dev PKI could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("openssl: {0}")]
    Ssl(#[from] openssl::error::ErrorStack),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("agent {name}: {spiffe_id:?}: {reason}")]
    BadSpiffeId {
        name: String,
        spiffe_id: String,
        reason: String,
    },
    #[error("agent name {0:?} is not a valid file stem")]
    BadName(String),
    #[error("cannot create {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} already exists; pass --force to replace the dev PKI", .0.display())]
    Exists(PathBuf),
}

type PkiResult<T> = Result<T, PkiError>;

fn ssl<T>(r: Result<T, openssl::error::ErrorStack>) -> PkiResult<T> {
    Ok(r?)
}

fn new_key() -> PkiResult<PKey<Private>> {
    let group = ssl(EcGroup::from_curve_name(Nid::X9_62_PRIME256V1))?;
    ssl(PKey::from_ec_key(ssl(EcKey::generate(&group))?))
}

fn name(cn: &str) -> PkiResult<X509Name> {
    let mut b = ssl(X509Name::builder())?;
    ssl(b.append_entry_by_nid(Nid::ORGANIZATIONNAME, "ATB dev"))?;
    ssl(b.append_entry_by_nid(Nid::COMMONNAME, cn))?;
    Ok(b.build())
}

fn serial() -> PkiResult<Asn1Integer> {
    let mut bn = ssl(BigNum::new())?;
    ssl(bn.rand(127, MsbOption::MAYBE_ZERO, false))?;
    ssl(bn.to_asn1_integer())
}

/// A v3 certificate builder with serial, names, key and validity set.
fn builder(
    subject: &X509NameRef,
    issuer: &X509NameRef,
    key: &PKey<Private>,
    days: u32,
) -> PkiResult<X509Builder> {
    let mut b = ssl(X509::builder())?;
    let serial = serial()?;
    let not_before = ssl(Asn1Time::days_from_now(0))?;
    let not_after = ssl(Asn1Time::days_from_now(days))?;
    ssl(b.set_version(2))?;
    ssl(b.set_serial_number(&serial))?;
    ssl(b.set_subject_name(subject))?;
    ssl(b.set_issuer_name(issuer))?;
    ssl(b.set_pubkey(key))?;
    ssl(b.set_not_before(&not_before))?;
    ssl(b.set_not_after(&not_after))?;
    Ok(b)
}

enum Role<'a> {
    Server,
    Agent(&'a str),
}

fn issue(
    ca: &X509,
    ca_key: &PKey<Private>,
    key: &PKey<Private>,
    cn: &str,
    role: Role<'_>,
    days: u32,
) -> PkiResult<X509> {
    let subject = name(cn)?;
    let mut b = builder(&subject, ca.subject_name(), key, days)?;
    ssl(b.append_extension(ssl(BasicConstraints::new().critical().build())?))?;
    ssl(b.append_extension(ssl(KeyUsage::new()
        .critical()
        .digital_signature()
        .key_agreement()
        .build())?))?;
    let ctx = b.x509v3_context(Some(ca), None);
    let mut san = SubjectAlternativeName::new();
    let eku = match role {
        Role::Server => {
            san.dns("localhost").ip("127.0.0.1").ip("::1");
            ExtendedKeyUsage::new().server_auth().build()
        }
        Role::Agent(spiffe_id) => {
            san.uri(spiffe_id);
            ExtendedKeyUsage::new().client_auth().build()
        }
    };
    let san = ssl(san.build(&ctx))?;
    let aki = ssl(AuthorityKeyIdentifier::new().keyid(false).build(&ctx))?;
    ssl(b.append_extension(san))?;
    ssl(b.append_extension(aki))?;
    ssl(b.append_extension(ssl(eku)?))?;
    ssl(b.sign(ca_key, MessageDigest::sha256()))?;
    Ok(b.build())
}

fn self_signed_ca(key: &PKey<Private>, days: u32) -> PkiResult<X509> {
    let subject = name("ATB dev CA")?;
    let mut b = builder(&subject, &subject, key, days)?;
    ssl(b.append_extension(ssl(BasicConstraints::new()
        .critical()
        .ca()
        .pathlen(0)
        .build())?))?;
    ssl(b.append_extension(ssl(KeyUsage::new()
        .critical()
        .key_cert_sign()
        .crl_sign()
        .build())?))?;
    let ski = ssl(SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None)))?;
    ssl(b.append_extension(ski))?;
    ssl(b.sign(key, MessageDigest::sha256()))?;
    Ok(b.build())
}

/// Generates a CA, a localhost server certificate and one client
/// certificate per agent into `dir`. Refuses to overwrite an existing CA
/// unless `force` is set.
pub fn generate(dir: &Path, agents: &[AgentSpec], days: u32, force: bool) -> PkiResult<DevPki> {
    for a in agents {
        crate::spiffe::SpiffeId::parse(&a.spiffe_id).map_err(|e| PkiError::BadSpiffeId {
            name: a.name.clone(),
            spiffe_id: a.spiffe_id.clone(),
            reason: e.to_string(),
        })?;
        if !crate::config::valid_id(&a.name) {
            return Err(PkiError::BadName(a.name.clone()));
        }
    }
    let pki = DevPki {
        dir: dir.to_owned(),
    };
    fs::create_dir_all(dir).map_err(|source| PkiError::CreateDir {
        path: dir.to_owned(),
        source,
    })?;
    if pki.ca_cert().exists() && !force {
        return Err(PkiError::Exists(pki.ca_cert()));
    }
    let ca_key = new_key()?;
    let ca = self_signed_ca(&ca_key, days)?;
    write_file(
        &dir.join("ca.key"),
        &ssl(ca_key.private_key_to_pem_pkcs8())?,
        true,
    )?;
    write_file(&pki.ca_cert(), &ssl(ca.to_pem())?, false)?;

    let server_key = new_key()?;
    let server = issue(&ca, &ca_key, &server_key, "localhost", Role::Server, days)?;
    write_file(
        &pki.server_key(),
        &ssl(server_key.private_key_to_pem_pkcs8())?,
        true,
    )?;
    write_file(&pki.server_cert(), &ssl(server.to_pem())?, false)?;

    for a in agents {
        let key = new_key()?;
        let cert = issue(&ca, &ca_key, &key, &a.name, Role::Agent(&a.spiffe_id), days)?;
        write_file(
            &pki.agent_key(&a.name),
            &ssl(key.private_key_to_pem_pkcs8())?,
            true,
        )?;
        write_file(&pki.agent_cert(&a.name), &ssl(cert.to_pem())?, false)?;
    }
    Ok(pki)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::stack::Stack;
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::X509StoreContext;

    #[test]
    fn generated_chain_verifies_and_carries_the_spiffe_id() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate(dir.path(), &default_agents(), 2, false).unwrap();
        let ca = X509::from_pem(&fs::read(pki.ca_cert()).unwrap()).unwrap();
        let mut store = X509StoreBuilder::new().unwrap();
        store.add_cert(ca).unwrap();
        let store = store.build();
        for name in ["server", "acme-agent", "globex-agent"] {
            let cert =
                X509::from_pem(&fs::read(dir.path().join(format!("{name}.crt"))).unwrap()).unwrap();
            let mut ctx = X509StoreContext::new().unwrap();
            let ok = ctx
                .init(&store, &cert, &Stack::new().unwrap(), |c| c.verify_cert())
                .unwrap();
            assert!(ok, "{name} does not verify");
        }
        let agent = X509::from_pem(&fs::read(pki.agent_cert("globex-agent")).unwrap()).unwrap();
        let uris: Vec<String> = agent
            .subject_alt_names()
            .unwrap()
            .iter()
            .filter_map(|n| n.uri().map(str::to_owned))
            .collect();
        assert_eq!(
            uris,
            vec!["spiffe://saas.example/tenants/globex/agent/demo"]
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(pki.agent_key("acme-agent"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn refuses_to_overwrite_without_force_and_rejects_bad_ids() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &[], 1, false).unwrap();
        assert!(generate(dir.path(), &[], 1, false)
            .unwrap_err()
            .to_string()
            .contains("--force"));
        generate(dir.path(), &[], 1, true).unwrap();
        let bad = [AgentSpec {
            name: "x".into(),
            spiffe_id: "spiffe://Bad/x".into(),
        }];
        assert!(generate(dir.path(), &bad, 1, true).is_err());
    }
}
