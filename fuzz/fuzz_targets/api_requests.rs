//! Request bodies and query strings of the node API, decoded exactly as the
//! axum `Json` and `Query` extractors decode them. Decoding must never panic;
//! what decodes must survive a round trip (nodectl encodes, the agent decodes).

#![no_main]

use caisson_api::types::{ApplyRequest, LogQuery, ResetRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<ApplyRequest>(data) {
        let again = serde_json::to_vec(&req).expect("ApplyRequest serializes");
        assert_eq!(
            serde_json::from_slice::<ApplyRequest>(&again).ok(),
            Some(req)
        );
    }
    if let Ok(req) = serde_json::from_slice::<ResetRequest>(data) {
        let again = serde_json::to_vec(&req).expect("ResetRequest serializes");
        assert_eq!(
            serde_json::from_slice::<ResetRequest>(&again).ok(),
            Some(req)
        );
    }
    // axum's `Query` hands the raw query string to `serde_urlencoded::from_str`.
    if let Ok(query) = std::str::from_utf8(data) {
        if let Ok(q) = serde_urlencoded::from_str::<LogQuery>(query) {
            let again = serde_urlencoded::to_string(&q).expect("LogQuery serializes");
            assert_eq!(serde_urlencoded::from_str::<LogQuery>(&again).ok(), Some(q));
        }
    }
    let _ = serde_urlencoded::from_bytes::<LogQuery>(data);
});
