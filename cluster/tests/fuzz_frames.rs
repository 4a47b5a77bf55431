//! Property-based fuzzing of the peer frame decoder (issue 14, "Fuzzing"): whatever a peer or
//! anything on the network sends, `read_frame` returns a value or an error and never panics or
//! allocates what a length prefix announces before the bytes arrive; what `write_frame` writes reads
//! back as itself, also back to back on one stream; a frame cut anywhere is an error, never a value.
//!
//! Bounded case counts keep it to about a second on every `cargo test`; proptest keeps shrunk
//! failures in `proptest-regressions/`, replayed first on the next run.

use futures_util::FutureExt;
use hfm_cluster::peer::protocol::{FillRequest, FillResponse, FrameError, MAX_FRAME, PeerRequest, RpcResponse, read_frame, write_frame};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

const CASES: u32 = 2000;

/// Reads one frame from `bytes` (a slice never makes a read wait); returns the result and how many
/// bytes were consumed.
fn read_one<T: DeserializeOwned>(bytes: &[u8]) -> (Result<T, FrameError>, usize) {
    let mut reader = bytes;
    let result = read_frame::<T>(&mut reader).now_or_never().expect("a slice is always ready");
    (result, bytes.len() - reader.len())
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut buffer = Vec::new();
    write_frame(&mut buffer, value).now_or_never().expect("a vector is always ready").expect("a frame under the limit");
    buffer
}

/// Decodes arbitrary bytes as `T`; whatever decodes must encode again and decode to itself.
fn check_decode<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Result<(), TestCaseError> {
    let (result, consumed) = read_one::<T>(bytes);
    match result {
        Ok(value) => {
            let announced = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
            prop_assert_eq!(consumed, 4 + announced, "a frame is its prefix and exactly the bytes it announces");
            let again = encode(&value);
            // Nothing follows a value inside its frame; only an overlong varint (postcard accepts
            // `0x80 0x00` for 0) makes the frame longer than the value's own encoding.
            prop_assert!(again.len() <= consumed, "{:?} decoded from {} bytes re-encodes to {}", value, consumed, again.len());
            let (decoded, _) = read_one::<T>(&again);
            prop_assert_eq!(decoded.unwrap(), value);
        }
        Err(FrameError::TooLarge(length)) => prop_assert!(length > MAX_FRAME && consumed == 4, "{} {}", length, consumed),
        Err(FrameError::Io(_) | FrameError::Codec(_)) => {}
    }
    Ok(())
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[0-9a-f]{40}|[0-9a-f]{64}", Just(String::new())]
}

fn fill_request() -> impl Strategy<Value = FillRequest> {
    (text(), any::<u64>(), any::<u64>(), proptest::option::of(text())).prop_map(|(etag, size, start, origin)| FillRequest {
        etag,
        size,
        start,
        origin,
    })
}

fn peer_request() -> impl Strategy<Value = PeerRequest> {
    prop_oneof![
        fill_request().prop_map(PeerRequest::Fill),
        (text(), proptest::collection::vec(any::<u8>(), 0..3000)).prop_map(|(service, body)| PeerRequest::Rpc { service, body }),
    ]
}

fn fill_response() -> impl Strategy<Value = FillResponse> {
    prop_oneof![
        (any::<u64>(), any::<u64>()).prop_map(|(size, start)| FillResponse::Sending { size, start }),
        Just(FillResponse::NotHere),
        text().prop_map(|reason| FillResponse::Unavailable { reason }),
    ]
}

fn rpc_response() -> impl Strategy<Value = RpcResponse> {
    prop_oneof![proptest::collection::vec(any::<u8>(), 0..3000).prop_map(RpcResponse::Ok), text().prop_map(RpcResponse::Failed)]
}

/// Bytes shaped like frames: a length prefix that is right, a little off, or hostile, then bytes.
fn framed_bytes() -> impl Strategy<Value = Vec<u8>> {
    (proptest::collection::vec(any::<u8>(), 0..200), prop_oneof![Just(0i64), -3i64..3, Just(i64::from(u32::MAX))], any::<bool>()).prop_map(
        |(payload, offset, prefixed)| {
            if !prefixed {
                return payload;
            }
            let length = (payload.len() as i64 + offset).clamp(0, i64::from(u32::MAX)) as u32;
            let mut bytes = length.to_be_bytes().to_vec();
            bytes.extend_from_slice(&payload);
            bytes
        },
    )
}

/// A valid frame with a few bytes of its payload changed (its length prefix kept).
fn mutated<T: Serialize + std::fmt::Debug>(value: impl Strategy<Value = T>) -> impl Strategy<Value = Vec<u8>> {
    (value, proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)).prop_map(|(value, flips)| {
        let mut bytes = encode(&value);
        // Every payload has at least its variant's byte.
        for (index, byte) in flips {
            let position = 4 + index.index(bytes.len() - 4);
            bytes[position] = byte;
        }
        bytes
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn arbitrary_bytes_decode_or_fail_cleanly_as_every_frame_type(bytes in prop_oneof![proptest::collection::vec(any::<u8>(), 0..300), framed_bytes()]) {
        check_decode::<PeerRequest>(&bytes)?;
        check_decode::<FillRequest>(&bytes)?;
        check_decode::<FillResponse>(&bytes)?;
        check_decode::<RpcResponse>(&bytes)?;
    }

    #[test]
    fn mutated_requests_decode_or_fail_cleanly(bytes in mutated(peer_request())) {
        check_decode::<PeerRequest>(&bytes)?;
    }

    #[test]
    fn mutated_responses_decode_or_fail_cleanly(fill in mutated(fill_response()), rpc in mutated(rpc_response())) {
        check_decode::<FillResponse>(&fill)?;
        check_decode::<RpcResponse>(&rpc)?;
    }

    #[test]
    fn frames_round_trip_back_to_back_on_one_stream(request in peer_request(), fill in fill_response(), rpc in rpc_response()) {
        let mut stream = encode(&request);
        stream.extend(encode(&fill));
        stream.extend(encode(&rpc));
        let mut reader = stream.as_slice();
        let read_request: PeerRequest = read_frame(&mut reader).now_or_never().unwrap().unwrap();
        let read_fill: FillResponse = read_frame(&mut reader).now_or_never().unwrap().unwrap();
        let read_rpc: RpcResponse = read_frame(&mut reader).now_or_never().unwrap().unwrap();
        prop_assert_eq!((read_request, read_fill, read_rpc), (request, fill, rpc));
        prop_assert!(reader.is_empty());
    }

    #[test]
    fn a_frame_cut_anywhere_is_an_error(request in peer_request(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&request);
        let at = cut.index(bytes.len());
        let (result, _) = read_one::<PeerRequest>(&bytes[..at]);
        prop_assert!(result.is_err(), "{} of {} bytes decoded", at, bytes.len());
    }

    #[test]
    fn a_frame_with_bytes_after_its_value_is_refused(request in peer_request(), fill in fill_response(), extra in proptest::collection::vec(any::<u8>(), 1..40)) {
        let padded = |mut bytes: Vec<u8>| {
            bytes.extend_from_slice(&extra);
            let length = (bytes.len() - 4) as u32;
            bytes[..4].copy_from_slice(&length.to_be_bytes());
            bytes
        };
        prop_assert!(matches!(read_one::<PeerRequest>(&padded(encode(&request))).0, Err(FrameError::Codec(_))));
        prop_assert!(matches!(read_one::<FillResponse>(&padded(encode(&fill))).0, Err(FrameError::Codec(_))));
    }

    #[test]
    fn an_announced_length_over_the_limit_is_refused_before_its_bytes(length in (MAX_FRAME as u32 + 1)..=u32::MAX, tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = length.to_be_bytes().to_vec();
        bytes.extend_from_slice(&tail);
        let (result, consumed) = read_one::<PeerRequest>(&bytes);
        prop_assert!(matches!(result, Err(FrameError::TooLarge(announced)) if announced == length as usize));
        prop_assert_eq!(consumed, 4);
    }
}

/// Found by `mutated_responses_decode_or_fail_cleanly` (kept in fuzz_frames.proptest-regressions):
/// a `Sending` frame announcing 20 bytes of which the value used 11 was read as that value, the
/// other 9 dropped.
#[test]
fn regression_a_fill_response_with_bytes_after_it_is_refused() {
    let bytes = [0, 0, 0, 20, 0, 128, 128, 128, 128, 128, 128, 128, 128, 1, 0, 128, 128, 128, 128, 128, 128, 128, 128, 1];
    assert!(matches!(read_one::<FillResponse>(&bytes).0, Err(FrameError::Codec(_))));
    // The same value framed alone is read.
    let mut alone = bytes[..4 + 11].to_vec();
    alone[3] = 11;
    assert_eq!(read_one::<FillResponse>(&alone).0.unwrap(), FillResponse::Sending { size: 1 << 56, start: 0 });
}

/// Found by `mutated_requests_decode_or_fail_cleanly`: an RPC request announcing 635 bytes whose
/// value (an empty body) ended after 67 was read as that request.
#[test]
fn regression_an_rpc_request_with_bytes_after_it_is_refused() {
    let mut bytes = vec![0, 0, 2, 123, 1, 64];
    bytes.extend_from_slice(b"0a0aaaaaa00a000a0aaaaa00000a00000a0a0aa0a0aa00aa0aaa0a0000a0a0a0");
    bytes.extend_from_slice(&[0, 4]);
    bytes.resize(4 + 635, 0);
    assert!(matches!(read_one::<PeerRequest>(&bytes).0, Err(FrameError::Codec(_))));
}
