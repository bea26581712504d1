//! Ed25519 keys interoperate with operators' tools: keys ATB writes are
//! read by `openssl pkey` (OpenSSL 3.0) and Python `cryptography`, and a key
//! made by `openssl genpkey` (the operator guide's Secret) signs mandates.

mod common;

use std::process::Command;

use common::*;

/// The test venv's Python (`scripts/test` makes it).
fn python() -> String {
    let python = std::env::var("ATB_TEST_PYTHON")
        .unwrap_or_else(|_| format!("{}/.venv/bin/python", env!("CARGO_MANIFEST_DIR")));
    assert!(
        std::path::Path::new(&python).exists(),
        "no test Python at {python}: run scripts/test (it creates .venv)"
    );
    python
}

/// `openssl pkey` and `cryptography` both read `key` as an Ed25519 key.
fn readable_by_tools(key: &std::path::Path) {
    let out = Command::new("openssl")
        .args(["pkey", "-noout", "-text", "-in"])
        .arg(key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl pkey refuses {key:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ED25519 Private-Key"));
    let script = "import sys\nfrom cryptography.hazmat.primitives.serialization import load_pem_private_key\nfrom cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey\nk = load_pem_private_key(open(sys.argv[1], 'rb').read(), None)\nassert isinstance(k, Ed25519PrivateKey)\nprint('ok')\n";
    let out = Command::new(python())
        .args(["-c", script])
        .arg(key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cryptography refuses {key:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn keys_atb_writes_are_read_by_openssl_and_cryptography() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    run(Command::new(ATB)
        .args(["keys", "rotate", "--dir"])
        .arg(&keys));
    run(Command::new(ATB)
        .args(["keys", "rotate", "--dir"])
        .arg(&keys));
    for f in [
        "ed25519_privkey_pem",
        "ed25519_privkey_pem.next",
        "ed25519_privkey_pem.previous",
    ] {
        readable_by_tools(&keys.join(f));
    }
    // atb dev's mandate signing key.
    let dev = dir.path().join("dev");
    let mut child = Command::new(ATB)
        .args(["dev", "--dir"])
        .arg(&dev)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin", &format!("127.0.0.1:{}", free_port())])
        .args(["--upstream", &format!("127.0.0.1:{}", free_port())])
        .args(["--agentauth", &format!("127.0.0.1:{}", free_port())])
        .args(["--agentauth-admin", &format!("127.0.0.1:{}", free_port())])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let signing = dev.join("poa-signing.key");
    assert!(eventually(std::time::Duration::from_secs(30), || signing.exists()));
    let _ = child.kill();
    let _ = child.wait();
    readable_by_tools(&signing);
}

#[test]
fn an_openssl_genpkey_key_signs_mandates() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::new(dir.path(), "operator");
    let token = key.mint("spiffe://acme.example/agent/demo", "crm.contact.read", &[]);
    // Verified with the OpenSSL public key by an independent client.
    let script = "import sys, jwt\nfrom cryptography.hazmat.primitives.serialization import load_pem_public_key\npub = load_pem_public_key(open(sys.argv[1], 'rb').read())\nc = jwt.decode(sys.argv[2], pub, algorithms=['EdDSA'], options={'verify_aud': False})\nassert c['act'] == 'crm.contact.read'\nprint('ok')\n";
    let out = Command::new(python())
        .args(["-c", script])
        .arg(&key.public)
        .arg(&token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
