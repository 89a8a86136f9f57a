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
    /// 400 or 422: isolate the offender. `event_index` is central's hint, if it gave one (see
    /// [`offender_hint`]); the drain checks it before it parks anything.
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
            event_index: offender_hint(body),
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

/// The event a 400/422 names, in the forms centrals use: our JSON `event_index`, a field path such
/// as `events[3].transponder` (in a JSON `field`, or anywhere in the body), or a plain-text body
/// that says `events[3]`. `None` when the answer names no event: the drain then halves the batch.
/// Only a hint: it may be out of range or wrong, and the drain treats it so.
pub(crate) fn offender_hint(body: &[u8]) -> Option<usize> {
    if let Ok(reject) = serde_json::from_slice::<RejectBody>(body) {
        if let Some(index) = reject.event_index {
            return Some(index);
        }
        if let Some(index) = reject.field.as_deref().and_then(events_index) {
            return Some(index);
        }
    }
    events_index(&String::from_utf8_lossy(body))
}

/// The first `events[N]` in `text`, with N a decimal number that fits a `usize`.
fn events_index(text: &str) -> Option<usize> {
    const OPEN: &str = "events[";
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        rest = &rest[at + OPEN.len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0
            && rest.as_bytes().get(digits) == Some(&b']')
            && let Ok(index) = rest[..digits].parse()
        {
            return Some(index);
        }
    }
    None
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
    fn hints_in_every_form_a_central_gives_them() {
        let hint = |body: &str| offender_hint(body.as_bytes());
        assert_eq!(
            hint(r#"{"error":"x","event_index":4,"field":"events[9].a"}"#),
            Some(4)
        );
        assert_eq!(
            hint(r#"{"error":"bad","field":"events[3].transponder"}"#),
            Some(3)
        );
        assert_eq!(
            hint("events[17]: unsupported message_type \"NODE.STARTED\""),
            Some(17)
        );
        assert_eq!(hint("invalid value at events[2].payload.flags"), Some(2));
        // Nothing that names an event: no hint, the drain halves.
        assert_eq!(
            hint(r#"{"error":"bad contract_version","field":"contract_version"}"#),
            None
        );
        assert_eq!(hint("events[] events[x] events[-1] events[3"), None);
        assert_eq!(hint("events[99999999999999999999999]"), None);
        assert_eq!(hint(""), None);
        // The first well-formed index counts.
        assert_eq!(hint("events[] then events[5] and events[6]"), Some(5));
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
