//! One POST of one batch, and what its answer means for the drain (INGEST.md "Responses").

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};

use super::backoff::parse_retry_after;
use crate::wire::{BatchAccepted, RejectBody};

/// Longest `Retry-After` the drain honours. A server asking for more is waited on for this long and
/// asked again, so a wrong header cannot stop the drain for days.
pub const UPLINK_RETRY_AFTER_MS_MAX: u64 = 10 * 60 * 1000;

/// Most bytes of a refusal's body kept as the reason of a parked event (the spool caps reasons).
pub const UPLINK_REASON_BYTES_MAX: usize = 1024;

/// What one try of one batch came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// 200: every event is durable at central.
    Stored(BatchAccepted),
    /// 408, 429, 5xx, timeout, connection or TLS failure, or an answer we do not understand: try
    /// the same batch again later.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// 401 or 403: stop, alarm, keep everything, retry slowly.
    Auth { reason: String },
    /// 413: split.
    TooLarge { reason: String },
    /// 400 or 422: isolate the offender. `event_index` is central's hint, if it gave one.
    Rejected {
        reason: String,
        event_index: Option<usize>,
    },
}

pub(crate) async fn post(
    client: &reqwest::Client,
    url: &reqwest::Url,
    token: &str,
    body: Vec<u8>,
) -> Outcome {
    let sent = client
        .post(url.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(error) => {
            return Outcome::Transient {
                reason: format!("sending the batch: {}", crate::error::chain(&error)),
                retry_after: None,
            };
        }
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            parse_retry_after(
                v,
                SystemTime::now(),
                Duration::from_millis(UPLINK_RETRY_AFTER_MS_MAX),
            )
        });
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(error) => {
            // Central may have stored the batch; the retry is deduplicated there.
            return Outcome::Transient {
                reason: format!(
                    "reading the answer to HTTP {status}: {}",
                    crate::error::chain(&error)
                ),
                retry_after,
            };
        }
    };
    classify(status, &body, retry_after)
}

pub(crate) fn classify(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> Outcome {
    let reason = || {
        let text = String::from_utf8_lossy(body);
        let mut cut = text.len().min(UPLINK_REASON_BYTES_MAX);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("HTTP {}: {}", status.as_u16(), &text[..cut])
    };
    match status.as_u16() {
        200 => match serde_json::from_slice::<BatchAccepted>(body) {
            Ok(accepted) => Outcome::Stored(accepted),
            Err(_) => Outcome::Transient {
                reason: format!("{}: not the documented 200 body", reason()),
                retry_after,
            },
        },
        401 | 403 => Outcome::Auth { reason: reason() },
        413 => Outcome::TooLarge { reason: reason() },
        400 | 422 => Outcome::Rejected {
            reason: reason(),
            event_index: serde_json::from_slice::<RejectBody>(body)
                .ok()
                .and_then(|b| b.event_index),
        },
        // 408, 429, 5xx are transient by contract. Anything else (a 404 from a wrong URL, a 3xx from
        // a proxy) is a configuration problem: retrying keeps every event until it is fixed, while
        // treating it as a rejection would park the whole spool.
        _ => Outcome::Transient {
            reason: reason(),
            retry_after,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_table() {
        let ok = classify(StatusCode::OK, br#"{"accepted":2,"duplicates":1}"#, None);
        assert_eq!(
            ok,
            Outcome::Stored(BatchAccepted {
                accepted: 2,
                duplicates: 1
            })
        );
        for transient in [408, 429, 500, 502, 503, 504, 404] {
            let status = StatusCode::from_u16(transient).unwrap();
            assert!(
                matches!(classify(status, b"", None), Outcome::Transient { .. }),
                "{transient}"
            );
        }
        for auth in [401, 403] {
            let status = StatusCode::from_u16(auth).unwrap();
            assert!(matches!(classify(status, b"", None), Outcome::Auth { .. }));
        }
        assert!(matches!(
            classify(StatusCode::PAYLOAD_TOO_LARGE, b"", None),
            Outcome::TooLarge { .. }
        ));
        let rejected = classify(
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"error":"must be a UUID","event_index":3,"field":"events[3].event_id"}"#,
            None,
        );
        match rejected {
            Outcome::Rejected {
                reason,
                event_index,
            } => {
                assert_eq!(event_index, Some(3));
                assert!(reason.starts_with("HTTP 422: ") && reason.contains("events[3].event_id"));
            }
            other => panic!("{other:?}"),
        }
        // Another central's 200 may leave out duplicates, or add fields.
        assert_eq!(
            classify(StatusCode::OK, br#"{"accepted":3,"batch_id":"x"}"#, None),
            Outcome::Stored(BatchAccepted {
                accepted: 3,
                duplicates: 0
            })
        );
        // A 200 whose body is not the contract's is not trusted as stored.
        assert!(matches!(
            classify(StatusCode::OK, b"ok", None),
            Outcome::Transient { .. }
        ));
    }

    #[test]
    fn reasons_are_bounded() {
        let body = "é".repeat(UPLINK_REASON_BYTES_MAX);
        match classify(StatusCode::BAD_REQUEST, body.as_bytes(), None) {
            Outcome::Rejected { reason, .. } => {
                assert!(reason.len() <= UPLINK_REASON_BYTES_MAX + 16)
            }
            other => panic!("{other:?}"),
        }
    }
}
