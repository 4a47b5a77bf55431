//! Query strings and form bodies: repeated keys, `+` as space, and the Hub clients' boolean
//! spellings (`True`/`true`/`1`, hub-api.md T10); and the paths-info request body, form or JSON.

use serde_json::Value;

use super::error::HubError;

/// Decodes `application/x-www-form-urlencoded` text into key/value pairs, in order. Malformed
/// escapes are kept literally rather than failing the whole request.
pub fn parse_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_component(key), decode_component(value))
        })
        .collect()
}

fn decode_component(text: &str) -> String {
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

/// Reads a boolean in any of the clients' spellings; anything else is false.
pub fn parse_bool(value: &str) -> bool {
    matches!(value.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes")
}

/// The values of `key` (also spelled `key[]`).
pub fn values<'a>(pairs: &'a [(String, String)], key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    pairs.iter().filter(move |(name, _)| name == key || name.strip_suffix("[]") == Some(key)).map(|(_, value)| value.as_str())
}

/// The first value of `key` read as a boolean; `false` when absent.
pub fn flag(pairs: &[(String, String)], key: &str) -> bool {
    values(pairs, key).next().is_some_and(parse_bool)
}

/// Reads the `paths` and `expand` of a paths-info body, form-encoded or JSON (hub-api.md §5.2).
/// The paths come back as sent: the caller validates each before looking it up.
pub fn paths_info_request(content_type: &str, body: &[u8]) -> Result<(Vec<String>, bool), HubError> {
    if content_type.starts_with("application/json") {
        let value: Value = serde_json::from_slice(body).map_err(|_| HubError::bad_request("Body is not valid JSON"))?;
        let paths = match value.get("paths") {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            Some(Value::String(single)) => vec![single.clone()],
            _ => return Err(HubError::bad_request("Body must have a 'paths' list")),
        };
        let expand = match value.get("expand") {
            Some(Value::Bool(expand)) => *expand,
            Some(Value::String(text)) => parse_bool(text),
            _ => false,
        };
        return Ok((paths, expand));
    }
    let text = std::str::from_utf8(body).map_err(|_| HubError::bad_request("Body is not UTF-8"))?;
    let pairs = parse_pairs(text);
    Ok((values(&pairs, "paths").map(str::to_owned).collect(), flag(&pairs, "expand")))
}

/// The longest path a tree cursor may name; the Hub's own paths are far shorter.
const MAX_CURSOR_PATH: usize = 4096;

/// The `cursor` of a tree listing's next page: the last path the page showed, hex-encoded after a
/// `p` (opaque to clients, and free of characters a URL would need to escape).
pub fn tree_cursor(last_path: &str) -> String {
    format!("p{}", hex::encode(last_path))
}

/// Reads a tree listing's `cursor`: one made by [`tree_cursor`], or the offset older releases put in
/// their links (honoured, so a listing paged across an upgrade goes on). `None` for anything else.
pub fn parse_tree_cursor(text: &str) -> Option<hfm_cluster::catalog::ListStart> {
    use hfm_cluster::catalog::ListStart;
    if let Some(encoded) = text.strip_prefix('p') {
        if encoded.len() > MAX_CURSOR_PATH * 2 {
            return None;
        }
        let path = String::from_utf8(hex::decode(encoded).ok()?).ok()?;
        return Some(ListStart::After(path));
    }
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse::<usize>().ok().map(ListStart::Skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_cursors_round_trip_and_refuse_anything_else() {
        use hfm_cluster::catalog::ListStart;
        for path in ["config.json", "data/train/shard 00001 (copy).parquet", "ünïcødé/文件", ""] {
            let cursor = tree_cursor(path);
            assert!(cursor.bytes().all(|byte| byte.is_ascii_alphanumeric()), "{cursor}");
            assert_eq!(parse_tree_cursor(&cursor), Some(ListStart::After(path.to_owned())));
        }
        assert_eq!(parse_tree_cursor("1000"), Some(ListStart::Skip(1000)), "an older release's offset");
        let too_long = format!("p{}", "61".repeat(MAX_CURSOR_PATH + 1));
        for hostile in ["", "-1", "+5", "1e3", "99999999999999999999999999", "p6", "pzz", "pff", "p%00", "x61", "P61", too_long.as_str()] {
            assert_eq!(parse_tree_cursor(hostile), None, "{hostile:?}");
        }
    }

    #[test]
    fn paths_info_accepts_form_and_json_bodies() {
        let (paths, expand) = paths_info_request("application/x-www-form-urlencoded", b"paths=config.json&paths=sub&expand=False").unwrap();
        assert_eq!((paths, expand), (vec!["config.json".to_owned(), "sub".to_owned()], false));
        let (paths, expand) = paths_info_request("application/json", br#"{"paths":["a","b"],"expand":true}"#).unwrap();
        assert_eq!((paths, expand), (vec!["a".to_owned(), "b".to_owned()], true));
        assert!(paths_info_request("application/json", b"{not json").is_err());
        assert!(paths_info_request("application/json", br#"{"paths": 3}"#).is_err());
        assert!(paths_info_request("", &[0xff, 0xfe]).is_err());
    }

    #[test]
    fn pairs_booleans_and_lists() {
        let pairs = parse_pairs("recursive=True&expand=false&expand[]=sha&paths=a+b&paths=sub%2Fdir&bad=%zz&flag");
        assert!(flag(&pairs, "recursive"));
        assert!(!flag(&pairs, "expand"));
        assert!(!flag(&pairs, "missing"));
        assert_eq!(values(&pairs, "paths").collect::<Vec<_>>(), ["a b", "sub/dir"]);
        assert_eq!(values(&pairs, "expand").collect::<Vec<_>>(), ["false", "sha"]);
        assert_eq!(values(&pairs, "bad").next(), Some("%zz"));
        assert_eq!(values(&pairs, "flag").next(), Some(""));
        for truthy in ["true", "True", "TRUE", "1"] {
            assert!(parse_bool(truthy));
        }
        for falsy in ["false", "False", "0", "", "nope"] {
            assert!(!parse_bool(falsy));
        }
    }
}
