use super::*;
use serde_json::{json, Value};

fn config(value: Value) -> Result<UsageConfig, Vec<String>> {
    let doc: UsageDoc = crate::json::from_value(value).map_err(|e| vec![e.to_string()])?;
    let mut errors = Vec::new();
    doc.check(&mut errors)
        .ok_or_else(|| errors.iter().map(ToString::to_string).collect())
}

fn hash(i: usize) -> KeyHash {
    KeyHash::of_key(&format!("key-{i}"))
}

// 2026-11-30T10:00:00Z
const T0: u64 = 1_796_032_800_000;

#[test]
fn config_defaults_and_fields() {
    let c = config(json!({"cluster": "keyservice"})).unwrap();
    assert_eq!(&*c.endpoint.cluster, "keyservice");
    assert_eq!(&*c.endpoint.authority, "keyservice");
    assert_eq!(&*c.path, "/v1/usage");
    assert_eq!(c.report_seconds, 60);
    assert_eq!(c.endpoint.timeout_ms, 2000);
    let c = config(
        json!({"cluster": "ks", "path": "/usage", "authority": "keys.internal:8081",
        "report_seconds": 5, "timeout_ms": 300}),
    )
    .unwrap();
    assert_eq!(
        (&*c.path, &*c.endpoint.authority, c.report_seconds),
        ("/usage", "keys.internal:8081", 5)
    );
    assert_eq!(c.endpoint.timeout_ms, 300);
}

#[test]
fn config_problems_are_all_named() {
    let errors = config(
        json!({"cluster": "a b", "path": "usage", "authority": "x y",
        "report_seconds": 0, "timeout_ms": 0}),
    )
    .unwrap_err();
    let fields = crate::error::fields_at_fault(&errors);
    assert_eq!(
        fields,
        [
            "usage.cluster",
            "usage.authority",
            "usage.timeout_ms",
            "usage.path",
            "usage.report_seconds"
        ]
    );
    let errors = config(json!({"cluster": "k", "report_seconds": 3601})).unwrap_err();
    assert_eq!(
        errors,
        ["usage.report_seconds: 3601 is out of range (1 to 3600)"]
    );
    assert!(config(json!({"cluster": "k", "report_seconds": 3600})).is_ok());
    assert!(config(json!({"cluster": "k", "every": 3})).unwrap_err()[0]
        .contains("unknown field `every`"));
}

#[test]
fn tally_merges_counts_and_keeps_the_latest_time() {
    let mut tally = Tally::default();
    assert!(tally.is_empty());
    assert_eq!(tally.record(&hash(1), T0 + 500), Recorded::Counted);
    assert_eq!(tally.record(&hash(1), T0 + 1500), Recorded::Counted);
    // The VM's clock never goes back, but a later use never makes the time earlier.
    assert_eq!(tally.record(&hash(1), T0), Recorded::Counted);
    assert_eq!(tally.record(&hash(2), T0), Recorded::Counted);
    assert_eq!(tally.len(), 2);
    let reports = tally.drain();
    assert!(tally.is_empty());
    assert_eq!(reports.len(), 1);
    let mut entries = reports[0].entries.clone();
    entries.sort_by_key(|e| e.count);
    assert_eq!(
        entries,
        [
            UsageEntry {
                hash: hash(2),
                count: 1,
                last_used: Timestamp::from_unix_nanos(i128::from(T0) * 1_000_000),
            },
            UsageEntry {
                hash: hash(1),
                count: 3,
                last_used: Timestamp::from_unix_nanos(i128::from(T0 + 1500) * 1_000_000),
            }
        ]
    );
    assert!(tally.drain().is_empty(), "nothing twice");
}

#[test]
fn a_full_tally_drops_new_keys_and_counts_known_ones() {
    let mut tally = Tally::with_capacity(3);
    for i in 0..3 {
        assert_eq!(tally.record(&hash(i), T0), Recorded::Counted);
    }
    assert_eq!(tally.record(&hash(3), T0), Recorded::Dropped);
    assert_eq!(tally.record(&hash(0), T0 + 1), Recorded::Counted);
    assert_eq!(tally.len(), 3);
    let counted: u64 = tally.drain()[0].entries.iter().map(|e| e.count).sum();
    assert_eq!(counted, 4);
    // A report makes room again.
    assert_eq!(tally.record(&hash(3), T0 + 2), Recorded::Counted);
}

#[test]
fn the_default_bound() {
    let mut tally = Tally::default();
    for i in 0..MAX_KEYS_PER_VM {
        assert_eq!(tally.record(&hash(i), T0), Recorded::Counted);
    }
    assert_eq!(tally.record(&hash(MAX_KEYS_PER_VM), T0), Recorded::Dropped);
    assert_eq!(tally.len(), MAX_KEYS_PER_VM);
}

#[test]
fn drain_splits_into_reports_of_at_most_ten_thousand() {
    let mut tally = Tally::with_capacity(25_000);
    for i in 0..25_000 {
        tally.record(&hash(i), T0);
    }
    let reports = tally.drain();
    let sizes: Vec<usize> = reports.iter().map(|r| r.entries.len()).collect();
    assert_eq!(sizes, [10_000, 10_000, 5_000]);
    let mut seen: Vec<KeyHash> = reports
        .iter()
        .flat_map(|r| r.entries.iter().map(|e| e.hash))
        .collect();
    seen.sort_by_key(|h| *h.bytes());
    seen.dedup();
    assert_eq!(seen.len(), 25_000);
    // Each one is a document the key service takes.
    for report in &reports {
        assert_eq!(
            &UsageReport::parse(report.to_json().as_bytes()).unwrap(),
            report
        );
    }
}

#[test]
fn json_shape() {
    let report = UsageReport {
        entries: vec![UsageEntry {
            hash: hash(1),
            count: 7,
            last_used: Timestamp::from_unix_nanos(i128::from(T0 + 42) * 1_000_000 + 999),
        }],
    };
    let value: Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(
        value,
        json!({"reports": [{"hash": hash(1).to_hex(), "count": 7,
            "last_used_at": "2026-11-30T10:00:00.042Z"}]})
    );
    assert_eq!(UsageReport::default().to_json(), "{\"reports\":[]}");
}

#[test]
fn times_are_utc_to_the_millisecond() {
    let at = |text: &str| rfc3339_millis(Timestamp::parse_rfc3339(text).unwrap());
    assert_eq!(at("2026-11-30T10:00:00Z"), "2026-11-30T10:00:00.000Z");
    assert_eq!(
        at("2026-11-30T12:00:00.123999+02:00"),
        "2026-11-30T10:00:00.123Z"
    );
    assert_eq!(at("1969-12-31T23:59:59.9995Z"), "1969-12-31T23:59:59.999Z");
    assert_eq!(
        rfc3339_millis(Timestamp::from_unix_nanos(i128::MAX)),
        "9999-12-31T23:59:59.999Z"
    );
}

/// Written as the `time` crate wrote it, over its whole range and past it.
#[test]
fn rfc3339_millis_writes_as_the_time_crate_wrote() {
    let theirs = |nanos: i128| {
        let nanos = nanos - nanos.rem_euclid(1_000_000);
        match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(at) => format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                at.year(),
                u8::from(at.month()),
                at.day(),
                at.hour(),
                at.minute(),
                at.second(),
                at.millisecond()
            ),
            Err(_) => "9999-12-31T23:59:59.999Z".to_string(),
        }
    };
    let second: i128 = 1_000_000_000;
    let mut nanos: Vec<i128> = vec![0, -1, 1, i128::MIN + second, i128::MAX, -999_999, 999_999];
    for limit in [253_402_300_799, -377_705_116_800] {
        for d in -2..=2 {
            nanos.push((limit + d) * second);
            nanos.push((limit + d) * second + 999_999_999);
        }
    }
    let mut x: i128 = 12_345;
    for _ in 0..20_000 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407)
            & ((1 << 100) - 1);
        nanos.push(x % (700_000_000_000 * second) - 350_000_000_000 * second);
    }
    for n in nanos {
        assert_eq!(
            rfc3339_millis(Timestamp::from_unix_nanos(n)),
            theirs(n),
            "{n}"
        );
    }
}

#[test]
fn parse_names_every_problem() {
    let h = hash(1).to_hex();
    let ok = UsageReport::parse(
        json!({"reports": [{"hash": h, "count": 2, "last_used_at": "2026-11-30T10:00:00+01:00"},
            {"hash": h, "count": 1, "last_used_at": "2026-11-30T10:00:00.5Z"}]})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        ok.entries.len(),
        2,
        "the same hash twice is merged by the store"
    );
    let problems = |value: Value| -> Vec<String> {
        UsageReport::parse(value.to_string().as_bytes())
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    let first = |value: Value| problems(value).remove(0);
    assert!(first(json!({"reports": [{"hash": "ABC", "count": 1,
        "last_used_at": "2026-11-30T10:00:00Z"}]}))
    .starts_with("reports[0].hash: not a SHA-256 hash"));
    assert!(first(json!({"reports": [{"hash": h, "count": -1,
        "last_used_at": "2026-11-30T10:00:00Z"}]}))
    .starts_with("reports[0].count: invalid value"));
    assert!(first(json!({"reports": [{"hash": h, "count": 1,
        "last_used_at": "yesterday"}]}))
    .starts_with("reports[0].last_used_at: invalid RFC 3339"));
    assert!(first(json!({"reports": [{"hash": h, "count": 1}]}))
        .starts_with("reports[0]: missing field `last_used_at`"));
    assert!(first(json!({"reports": [{"hash": h, "count": 1,
        "last_used_at": "2026-11-30T10:00:00Z", "key": "secret"}]}))
    .starts_with("reports[0].key: unknown field `key`"));
    assert!(first(json!({"report": []})).contains("unknown field `report`"));
    assert_eq!(
        problems(json!({"reports": [
            {"hash": h, "count": 0, "last_used_at": "2026-11-30T10:00:00Z"},
            {"hash": h, "count": 1, "last_used_at": "2026-11-30T10:00:00Z"},
            {"hash": h, "count": 0, "last_used_at": "2026-11-30T10:00:00Z"}]})),
        [
            "reports[0].count: must be at least 1",
            "reports[2].count: must be at least 1"
        ]
    );
    let entry = json!({"hash": h, "count": 1, "last_used_at": "2026-11-30T10:00:00Z"});
    let too_many = json!({"reports": vec![entry; MAX_REPORT_ENTRIES + 1]});
    assert_eq!(
        problems(too_many),
        ["reports: holds 10001 entries; at most 10000"]
    );
    assert!(UsageReport::parse(b"{\"reports\": []} x").is_err());
}

/// A host that records what the reporter asks of it.
#[derive(Default)]
struct Host {
    bodies: Vec<Value>,
    next_token: u32,
    refuse: bool,
    sent: usize,
    failed: Vec<String>,
}

impl ReportHost for Host {
    fn dispatch(&mut self, body: &[u8]) -> Result<u32, String> {
        if self.refuse {
            return Err("no such cluster".into());
        }
        self.bodies.push(serde_json::from_slice(body).unwrap());
        self.next_token += 1;
        Ok(self.next_token)
    }
    fn sent(&mut self) {
        self.sent += 1;
    }
    fn failed(&mut self, reason: &str) {
        self.failed.push(reason.to_string());
    }
}

fn reporter(seconds: u32) -> Reporter {
    Reporter::new(&config(json!({"cluster": "ks", "report_seconds": seconds})).unwrap())
}

#[test]
fn reports_every_period_and_only_what_was_counted() {
    let mut r = reporter(2);
    let mut host = Host::default();
    r.tick(&mut host, T0);
    assert_eq!(r.record(&hash(1), T0 + 100), Recorded::Counted);
    r.record(&hash(1), T0 + 600);
    r.tick(&mut host, T0 + 1999);
    assert!(host.bodies.is_empty(), "not before the period");
    assert_eq!(r.pending_keys(), 1);
    r.tick(&mut host, T0 + 2000);
    assert_eq!(
        host.bodies,
        [json!({"reports": [{"hash": hash(1).to_hex(), "count": 2,
            "last_used_at": "2026-11-30T10:00:00.600Z"}]})]
    );
    assert_eq!(r.pending_keys(), 0);
    assert!(r.is_report(1) && !r.is_report(2));
    assert!(r.answered(&mut host, 1, Some("204")));
    assert!(!r.answered(&mut host, 1, Some("204")), "answered once");
    assert!(!r.answered(&mut host, 7, Some("200")), "not a report");
    assert_eq!(host.sent, 1);
    // Nothing counted: nothing sent.
    r.tick(&mut host, T0 + 4000);
    assert_eq!(host.bodies.len(), 1);
}

#[test]
fn failed_reports_are_dropped_and_named_without_keys() {
    let mut r = reporter(1);
    let mut host = Host::default();
    r.tick(&mut host, T0);
    r.record(&hash(1), T0);
    r.tick(&mut host, T0 + 1000);
    r.record(&hash(2), T0 + 1000);
    r.tick(&mut host, T0 + 2000);
    assert!(r.answered(&mut host, 1, Some("500")));
    assert!(r.answered(&mut host, 2, None));
    host.refuse = true;
    r.record(&hash(3), T0 + 2000);
    r.tick(&mut host, T0 + 3000);
    assert_eq!(r.pending_keys(), 0, "a failed report is not kept");
    assert_eq!(host.sent, 0);
    assert_eq!(host.failed.len(), 3, "{:?}", host.failed);
    assert!(host.failed[0].contains("answered 500"));
    assert!(host.failed[1].contains("no answer"));
    assert!(host.failed[2].contains("no such cluster"));
    for line in &host.failed {
        for i in 1..=3 {
            assert!(!line.contains(&hash(i).to_hex()));
        }
    }
}

#[test]
fn unanswered_reports_are_bounded() {
    let mut r = reporter(1);
    let mut host = Host::default();
    r.tick(&mut host, T0);
    for i in 0..MAX_REPORTS_IN_FLIGHT + 2 {
        let now = T0 + 1000 * (i as u64 + 1);
        r.record(&hash(i), now);
        r.tick(&mut host, now);
    }
    assert_eq!(host.bodies.len(), MAX_REPORTS_IN_FLIGHT);
    assert_eq!(host.failed.len(), 2);
    assert!(host.failed[0].contains("still unanswered"));
    // An answer makes room.
    r.answered(&mut host, 1, Some("204"));
    r.record(&hash(99), T0 + 99_000);
    r.tick(&mut host, T0 + 99_000);
    assert_eq!(host.bodies.len(), MAX_REPORTS_IN_FLIGHT + 1);
}
