//! Key states: unknown, expired, disabled; the clock.

use super::*;

#[test]
fn unknown_key_is_refused() {
    let c = config();
    let h = with_bearer("GET", "/data/query", UNKNOWN);
    let d = denied(decide(&c, &h, no_clock));
    assert_eq!(d, Denial::UnknownKey);
    assert_eq!(d.key(), None);
}

#[test]
fn key_hash_lookup_is_exact_and_case_sensitive() {
    let c = config();
    for near in [
        ALICE.to_uppercase(),
        format!("{ALICE}x"),
        ALICE[..ALICE.len() - 1].to_string(),
        hash(ALICE), // presenting the stored hash is not presenting the key
    ] {
        let h = with_bearer("GET", "/data/query", &near);
        assert_eq!(denied(run(&c, &h)), Denial::UnknownKey, "{near}");
    }
}

/// On a protected route and on a public one alike (a former test of the public routes).
#[test]
fn key_expired_before_now_is_expired() {
    let c = config();
    for path in ["/data/query", "/healthz"] {
        let d = denied(run(&c, &with_bearer("GET", path, EXPIRED)));
        assert!(matches!(d, Denial::Expired(_)), "{path}: {d:?}");
        assert_key_denial(&d, "id-expired", Outcome::Expired);
    }
}

/// A key with an expiry, at an instant, is valid before it and expired from it on: at the
/// instant named, to the nanosecond, in UTC whatever the offsets (three former tests).
#[test]
fn key_expires_at_the_instant_it_names() {
    let c = config();
    for (key, id, now, valid) in [
        (FUTURE, "id-future", "2030-01-01T00:00:00Z", false),
        (FUTURE, "id-future", "2029-12-31T23:59:59.999999999Z", true),
        (FUTURE, "id-future", "2030-01-01T00:00:00.000000001Z", false),
        (NANOS, "id-nanos", "2026-05-21T20:55:24.654328037Z", true),
        (NANOS, "id-nanos", "2026-05-21T20:55:24.654328038Z", false),
        // A `now` with coarser precision, same instant.
        (NANOS, "id-nanos", "2026-05-21T20:55:25Z", false),
        // expires_at "2026-06-01T02:00:00+02:00" is 2026-06-01T00:00:00Z.
        (OFFSET, "id-offset", "2026-05-31T23:59:59.999999999Z", true),
        (OFFSET, "id-offset", "2026-06-01T00:00:00Z", false),
        // 01:30 at +02:00 is still before the expiry; 03:00 at +02:00 is after.
        (OFFSET, "id-offset", "2026-06-01T01:30:00+02:00", true),
        (OFFSET, "id-offset", "2026-06-01T03:00:00+02:00", false),
        // A negative offset: 2026-05-31T20:00:00-04:00 is exactly the expiry.
        (OFFSET, "id-offset", "2026-05-31T20:00:00-04:00", false),
    ] {
        let h = with_bearer("GET", "/data/query", key);
        match decide(&c, &h, || at(now)) {
            Verdict::Allow(a) => assert!(valid && key_id(&a).as_deref() == Some(id), "{id} {now}"),
            Verdict::Deny(d) => assert!(
                !valid && matches!(d, Denial::Expired(_)),
                "{id} {now}: {d:?}"
            ),
        }
    }
}

/// On a protected route and on a public one alike, from any source (the latter a former
/// test of the public routes).
#[test]
fn disabled_key_is_disabled() {
    let c = config();
    for h in [
        with_bearer("GET", "/data/query", DISABLED),
        request("GET", "/healthz", &[("x-api-key", DISABLED)]),
    ] {
        let d = denied(decide(&c, &h, no_clock));
        assert!(matches!(d, Denial::Disabled(_)), "{h:?}: {d:?}");
        assert_key_denial(&d, "id-disabled", Outcome::Disabled);
    }
}

#[test]
fn disabled_wins_over_expired() {
    let c = config();
    let h = with_bearer("GET", "/data/query", DISABLED_EXPIRED);
    // Long after the expiry, and before it: always Disabled.
    for when in ["2026-01-15T12:00:00Z", "2010-01-01T00:00:00Z"] {
        let d = denied(decide(&c, &h, || at(when)));
        assert!(matches!(d, Denial::Disabled(_)), "{when}: {d:?}");
    }
}

#[test]
fn key_state_is_checked_before_scopes_and_read_only() {
    let c = config();
    // The expired key lacks `admin` too; the answer is about the expiry.
    let h = with_bearer("GET", "/admin/keys", EXPIRED);
    assert!(matches!(denied(run(&c, &h)), Denial::Expired(_)));
    let h = with_bearer("POST", "/data/query", DISABLED);
    assert!(matches!(denied(run(&c, &h)), Denial::Disabled(_)));
}

#[test]
fn clock_is_not_read_for_keys_without_expiry() {
    let c = config();
    let cases = [
        with_bearer("GET", "/data/query", ALICE),
        with_bearer("GET", "/healthz", ALICE),
        with_bearer("POST", "/data/upload", ALICE),
        with_bearer("POST", "/data/download", READONLY),
        with_bearer("GET", "/other", ADMIN),
        with_bearer("GET", "/data/query", UNKNOWN),
        with_bearer("GET", "/data/query", DISABLED),
        request("GET", "/data/query", &[]),
        request("GET", "/healthz", &[]),
        request("GET", "/data/%2F", &[]),
    ];
    for h in cases {
        // Any verdict will do; reading the clock panics.
        let _ = decide(&c, &h, no_clock);
    }
}

#[test]
fn clock_is_read_once_for_a_key_with_expiry() {
    let c = config();
    let h = with_bearer("GET", "/data/query", FUTURE);
    let calls = Cell::new(0);
    let a = allowed(decide(&c, &h, || {
        calls.set(calls.get() + 1);
        now()
    }));
    assert_eq!(key_id(&a).as_deref(), Some("id-future"));
    assert_eq!(calls.get(), 1);
}
