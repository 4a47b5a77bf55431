//! Property-based fuzzing of the Hub wire parsers (issue 14, "Fuzzing"): the route parser, the
//! `Range` parser, the conditional validators, the paths-info request body and the tree cursor.
//!
//! Every property runs a bounded number of cases (see [`CASES`]) on every `cargo test`; proptest
//! keeps what it shrinks a failure to in `proptest-regressions/`, replayed first on the next run, and
//! the inputs that once failed are also named regression tests at the end of this file. The
//! properties:
//! - nothing panics, whatever the bytes;
//! - a refusal is the Hub's error format: its status, an `X-Error-Code`, an `X-Error-Message` and a
//!   `{"error": …}` body;
//! - what a client encodes routes back to itself (repository, revision, path), and a range inside
//!   the file is satisfiable and stays inside it;
//! - no empty, `.` or `..` segment, no NUL or other control character, and no backslash survives
//!   routing into a revision or a path.

use axum::response::IntoResponse;
use futures_util::FutureExt;
use hfm_cluster::catalog::ListStart;
use hfm_cluster::types::{RepoKey, RepoType};
use hfm_node::hub::HubError;
use hfm_node::hub::conditional::{none_match_hits, range_still_applies};
use hfm_node::hub::query::{parse_tree_cursor, paths_info_request, tree_cursor};
use hfm_node::hub::range::parse_range;
use hfm_node::hub::route::{Route, encode_path, encode_segment, route};
use http::StatusCode;
use http_body_util::BodyExt;
use proptest::prelude::*;

/// Cases per property: all of this file runs in about a second of a debug build.
const CASES: u32 = 2000;

/// The sub-routes of `/api/{t}s/{repo}/…` (as `hub::route` lists them): after a one-segment
/// (legacy) repository id, a revision spelled like one of them is read as a two-segment id instead.
/// The Hub has the same ambiguity; the round trips below leave those spellings out.
const REPO_SUBROUTES: &[&str] = &[
    "revision",
    "tree",
    "paths-info",
    "refs",
    "commits",
    "commit",
    "discussions",
    "xet-read-token",
    "xet-write-token",
    "treesize",
    "preupload",
    "settings",
    "branch",
    "tag",
    "resolve-cache",
    "lfs-files",
    "likers",
    "parquet",
    "notebook",
];

/// Checks that `error` answers in the Hub's format with one of `statuses`.
fn assert_hub_format(error: HubError, statuses: &[StatusCode]) {
    assert!(statuses.contains(&error.status), "status {} not in {statuses:?}: {error}", error.status);
    let code = error.code.clone().expect("an error of the mirror's own carries an X-Error-Code");
    let message = error.message.clone();
    let response = error.into_response();
    let headers = response.headers();
    assert_eq!(headers.get("x-error-code").and_then(|value| value.to_str().ok()), Some(code.as_str()));
    assert!(headers.contains_key("x-error-message"));
    assert!(headers[http::header::CONTENT_TYPE].to_str().unwrap().starts_with("application/json"));
    let body = response.into_body().collect().now_or_never().expect("a body in memory is ready").unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).expect("the body is JSON");
    assert_eq!(json["error"].as_str(), Some(message.as_str()));
}

/// What no routed revision or path may hold: an empty, `.` or `..` segment, a control character
/// (NUL included), a backslash, or a leading slash.
fn assert_clean_relative(text: &str, what: &str) {
    assert!(!text.starts_with('/'), "{what} {text:?} is absolute");
    assert!(!text.contains('\\'), "{what} {text:?} has a backslash");
    assert!(!text.chars().any(char::is_control), "{what} {text:?} has a control character");
    for segment in text.split('/') {
        assert!(!segment.is_empty() && segment != "." && segment != "..", "{what} {text:?} has segment {segment:?}");
    }
}

fn assert_clean_repo(repo: &RepoKey) {
    let segments: Vec<&str> = repo.repo_id.split('/').collect();
    assert!((1..=2).contains(&segments.len()), "repo id {:?}", repo.repo_id);
    for segment in segments {
        assert!(!segment.is_empty() && segment.len() <= 96 && segment != "." && segment != "..", "repo id {:?}", repo.repo_id);
        assert!(
            segment.bytes().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.')),
            "repo id {:?}",
            repo.repo_id
        );
    }
}

/// Routes `raw` and checks what came out: a clean route, or a refusal in the Hub's format.
fn check_route(raw: &str) -> Option<Route> {
    match route(raw) {
        Ok(routed) => {
            if let Some(repo) = routed.repo() {
                assert_clean_repo(repo);
            }
            match &routed {
                Route::Resolve { revision, path, .. } => {
                    assert!(revision.len() <= 256);
                    assert_clean_relative(revision, "revision");
                    assert_clean_relative(path, "path");
                }
                Route::Tree { revision, path, .. } => {
                    assert_clean_relative(revision, "revision");
                    if !path.is_empty() {
                        assert_clean_relative(path, "tree path");
                    }
                }
                Route::PathsInfo { revision, .. } | Route::RepoInfo { revision: Some(revision), .. } => {
                    assert_clean_relative(revision, "revision");
                }
                // The etag of the operator's replica route is opaque here: the operator port checks
                // the token, then that it is a blob etag (40 or 64 lowercase hex), before using it.
                Route::Replicas { .. } => assert!(raw.starts_with("/_hfm/replicas/"), "{raw:?}"),
                _ => {}
            }
            Some(routed)
        }
        Err(error) => {
            assert_hub_format(error, &[StatusCode::BAD_REQUEST, StatusCode::NOT_FOUND]);
            None
        }
    }
}

/// A segment of a repository id as the Hub allows it.
fn repo_segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,24}".prop_filter("not a dot segment", |segment| segment != "." && segment != "..")
}

/// One segment of a revision or a file path: any text but `/`, `\` and control characters.
fn free_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^/\\\\\\p{Cc}]{1,12}",
        "[a-zA-Z0-9 ._~#?&=+%-]{1,12}",
        Just("%2e%2E".to_owned()),
        Just("...".to_owned()),
        Just(".hidden".to_owned()),
        Just("é漢🙂".to_owned()),
    ]
    .prop_filter("not a dot segment", |segment| segment != "." && segment != "..")
}

fn relative(segments: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
    proptest::collection::vec(free_segment(), segments).prop_map(|segments| segments.join("/"))
}

fn repo_type() -> impl Strategy<Value = RepoType> {
    prop_oneof![Just(RepoType::Model), Just(RepoType::Dataset), Just(RepoType::Space), Just(RepoType::Kernel)]
}

/// A repository whose id cannot be read as something else: a model's first segment is none of the
/// URL prefixes (`datasets`, `spaces`, `kernels`), `api`, or the node's own `_hfm`.
fn repo() -> impl Strategy<Value = RepoKey> {
    (repo_type(), proptest::collection::vec(repo_segment(), 1..=2))
        .prop_filter("a model id that starts like another route", |(repo_type, segments)| {
            *repo_type != RepoType::Model || !["datasets", "spaces", "kernels", "api", "_hfm"].contains(&segments[0].as_str())
        })
        .prop_map(|(repo_type, segments)| RepoKey::new(repo_type, segments.join("/")))
}

fn is_legacy(repo: &RepoKey) -> bool {
    !repo.repo_id.contains('/')
}

/// Paths built from the words routes are made of and the escapes attackers try.
fn hostile_path() -> impl Strategy<Value = String> {
    let word = prop::sample::select(vec![
        "api",
        "models",
        "datasets",
        "spaces",
        "resolve",
        "tree",
        "paths-info",
        "revision",
        "refs",
        "xet-read-token",
        "_hfm",
        "replicas",
        "status",
        "main",
        "org",
        "model",
        "file.bin",
        "",
        ".",
        "..",
        "%2e",
        "%2E%2e",
        "%2e%2e%2f",
        "..%2F..",
        "%00",
        "a%00b",
        "%0a",
        "%7f",
        "%5C",
        "%2F",
        "%",
        "%4",
        "%zz",
        "%+1",
        "%C3",
        "%c3%a9",
        "%ff%fe",
        "é",
        "\\",
        "\u{0}",
    ]);
    (proptest::collection::vec(word, 0..9), any::<bool>()).prop_map(|(words, absolute)| {
        let joined = words.join("/");
        if absolute { format!("/{joined}") } else { joined }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn any_text_routes_cleanly_or_is_refused_in_the_hubs_format(raw in any::<String>()) {
        check_route(&raw);
        check_route(&format!("/{raw}"));
    }

    #[test]
    fn hostile_paths_route_cleanly_or_are_refused_in_the_hubs_format(raw in hostile_path()) {
        check_route(&raw);
    }

    #[test]
    fn an_encoded_resolve_url_routes_back_to_itself(
        repo in repo(),
        revision in relative(1..=3),
        path in relative(1..=5),
        whole_path_as_one_segment in any::<bool>(),
    ) {
        prop_assume!(revision.len() <= 256);
        // `/{repo}/resolve/resolve/…` of a one-segment id reads as the two-segment id `{repo}/resolve`.
        prop_assume!(!(is_legacy(&repo) && revision == "resolve"));
        let encoded_path = if whole_path_as_one_segment { encode_segment(&path) } else { encode_path(&path) };
        let raw = format!("/{}{}/resolve/{}/{encoded_path}", repo.repo_type.url_prefix(), repo.repo_id, encode_segment(&revision));
        prop_assert_eq!(check_route(&raw), Some(Route::Resolve { repo, revision, path }), "{}", raw);
    }

    #[test]
    fn encoded_api_urls_route_back_to_themselves(
        repo in repo(),
        revision in relative(1..=3),
        path in prop_oneof![Just(String::new()), relative(1..=4)],
        trailing_slash in any::<bool>(),
    ) {
        prop_assume!(revision.len() <= 256);
        prop_assume!(!(is_legacy(&repo) && REPO_SUBROUTES.contains(&revision.as_str())));
        let base = format!("/api/{}/{}", repo.repo_type.api_plural(), repo.repo_id);
        let revision_segment = encode_segment(&revision);
        let slash = if trailing_slash { "/" } else { "" };

        let tree = if path.is_empty() {
            format!("{base}/tree/{revision_segment}{slash}")
        } else {
            format!("{base}/tree/{revision_segment}/{}{slash}", encode_path(&path))
        };
        prop_assert_eq!(check_route(&tree), Some(Route::Tree { repo: repo.clone(), revision: revision.clone(), path }), "{}", tree);
        let paths_info = format!("{base}/paths-info/{revision_segment}");
        prop_assert_eq!(check_route(&paths_info), Some(Route::PathsInfo { repo: repo.clone(), revision: revision.clone() }), "{}", paths_info);
        let info = format!("{base}/revision/{revision_segment}");
        prop_assert_eq!(check_route(&info), Some(Route::RepoInfo { repo: repo.clone(), revision: Some(revision) }), "{}", info);
        prop_assert_eq!(check_route(&format!("{base}{slash}")), Some(Route::RepoInfo { repo: repo.clone(), revision: None }));
        prop_assert_eq!(check_route(&format!("{base}/refs")), Some(Route::Refs { repo }));
    }

    #[test]
    fn a_dot_segment_anywhere_in_a_resolve_url_is_refused(
        repo in repo(),
        revision in relative(1..=2),
        path in relative(1..=4),
        dot in prop_oneof![Just("."), Just(".."), Just("%2e"), Just("%2E%2E"), Just(".%2e"), Just("")],
        position in any::<prop::sample::Index>(),
    ) {
        prop_assume!(revision.len() <= 250);
        let mut segments: Vec<String> = path.split('/').map(encode_segment).collect();
        segments.insert(position.index(segments.len() + 1), dot.to_owned());
        let raw = format!("/{}{}/resolve/{}/{}", repo.repo_type.url_prefix(), repo.repo_id, encode_segment(&revision), segments.join("/"));
        let routed = check_route(&raw);
        // An empty last segment is a trailing slash, which is allowed.
        let trailing_empty = dot.is_empty() && segments.last().is_some_and(String::is_empty);
        prop_assert!(routed.is_none() || trailing_empty, "{} routed to {:?}", raw, routed);
    }

    #[test]
    fn any_range_header_is_a_range_inside_the_file_or_a_416(header in any::<String>(), length in any::<u64>()) {
        check_range(&header, length);
        check_range(&format!("bytes={header}"), length);
    }

    #[test]
    fn range_shaped_headers_are_a_range_inside_the_file_or_a_416(
        first in prop_oneof![Just(String::new()), "[0-9]{1,22}", Just("18446744073709551615".to_owned()), "[ +-]?[0-9]{0,3}"],
        last in prop_oneof![Just(String::new()), "[0-9]{1,22}", Just("18446744073709551616".to_owned()), "[ x,-]?[0-9]{0,3}"],
        spaces in any::<bool>(),
        length in prop_oneof![Just(0u64), Just(1u64), 0u64..2000, any::<u64>()],
    ) {
        let header = if spaces { format!(" bytes= {first} - {last} ") } else { format!("bytes={first}-{last}") };
        check_range(&header, length);
    }

    #[test]
    fn a_range_inside_the_file_is_satisfiable_and_exact(length in 1u64..u64::MAX, start_fraction in 0.0f64..1.0, span in any::<u64>()) {
        let start = ((length as f64 * start_fraction) as u64).min(length - 1);
        let last = start.saturating_add(span % (length - start));
        let range = parse_range(Some(&format!("bytes={start}-{last}")), length).unwrap().unwrap();
        prop_assert_eq!((range.start, range.end), (start, last + 1));
        let open = parse_range(Some(&format!("bytes={start}-")), length).unwrap().unwrap();
        prop_assert_eq!((open.start, open.end), (start, length));
        let suffix = 1 + span % length;
        let tail = parse_range(Some(&format!("bytes=-{suffix}")), length).unwrap().unwrap();
        prop_assert_eq!((tail.start, tail.end), (length - suffix, length));
        // Past the end: the end is clamped to the file, as the Hub does.
        let beyond = parse_range(Some(&format!("bytes={start}-{}", u64::MAX - 1)), length).unwrap().unwrap();
        prop_assert_eq!((beyond.start, beyond.end), (start, length));
        // Starting at or past the end is a 416 carrying the length.
        let error = parse_range(Some(&format!("bytes={}-", length.saturating_add(span % 3).max(length))), length).unwrap_err();
        prop_assert_eq!(error.unsatisfied_length, Some(length));
    }

    #[test]
    fn several_ranges_are_answered_whole(ranges in proptest::collection::vec((0u64..100, 0u64..100), 2..5), length in 1u64..1000) {
        let header = format!("bytes={}", ranges.iter().map(|(first, last)| format!("{first}-{last}")).collect::<Vec<_>>().join(","));
        prop_assert_eq!(parse_range(Some(&header), length).unwrap(), None);
    }

    #[test]
    fn validators_never_panic_and_hit_only_the_files_own_tag(header in any::<String>(), etag in "[0-9a-f]{40}|[0-9a-f]{64}") {
        let quoted = format!("\"{etag}\"");
        if none_match_hits(&header, &etag) {
            prop_assert!(header.trim() == "*" || header.contains(&quoted), "{:?} hit {}", header, etag);
        }
        prop_assert_eq!(range_still_applies(Some(&header), &etag), header.trim() == quoted && header.len() <= 4096);
        prop_assert!(range_still_applies(None, &etag));
    }

    #[test]
    fn an_if_none_match_list_hits_exactly_when_it_names_the_file(
        etag in "[0-9a-f]{64}",
        others in proptest::collection::vec("[0-9a-f]{40}|[0-9a-f]{64}|[a-z]{0,5}", 0..6),
        position in any::<prop::sample::Index>(),
        include in any::<bool>(),
        weak in any::<bool>(),
        spacing in prop_oneof![Just(","), Just(", "), Just(" ,\t")],
    ) {
        let mut tags: Vec<String> = others.iter().filter(|other| **other != etag).map(|other| format!("\"{other}\"")).collect();
        if include {
            let tag = if weak { format!("W/\"{etag}\"") } else { format!("\"{etag}\"") };
            tags.insert(position.index(tags.len() + 1), tag);
        }
        let header = tags.join(spacing);
        prop_assert_eq!(none_match_hits(&header, &etag), include, "{:?}", header);
        // If-Range needs the one strong tag exactly.
        prop_assert_eq!(range_still_applies(Some(&header), &etag), include && !weak && tags.len() == 1);
    }

    #[test]
    fn any_paths_info_body_is_read_or_refused_in_the_hubs_format(
        content_type in prop_oneof![Just("application/json"), Just("application/json; charset=utf-8"), Just("application/x-www-form-urlencoded"), Just(""), Just("text/plain")],
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            any::<String>().prop_map(String::into_bytes),
            json_like().prop_map(String::into_bytes),
        ],
    ) {
        if let Err(error) = paths_info_request(content_type, &body) {
            assert_hub_format(error, &[StatusCode::BAD_REQUEST]);
        }
    }

    #[test]
    fn a_paths_info_body_round_trips_as_json_and_as_a_form(
        paths in proptest::collection::vec(any::<String>(), 0..6),
        expand in any::<bool>(),
        spelling in prop_oneof![Just(0u8), Just(1u8), Just(2u8)],
    ) {
        let expand_value = match (spelling, expand) {
            (0, _) => serde_json::json!(expand),
            (1, true) => serde_json::json!("True"),
            (1, false) => serde_json::json!("False"),
            (_, true) => serde_json::json!("1"),
            (_, false) => serde_json::json!("0"),
        };
        let json = serde_json::to_vec(&serde_json::json!({"paths": paths, "expand": expand_value})).unwrap();
        prop_assert_eq!(paths_info_request("application/json", &json).unwrap(), (paths.clone(), expand));
        let mut form: Vec<String> = paths.iter().map(|path| format!("paths={}", encode_segment(path))).collect();
        form.push(format!("expand={}", if expand { "True" } else { "false" }));
        let form = form.join("&");
        prop_assert_eq!(paths_info_request("application/x-www-form-urlencoded", form.as_bytes()).unwrap(), (paths, expand));
    }

    #[test]
    fn any_tree_cursor_is_read_or_refused_without_panic(raw in any::<String>(), hexish in "p[0-9a-fA-F]{0,64}") {
        for text in [raw.as_str(), hexish.as_str()] {
            if let Some(ListStart::After(path)) = parse_tree_cursor(text) {
                // Only a cursor made of a path comes back as that path.
                prop_assert_eq!(tree_cursor(&path).to_ascii_lowercase(), text.to_ascii_lowercase());
            }
        }
    }

    #[test]
    fn a_tree_cursor_round_trips_any_path(path in any::<String>()) {
        prop_assume!(path.len() <= 4096);
        let cursor = tree_cursor(&path);
        prop_assert!(cursor.bytes().all(|byte| byte.is_ascii_alphanumeric()), "a cursor needs no escaping in a URL");
        prop_assert_eq!(parse_tree_cursor(&cursor), Some(ListStart::After(path)));
    }
}

/// JSON-ish text: objects with `paths` and `expand` of every type, cut or not.
fn json_like() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just("null".to_owned()),
        Just("3".to_owned()),
        Just("true".to_owned()),
        Just("\"a\"".to_owned()),
        Just("[\"a\", 1, null, \"../b\", \"\\u0000\"]".to_owned()),
        Just("{}".to_owned()),
        Just("[[[[[[[[[[]]]]]]]]]]".to_owned()),
        any::<String>().prop_map(|text| serde_json::to_string(&text).unwrap()),
    ]
    .boxed();
    (value.clone(), value, any::<prop::sample::Index>(), any::<bool>()).prop_map(|(paths, expand, cut, whole)| {
        let text = format!("{{\"paths\": {paths}, \"expand\": {expand}}}");
        if whole {
            text
        } else {
            let mut at = cut.index(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text[..at].to_owned()
        }
    })
}

/// Interprets `header` against a file of `length` bytes and checks the outcome: nothing, a
/// non-empty range inside the file, or a 416 in the Hub's format carrying the length.
fn check_range(header: &str, length: u64) {
    match parse_range(Some(header), length) {
        Ok(None) => {}
        Ok(Some(range)) => {
            assert!(range.start < range.end && range.end <= length, "{header:?} of {length} bytes gave {range:?}");
            assert_eq!(range.len(), range.end - range.start);
        }
        Err(error) => {
            assert_eq!(error.unsatisfied_length, Some(length), "{header:?}");
            assert_eq!(error.code.as_deref(), Some("RangeNotSatisfiable"));
            let content_range = error.clone().into_response().headers()[http::header::CONTENT_RANGE].to_str().unwrap().to_owned();
            assert_eq!(content_range, format!("bytes */{length}"));
            assert_hub_format(error, &[StatusCode::RANGE_NOT_SATISFIABLE]);
        }
    }
}
