//! Who may do what. Reading is open on the LAN; a race command needs the staff token, and changes to
//! the track (lines, decoders) the technician's.
//!
//! Tokens are configured as the hex SHA-256 of the token (`echo -n TOKEN | sha256sum`), so the config
//! file never holds one. A client sends `Authorization: Bearer <token>`: a header a browser never
//! adds by itself, so another site cannot make a visitor's browser send a command (no cookies, no
//! CSRF). Wrong tokens are counted per address: past [`AUTH_FAILURES_PER_MINUTE_MAX`] in a minute
//! that address gets 429 until the minute is over, right token or not. The technician's actions
//! are limited as well, to [`ACTIONS_PER_MINUTE_MAX`] a minute whatever the token.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

/// Wrong tokens one address may send per minute before it is refused for the rest of the minute.
/// A person mistyping gets several tries; a script guessing gets ten a minute.
pub const AUTH_FAILURES_PER_MINUTE_MAX: u32 = 10;

/// Addresses whose failures are remembered at once; past it the oldest windows are forgotten first
/// (a flood from many addresses cannot grow the table without bound).
pub const AUTH_ADDRESSES_MAX: usize = 4_096;

const WINDOW: Duration = Duration::from_secs(60);

/// A role a token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Race control: sessions, starts, gate drops, decisions.
    Staff,
    /// The track and the decoders; may do what staff does too.
    Technician,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Staff => "staff",
            Role::Technician => "technician",
        }
    }
}

/// The SHA-256 of each role's token, from the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    pub staff_sha256: Option<[u8; 32]>,
    pub technician_sha256: Option<[u8; 32]>,
}

impl Tokens {
    /// Reads a hex SHA-256 (64 hex digits).
    pub fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
        let hex = hex.trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(out)
    }

    /// The hex SHA-256 of a token, as the configuration holds it.
    pub fn sha256_hex(token: &str) -> String {
        sha256(token).iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The role a token grants, if any; compared in constant time.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        let hash = sha256(token);
        let is = |want: &Option<[u8; 32]>| want.is_some_and(|w| same(&w, &hash));
        // Both are compared whatever the first gave, so the time says nothing about which matched.
        let (technician, staff) = (is(&self.technician_sha256), is(&self.staff_sha256));
        if technician {
            Some(Role::Technician)
        } else if staff {
            Some(Role::Staff)
        } else {
            None
        }
    }
}

fn sha256(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a request was not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No bearer token: 401.
    Missing,
    /// A token that grants nothing, or not this: 401 / 403.
    Wrong,
    /// The token is good but its role may not do this: 403.
    Forbidden(Role),
    /// Too many wrong tokens from this address: 429.
    Limited { retry_after_s: u64 },
}

/// Wrong-token windows per address.
#[derive(Debug, Default)]
pub struct Limiter {
    windows: Mutex<HashMap<Option<IpAddr>, (Instant, u32)>>,
}

impl Limiter {
    /// The role of the request's bearer token, which must be at least `needed`.
    pub fn check(
        &self,
        tokens: &Tokens,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        needed: Role,
    ) -> Result<Role, Refusal> {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((start, failures)) = windows.get(&peer)
            && now.duration_since(*start) < WINDOW
            && *failures >= AUTH_FAILURES_PER_MINUTE_MAX
        {
            let left = WINDOW.saturating_sub(now.duration_since(*start));
            return Err(Refusal::Limited {
                retry_after_s: left.as_secs().max(1),
            });
        }
        let token = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(token) = token else {
            return Err(Refusal::Missing);
        };
        match tokens.role_of(token) {
            Some(role) if role >= needed => Ok(role),
            Some(role) => Err(Refusal::Forbidden(role)),
            None => {
                if windows.len() >= AUTH_ADDRESSES_MAX && !windows.contains_key(&peer) {
                    windows.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
                    if windows.len() >= AUTH_ADDRESSES_MAX {
                        windows.clear();
                    }
                }
                let entry = windows.entry(peer).or_insert((now, 0));
                if now.duration_since(entry.0) >= WINDOW {
                    *entry = (now, 0);
                }
                entry.1 += 1;
                Err(Refusal::Wrong)
            }
        }
    }
}

/// Technician's actions the box takes per minute, from all addresses together. Each reconnects a
/// decoder, asks it to resend or wakes the uplink: a person needs a few; a script in a loop would
/// keep a decoder from ever staying connected.
pub const ACTIONS_PER_MINUTE_MAX: u32 = 20;

/// A fixed one-minute window over the technician's actions.
#[derive(Debug, Default)]
pub struct ActionLimiter {
    window: Mutex<Option<(Instant, u32)>>,
}

impl ActionLimiter {
    /// Counts one action; past [`ACTIONS_PER_MINUTE_MAX`] in the window, the seconds to wait.
    pub fn take(&self) -> Result<(), u64> {
        let now = Instant::now();
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let (start, count) = match *window {
            Some((start, count)) if now.duration_since(start) < WINDOW => (start, count),
            _ => (now, 0),
        };
        if count >= ACTIONS_PER_MINUTE_MAX {
            let left = WINDOW.saturating_sub(now.duration_since(start));
            return Err(left.as_secs().max(1));
        }
        *window = Some((start, count + 1));
        Ok(())
    }
}
