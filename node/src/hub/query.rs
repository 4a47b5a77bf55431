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

#[cfg(test)]
mod tests {
    use super::*;

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
