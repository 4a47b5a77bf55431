//! How Raft messages and log entries are encoded: postcard behind a one-byte tag.
//!
//! Earlier builds wrote both as JSON, where a byte vector becomes an array of numbers (about 3.6
//! times its size). Whatever starts with the tag is postcard; anything else is read as the JSON
//! of an earlier build, so a log written before an upgrade still opens and a node of an earlier
//! build can still be spoken to (`network.rs` falls back to JSON for a peer that refuses the tag).

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first byte of a binary encoding; JSON never starts with it.
const BINARY: u8 = 0xB1;

/// Encodes `value` as tagged postcard, or as JSON for a peer of an earlier build.
pub(super) fn encode<T: Serialize>(value: &T, binary: bool) -> Result<Vec<u8>, String> {
    if binary {
        postcard::to_extend(value, vec![BINARY]).map_err(|error| error.to_string())
    } else {
        serde_json::to_vec(value).map_err(|error| error.to_string())
    }
}

/// Decodes either encoding; says whether it was the binary one (an answer goes back in kind).
pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, bool), String> {
    match bytes.split_first() {
        Some((&BINARY, rest)) => postcard::from_bytes(rest).map(|value| (value, true)).map_err(|error| error.to_string()),
        _ => serde_json::from_slice(bytes).map(|value| (value, false)).map_err(|error| error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::RefRecord;
    use crate::catalog::raft::CatalogCommand;
    use crate::types::{RepoKey, RepoType};

    #[test]
    fn both_encodings_read_back_and_binary_is_smaller() {
        let command = CatalogCommand::PutRepoInfo {
            repo: RepoKey::new(RepoType::Model, "org/model"),
            commit: "a".repeat(40),
            variant: String::new(),
            body: vec![200; 1000],
        };
        let (binary, json) = (encode(&command, true).unwrap(), encode(&command, false).unwrap());
        assert_eq!(decode::<CatalogCommand>(&binary).unwrap(), (command.clone(), true));
        assert_eq!(decode::<CatalogCommand>(&json).unwrap(), (command, false));
        assert!(binary.len() * 3 < json.len(), "binary {} bytes, JSON {}", binary.len(), json.len());
        let put = CatalogCommand::PutRef {
            repo: RepoKey::new(RepoType::Model, "m"),
            revision: "main".into(),
            record: RefRecord { commit: "b".repeat(40), checked_at_ms: 5 },
        };
        assert_eq!(decode::<CatalogCommand>(&encode(&put, true).unwrap()).unwrap().0, put);
    }

    #[test]
    fn hostile_bytes_are_an_error_not_a_panic() {
        for bytes in [&[][..], &[BINARY][..], &[BINARY, 0xff, 0xff, 0xff, 0xff, 0x0f][..], b"{\"PutRef\":", &[0x7b, 0x00]] {
            assert!(decode::<CatalogCommand>(bytes).is_err(), "{bytes:?} decoded");
        }
    }
}

#[cfg(test)]
mod openraft_types {
    use super::*;
    use crate::catalog::raft::CatalogTypes;
    use openraft::type_config::alias::{LogIdOf, VoteOf};
    use openraft::vote::RaftLeaderId;

    #[test]
    fn log_ids_and_votes_survive_the_binary_encoding() {
        let log_id = LogIdOf::<CatalogTypes>::new(openraft::vote::leader_id_adv::CommittedLeaderId::new(1, 1), 0);
        let back: Option<LogIdOf<CatalogTypes>> = decode(&encode(&Some(log_id), true).unwrap()).unwrap().0;
        assert_eq!(back, Some(log_id));
        let vote = <VoteOf<CatalogTypes> as openraft::vote::RaftVote>::from_leader_id(RaftLeaderId::new(3, 2), true);
        let back: VoteOf<CatalogTypes> = decode(&encode(&vote, true).unwrap()).unwrap().0;
        assert_eq!(back, vote);
    }
}
