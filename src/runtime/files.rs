//! Writing key, certificate and token files: secrets are created 0600,
//! public material 0644, whatever the umask.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Creates or truncates `path` with `bytes`; `secret` files are owner-only.
pub fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), WriteError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let err = |source| WriteError {
        path: path.to_owned(),
        source,
    };
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(bytes).map_err(err)
}

/// Replaces `path` with `bytes` atomically: a reader (a process watching
/// the file) sees the old content or the new, never half of it. Written
/// beside `path` first, with [`write_file`]'s permissions, then renamed.
pub fn write_file_atomic(path: &Path, bytes: &[u8], secret: bool) -> Result<(), WriteError> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(name);
    // A leftover from a crashed run may have other permissions.
    let _ = std::fs::remove_file(&tmp);
    write_file(&tmp, bytes, secret)?;
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        WriteError {
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("atb-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (secret, public) = (dir.join("s"), dir.join("p"));
        write_file(&secret, b"k", true).unwrap();
        write_file(&public, b"p", false).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&secret), 0o600);
        assert_eq!(mode(&public), 0o644);
        // An atomic replacement takes the new permissions and content.
        write_file_atomic(&public, b"q", true).unwrap();
        assert_eq!(mode(&public), 0o600);
        assert_eq!(std::fs::read(&public).unwrap(), b"q");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            2,
            "no temporary left"
        );
        let e = write_file_atomic(&dir.join("missing/x"), b"", true).unwrap_err();
        assert!(e.to_string().contains("missing/x"), "{e}");
        let e = write_file(&dir.join("missing/x"), b"", true).unwrap_err();
        assert!(e.to_string().contains("missing/x"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
