//! The Hub's JSON shapes that the mirror reads or writes: tree entries (hub-api.md §5.1) and the
//! siblings of repo info asked with `blobs=true` (§4), and the
//! removal of Xet fields from anything upstream sends (§3).

use hfm_cluster::catalog::{EntryKind, LfsPointer, ManifestEntry};
use serde_json::{Map, Value, json};

/// Removes every `xetHash` key, at any depth, so `hf_xet` never takes over a download (T1).
pub fn strip_xet_fields(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("xetHash");
            map.values_mut().for_each(strip_xet_fields);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_xet_fields),
        _ => {}
    }
}

/// Parses a JSON body, strips Xet fields and serializes it again; a body that is not JSON is
/// returned unchanged.
pub fn strip_xet_from_body(body: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(body) {
        Ok(mut value) => {
            strip_xet_fields(&mut value);
            serde_json::to_vec(&value).unwrap_or_else(|_| body.to_vec())
        }
        Err(_) => body.to_vec(),
    }
}

/// Renders a manifest entry as the Hub renders a tree or paths-info entry with `expand=false`.
pub fn tree_entry_json(entry: &ManifestEntry) -> Value {
    let mut object = Map::new();
    let kind = match entry.kind {
        EntryKind::File => "file",
        EntryKind::Directory => "directory",
    };
    object.insert("type".into(), json!(kind));
    object.insert("oid".into(), json!(entry.oid));
    object.insert("size".into(), json!(entry.size));
    if let Some(pointer) = &entry.lfs {
        object.insert("lfs".into(), json!({"oid": pointer.sha256, "size": pointer.size, "pointerSize": pointer.pointer_size}));
    }
    object.insert("path".into(), json!(entry.path));
    Value::Object(object)
}

/// An upstream answer that does not have the shape the Hub documents.
#[derive(Debug, thiserror::Error)]
#[error("malformed tree entry or sibling: {0}")]
pub struct MalformedEntry(pub String);

fn is_hex(text: &str, length: usize) -> bool {
    text.len() == length && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// Where one JSON shape of the Hub keeps what a manifest entry needs.
struct EntryShape {
    path: &'static str,
    oid: &'static str,
    lfs_sha256: &'static str,
    /// The key saying file or directory; `None`: every entry is a file.
    kind: Option<&'static str>,
}

/// A tree or paths-info entry: `{"type","oid","size","lfs":{"oid","size","pointerSize"},"path"}`.
const TREE_ENTRY: EntryShape = EntryShape { path: "path", oid: "oid", lfs_sha256: "oid", kind: Some("type") };

/// A sibling of repo info asked with `blobs=true` (hub-api.md §4):
/// `{"rfilename","blobId","size","lfs":{"sha256","size","pointerSize"}}`; siblings are files only.
const SIBLING: EntryShape = EntryShape { path: "rfilename", oid: "blobId", lfs_sha256: "sha256", kind: None };

/// Parses one upstream tree entry, validating what the mirror relies on: a relative path, a hex oid,
/// and for LFS files a sha256 that will name the blob.
pub fn parse_tree_entry(value: &Value) -> Result<ManifestEntry, MalformedEntry> {
    parse_entry(value, &TREE_ENTRY)
}

/// Parses one sibling of a repo info asked with `blobs=true`, validated as a tree entry is.
pub fn parse_sibling_entry(value: &Value) -> Result<ManifestEntry, MalformedEntry> {
    parse_entry(value, &SIBLING)
}

fn parse_entry(value: &Value, shape: &EntryShape) -> Result<ManifestEntry, MalformedEntry> {
    let text = |key: &str| value.get(key).and_then(Value::as_str).ok_or_else(|| MalformedEntry(format!("missing {key}")));
    let path = text(shape.path)?.to_owned();
    if path.is_empty() || path.starts_with('/') || path.split('/').any(|segment| segment.is_empty() || segment == "." || segment == "..") {
        return Err(MalformedEntry(format!("bad path {path:?}")));
    }
    let kind = match shape.kind {
        Some(key) if text(key)? != "file" => EntryKind::Directory,
        _ => EntryKind::File,
    };
    let oid = text(shape.oid)?.to_ascii_lowercase();
    if !is_hex(&oid, 40) {
        return Err(MalformedEntry(format!("bad oid for {path:?}")));
    }
    let size = value.get("size").and_then(Value::as_u64).unwrap_or(0);
    let lfs = match value.get("lfs") {
        Some(Value::Object(lfs)) => {
            let sha256 = lfs.get(shape.lfs_sha256).and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
            if !is_hex(&sha256, 64) {
                return Err(MalformedEntry(format!("bad lfs oid for {path:?}")));
            }
            Some(LfsPointer {
                sha256,
                size: lfs.get("size").and_then(Value::as_u64).unwrap_or(size),
                pointer_size: lfs.get("pointerSize").and_then(Value::as_u64).unwrap_or(0),
            })
        }
        _ => None,
    };
    Ok(ManifestEntry { path, kind, size, oid, lfs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xet_hash_is_removed_at_every_depth() {
        let mut value = json!([{"path": "a", "xetHash": "x", "lfs": {"oid": "o", "xetHash": "y"}}, {"nested": [{"xetHash": 1}]}]);
        strip_xet_fields(&mut value);
        assert!(!value.to_string().contains("xetHash"));
        assert_eq!(strip_xet_from_body(b"not json"), b"not json");
    }

    #[test]
    fn tree_entries_round_trip() {
        let upstream = json!({"type": "file", "oid": "508e2c52963056a69f522d16195123a92a55fa50", "size": 25165824, "path": "model.safetensors",
            "lfs": {"oid": "5".repeat(64), "size": 25165824, "pointerSize": 134}, "xetHash": "a".repeat(64)});
        let entry = parse_tree_entry(&upstream).unwrap();
        assert_eq!(entry.etag(), "5".repeat(64));
        let rendered = tree_entry_json(&entry);
        assert_eq!(rendered["lfs"]["pointerSize"], 134);
        assert!(rendered.get("xetHash").is_none());
    }

    #[test]
    fn hostile_tree_entries_are_refused() {
        for hostile in [
            json!({"type": "file", "oid": "5".repeat(40), "size": 1, "path": "../etc/passwd"}),
            json!({"type": "file", "oid": "5".repeat(40), "size": 1, "path": "/abs"}),
            json!({"type": "file", "oid": "5".repeat(40), "size": 1, "path": ""}),
            json!({"type": "file", "oid": "../../x", "size": 1, "path": "a"}),
            json!({"type": "file", "oid": "5".repeat(40), "size": 1, "path": "a", "lfs": {"oid": "../x", "size": 1}}),
            json!({"type": "file", "size": 1, "path": "a"}),
            json!("not an object"),
        ] {
            assert!(parse_tree_entry(&hostile).is_err(), "{hostile}");
        }
    }

    #[test]
    fn siblings_asked_with_blobs_are_files_with_their_content_address() {
        let lfs = json!({"rfilename": "model.safetensors", "blobId": "508e2c52963056a69f522d16195123a92a55fa50", "size": 25165824,
            "lfs": {"sha256": "5".repeat(64), "size": 25165824, "pointerSize": 134}});
        let entry = parse_sibling_entry(&lfs).unwrap();
        assert_eq!((entry.kind, entry.size, entry.etag()), (EntryKind::File, 25165824, "5".repeat(64).as_str()));
        assert_eq!(entry.lfs.unwrap().pointer_size, 134);
        let plain = parse_sibling_entry(&json!({"rfilename": "sub/config.json", "blobId": "A".repeat(40), "size": 42})).unwrap();
        assert_eq!((plain.path.as_str(), plain.etag(), plain.size), ("sub/config.json", "a".repeat(40).as_str(), 42));
        for hostile in [
            json!({"rfilename": "config.json"}),
            json!({"rfilename": "../x", "blobId": "5".repeat(40), "size": 1}),
            json!({"rfilename": "a//b", "blobId": "5".repeat(40), "size": 1}),
            json!({"rfilename": "a", "blobId": "5".repeat(40), "size": 1, "lfs": {"oid": "5".repeat(64), "size": 1}}),
            json!({"path": "a", "oid": "5".repeat(40), "size": 1, "type": "file"}),
        ] {
            assert!(parse_sibling_entry(&hostile).is_err(), "{hostile}");
        }
    }
}
