//! The `Range` request header, for one range of bytes (hub-api.md §2.5).

use super::error::HubError;

/// The bytes of a file a response carries, `start..end` (end exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// The longest `Range` header value we look at; anything longer is garbage.
const MAX_RANGE_HEADER: usize = 256;

/// Interprets a `Range` header against a file of `length` bytes.
///
/// Returns `Ok(None)` when the whole file is to be sent (no header, or several ranges, which we may
/// ignore per RFC 9110 §14.2), `Ok(Some(range))` for a 206, and a 416 error for a range that is
/// malformed or starts at or past the end.
pub fn parse_range(header: Option<&str>, length: u64) -> Result<Option<ByteRange>, HubError> {
    let Some(header) = header else {
        return Ok(None);
    };
    if header.len() > MAX_RANGE_HEADER {
        return Err(HubError::range_not_satisfiable(length));
    }
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Err(HubError::range_not_satisfiable(length));
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Err(HubError::range_not_satisfiable(length));
    };
    let parse_number = |text: &str| -> Result<u64, HubError> {
        if text.is_empty() || text.len() > 20 || !text.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(HubError::range_not_satisfiable(length));
        }
        text.parse::<u64>().map_err(|_| HubError::range_not_satisfiable(length))
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // A suffix range: the last N bytes.
        let suffix = parse_number(last)?;
        if suffix == 0 || length == 0 {
            return Err(HubError::range_not_satisfiable(length));
        }
        return Ok(Some(ByteRange { start: length.saturating_sub(suffix), end: length }));
    }
    let start = parse_number(first)?;
    if start >= length {
        return Err(HubError::range_not_satisfiable(length));
    }
    let end = if last.is_empty() {
        length
    } else {
        let last = parse_number(last)?;
        if last < start {
            return Err(HubError::range_not_satisfiable(length));
        }
        // Clamp the end to the file, as the Hub does.
        last.saturating_add(1).min(length)
    };
    Ok(Some(ByteRange { start, end }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(header: &str, length: u64) -> Result<Option<(u64, u64)>, u64> {
        parse_range(Some(header), length)
            .map(|range| range.map(|range| (range.start, range.end)))
            .map_err(|error| error.unsatisfied_length.expect("416 carries the length"))
    }

    #[test]
    fn well_formed_ranges() {
        assert_eq!(parse_range(None, 10).unwrap(), None);
        assert_eq!(range("bytes=0-100000", 42), Ok(Some((0, 42))));
        assert_eq!(range("bytes=8-20", 42), Ok(Some((8, 21))));
        assert_eq!(range("bytes=10485760-", 25165824), Ok(Some((10485760, 25165824))));
        assert_eq!(range("bytes=-5", 42), Ok(Some((37, 42))));
        assert_eq!(range("bytes=-500", 42), Ok(Some((0, 42))));
        assert_eq!(range("bytes=0-1,5-6", 42), Ok(None));
    }

    #[test]
    fn unsatisfiable_and_hostile_ranges_are_416() {
        for hostile in [
            "bytes=42-",
            "bytes=100-200",
            "bytes=99999999999999999999-",
            "bytes=5-2",
            "bytes=-0",
            "bytes=abc-",
            "bytes=1-x",
            "items=0-1",
            "bytes=",
            "bytes=-",
            "bytes=--1",
            "bytes=+1-2",
            "bytes=18446744073709551615-18446744073709551615",
        ] {
            assert_eq!(range(hostile, 42), Err(42), "{hostile}");
        }
        assert_eq!(range(&format!("bytes={}-", "1".repeat(300)), 42), Err(42));
        assert_eq!(range("bytes=0-", 0), Err(0));
    }
}
