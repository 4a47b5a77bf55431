//! Conditional requests on `/resolve/` (RFC 9110 §13; hub-api.md T24): `If-None-Match` answered
//! with `304 Not Modified` when the client already holds the file, and `If-Range` deciding whether
//! a `Range` still applies.
//!
//! Every etag the mirror sends is strong (a content hash), so the weak comparison of
//! `If-None-Match` and the strong comparison of `If-Range` differ only in how they treat a `W/`
//! prefix the client put on.

/// The longest validator list we look at; anything longer is garbage and matches nothing.
const MAX_VALIDATOR_HEADER: usize = 4096;

/// Whether an `If-None-Match` value names the file whose etag is `etag` (unquoted): `*`, or any
/// listed entity tag equal to it under the weak comparison.
pub fn none_match_hits(header: &str, etag: &str) -> bool {
    if header.len() > MAX_VALIDATOR_HEADER {
        return false;
    }
    let header = header.trim();
    if header == "*" {
        return true;
    }
    entity_tags(header).any(|tag| tag.strip_prefix("W/").unwrap_or(tag) == format!("\"{etag}\""))
}

/// Whether a `Range` may be honoured under the request's `If-Range`: no `If-Range`, or one that is
/// exactly this file's strong etag. A date (the mirror sends no `Last-Modified`), a weak tag or
/// another etag means the client's partial copy is stale: it gets the whole file.
pub fn range_still_applies(if_range: Option<&str>, etag: &str) -> bool {
    match if_range {
        None => true,
        Some(value) => value.len() <= MAX_VALIDATOR_HEADER && value.trim() == format!("\"{etag}\""),
    }
}

/// The entity tags of a comma-separated list, quotes kept; malformed members are skipped.
fn entity_tags(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|tag| {
        let opaque = tag.strip_prefix("W/").unwrap_or(tag);
        opaque.len() >= 2 && opaque.starts_with('"') && opaque.ends_with('"') && !opaque[1..opaque.len() - 1].contains('"')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETAG: &str = "a1b2c3";

    #[test]
    fn if_none_match_hits_only_the_same_tag() {
        assert!(none_match_hits("\"a1b2c3\"", ETAG));
        assert!(none_match_hits("W/\"a1b2c3\"", ETAG), "weak comparison");
        assert!(none_match_hits("\"other\", \"a1b2c3\"", ETAG), "a list");
        assert!(none_match_hits(" * ", ETAG));
        assert!(!none_match_hits("\"other\"", ETAG));
        assert!(!none_match_hits("a1b2c3", ETAG), "an unquoted tag is malformed");
        assert!(!none_match_hits("\"a1b2c3", ETAG));
        assert!(!none_match_hits("", ETAG));
        assert!(!none_match_hits("\"\"", ETAG));
    }

    #[test]
    fn hostile_validators_match_nothing() {
        let long = format!("\"{ETAG}\",{}", "\"x\",".repeat(2000));
        assert!(!none_match_hits(&long, ETAG));
        assert!(!none_match_hits(",,,,,", ETAG));
        assert!(!none_match_hits("\"a\"b\"", ETAG));
        assert!(!none_match_hits("W/", ETAG));
        assert!(!range_still_applies(Some(&long), ETAG));
    }

    #[test]
    fn if_range_needs_the_exact_strong_tag() {
        assert!(range_still_applies(None, ETAG));
        assert!(range_still_applies(Some("\"a1b2c3\""), ETAG));
        assert!(!range_still_applies(Some("W/\"a1b2c3\""), ETAG), "weak tags never match If-Range");
        assert!(!range_still_applies(Some("\"stale\""), ETAG));
        assert!(!range_still_applies(Some("Wed, 21 Oct 2015 07:28:00 GMT"), ETAG), "no Last-Modified: a date is stale");
    }
}
