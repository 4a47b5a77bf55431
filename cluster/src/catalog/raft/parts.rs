//! Catalog writes too large for one Raft log entry travel as parts.
//!
//! A manifest of a repository with a million files is over a hundred megabytes; as one log entry
//! it would have to fit one peer frame, sit whole in every follower's memory while replicated, and
//! make a batch of entries unbounded. The proposer splits the write's postcard encoding into parts
//! of [`PART_BYTES`], each its own entry carrying the digest of the whole; the state machine
//! stages parts in the catalog (so they survive restarts and travel in snapshots) and applies the
//! write when the last one is in, after checking the digest. Entries stay bounded, so an
//! append-entries batch is bounded by `max_payload_entries × PART_BYTES`.

use super::CatalogCommand;
use crate::catalog::CatalogError;

/// The largest encoded write that is one log entry; larger ones are split into parts of this size.
pub(super) const PART_BYTES: usize = 1 << 20;

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The log entries that carry `command`: itself when it is small, else its parts in order.
pub(super) fn split(command: CatalogCommand) -> Result<Vec<CatalogCommand>, CatalogError> {
    let encoded = postcard::to_stdvec(&command).map_err(|error| CatalogError::Codec(error.to_string()))?;
    if encoded.len() <= PART_BYTES {
        return Ok(vec![command]);
    }
    let digest = sha256_hex(&encoded);
    let count = encoded.len().div_ceil(PART_BYTES) as u32;
    Ok(encoded
        .chunks(PART_BYTES)
        .enumerate()
        .map(|(index, bytes)| CatalogCommand::Part { digest: digest.clone(), index: index as u32, count, bytes: bytes.to_vec() })
        .collect())
}

/// The write whose parts, in order, are `whole`; refused when it does not match its digest or is
/// itself a part.
pub(super) fn assemble(digest: &str, whole: &[u8]) -> Result<CatalogCommand, String> {
    if sha256_hex(whole) != digest {
        return Err(format!("the parts of write {digest} do not match its digest"));
    }
    match postcard::from_bytes(whole) {
        Ok(CatalogCommand::Part { .. }) => Err(format!("write {digest} is a part of a part")),
        Ok(command) => Ok(command),
        Err(error) => Err(format!("write {digest} is undecodable: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{EntryKind, Manifest, ManifestEntry};
    use crate::types::{RepoKey, RepoType};

    fn big_manifest(files: usize) -> CatalogCommand {
        let entries = (0..files)
            .map(|index| ManifestEntry {
                path: format!("data/shard-{index:07}.parquet"),
                kind: EntryKind::File,
                size: index as u64,
                oid: format!("{index:040x}"),
                lfs: None,
            })
            .collect();
        CatalogCommand::PutManifest {
            repo: RepoKey::new(RepoType::Dataset, "org/big"),
            commit: "c".repeat(40),
            manifest: Manifest::new(entries),
        }
    }

    #[test]
    fn a_small_write_is_one_entry_and_a_large_one_parts_that_assemble_to_it() {
        let small = big_manifest(10);
        assert_eq!(split(small.clone()).unwrap(), vec![small]);
        let large = big_manifest(40_000);
        let parts = split(large.clone()).unwrap();
        assert!(parts.len() > 1, "split into {} parts", parts.len());
        let mut whole = Vec::new();
        let mut digest = String::new();
        for (position, part) in parts.iter().enumerate() {
            let CatalogCommand::Part { digest: part_digest, index, count, bytes } = part else { panic!("not a part: {part}") };
            assert_eq!((*index as usize, *count as usize), (position, parts.len()));
            assert!(bytes.len() <= PART_BYTES);
            whole.extend_from_slice(bytes);
            digest = part_digest.clone();
        }
        assert_eq!(assemble(&digest, &whole).unwrap(), large);
        whole[7] ^= 1;
        assert!(assemble(&digest, &whole).is_err(), "a damaged whole is refused");
    }
}
