//! The module's clock: Envoy's ABI gives none, so the system's, read where it is needed
//! (a dynamic module runs in Envoy's process and may).

use keygate_core::timestamp::Timestamp;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (the core's protocols count in these).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The instant a key's `expires_at` is checked against (read only for a key with one).
pub fn request_time() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

/// A number that differs from call to call (and, by `salt`, from caller to caller), to
/// spread retries.
pub fn jitter(salt: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    (nanos ^ salt.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11
}
