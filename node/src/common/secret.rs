//! Secrets kept in files: made once with random bytes, readable by their owner only.

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Returns the token in `path`, making it first (32 random bytes, hex, mode 0600) when the file does
/// not exist. Making is atomic: a reader sees no file or the whole token.
pub fn ensure_token_file(path: &Path) -> io::Result<String> {
    if !path.exists() {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|error| io::Error::other(format!("no randomness: {error}")))?;
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        write_private(path, hex::encode(bytes).as_bytes())?;
    }
    Ok(std::fs::read_to_string(path)?.trim().to_owned())
}

/// Writes a file only its owner may read, atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let staged = path.with_extension("new");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&staged)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&staged, path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_token_is_made_once_and_kept_private() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("sub/operator-token");
        let first = ensure_token_file(&path).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(ensure_token_file(&path).unwrap(), first, "an existing token is kept");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
