//! Content addresses: a regular file is named by its git blob sha1, an LFS file by the sha256 of its
//! bytes (hub-api.md §8). Bytes are hashed while they stream and a blob is kept only if they match.

use sha1::Digest;

/// Returns true for a string that can name a blob: 40 or 64 lowercase hex digits. Anything else
/// (and so any path trick) is refused before it reaches the file system.
pub fn is_valid_etag(etag: &str) -> bool {
    (etag.len() == 40 || etag.len() == 64) && etag.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

/// An incremental hash of a blob's bytes in the form its etag uses.
pub enum ContentHasher {
    /// `sha1("blob {len}\0" ‖ bytes)`, which equals `git hash-object`.
    GitBlob(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl ContentHasher {
    /// Starts the hash an etag of this form needs; `None` for something that is not an etag.
    pub fn for_etag(etag: &str, size: u64) -> Option<ContentHasher> {
        if !is_valid_etag(etag) {
            return None;
        }
        if etag.len() == 64 {
            return Some(ContentHasher::Sha256(sha2::Sha256::new()));
        }
        let mut hasher = sha1::Sha1::new();
        hasher.update(format!("blob {size}\0").as_bytes());
        Some(ContentHasher::GitBlob(hasher))
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            ContentHasher::GitBlob(hasher) => hasher.update(bytes),
            ContentHasher::Sha256(hasher) => hasher.update(bytes),
        }
    }

    /// Returns the lowercase hex digest.
    pub fn finish(self) -> String {
        match self {
            ContentHasher::GitBlob(hasher) => hex::encode(hasher.finalize()),
            ContentHasher::Sha256(hasher) => hex::encode(hasher.finalize()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_sha1_matches_git_hash_object() {
        // `printf 'hello\n' | git hash-object --stdin`
        let mut hasher = ContentHasher::for_etag(&"0".repeat(40), 6).unwrap();
        hasher.update(b"hel");
        hasher.update(b"lo\n");
        assert_eq!(hasher.finish(), "ce013625030ba8dba906f756967f9e9ca394464a");
        // The empty blob.
        assert_eq!(ContentHasher::for_etag(&"0".repeat(40), 0).unwrap().finish(), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
    }

    #[test]
    fn sha256_for_lfs_etags() {
        let mut hasher = ContentHasher::for_etag(&"0".repeat(64), 3).unwrap();
        hasher.update(b"abc");
        assert_eq!(hasher.finish(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn only_hex_etags_name_blobs() {
        assert!(is_valid_etag(&"a".repeat(40)));
        assert!(!is_valid_etag(&"A".repeat(40)));
        assert!(!is_valid_etag("../../etc/passwd"));
        assert!(!is_valid_etag(&"a".repeat(41)));
        assert!(ContentHasher::for_etag("xyz", 1).is_none());
    }
}
