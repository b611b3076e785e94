//! The change feed's answers and the watch's steps, with the clock set by the test.

use super::*;
use crate::lookup_cache::{Answer, LookupCache, Probe};
use serde_json::json;

fn config(wait_seconds: u32) -> WatchConfig {
    WatchConfig {
        changes_path: "/v1/changes".into(),
        wait_seconds,
    }
}

fn body(version: u64, epoch: &str, keys: &[&str]) -> Vec<u8> {
    let hashes: Vec<String> = keys.iter().map(|k| KeyHash::of_key(k).to_hex()).collect();
    json!({"version": version.to_string(), "epoch": epoch, "hashes": hashes})
        .to_string()
        .into_bytes()
}

fn hashes(keys: &[&str]) -> Vec<KeyHash> {
    keys.iter().map(|k| KeyHash::of_key(k)).collect()
}

/// Makes the due call (it must be due) with token `token`; its path.
fn send(watch: &mut Watch, token: u32, now: u64) -> Call {
    let call = watch.due(now).expect("a call is due");
    watch.sent(token, &call, now);
    call
}

fn answer(watch: &mut Watch, token: u32, status: &str, body: &[u8], now: u64) -> Step {
    watch
        .answered(token, Some(status), Some(body), now, 0)
        .expect("the watch's call")
}

/// A watch that has its baseline: version 7 of epoch "e1", at time 100.
fn following() -> Watch {
    let mut watch = Watch::new(&config(25));
    send(&mut watch, 1, 0);
    answer(&mut watch, 1, "200", &body(7, "e1", &[]), 100);
    watch
}

#[test]
fn reads_the_feeds_answers() {
    let ok = read_changes(Some("200"), Some(&body(42, "a1-B.~_", &["k"]))).unwrap();
    assert_eq!(
        ok,
        FeedAnswer::Changed(Changes {
            version: 42,
            epoch: Epoch::parse("a1-B.~_").unwrap(),
            hashes: hashes(&["k"])
        })
    );
    let number = json!({"version": 3, "epoch": "e", "hashes": [], "since": "2"}).to_string();
    assert!(matches!(
        read_changes(Some("200"), Some(number.as_bytes())),
        Ok(FeedAnswer::Changed(Changes { version: 3, .. }))
    ));
    assert_eq!(
        read_changes(Some("304"), Some(b"")),
        Ok(FeedAnswer::NotModified)
    );
    assert_eq!(read_changes(Some("410"), Some(b"")), Ok(FeedAnswer::Gone));
    assert_eq!(
        read_changes(Some("200"), None),
        Ok(FeedAnswer::Gone),
        "too large to read"
    );
    assert!(read_changes(Some("404"), Some(b""))
        .unwrap_err()
        .contains("no change feed"));
    assert!(read_changes(Some("503"), Some(b""))
        .unwrap_err()
        .contains("503"));
    assert!(read_changes(None, Some(b""))
        .unwrap_err()
        .contains("timeout"));
}

#[test]
fn hostile_answers_are_refused() {
    let h = KeyHash::of_key("k").to_hex();
    let bad = [
        json!({"version": "-1", "epoch": "e", "hashes": []}),
        json!({"version": "1.5", "epoch": "e", "hashes": []}),
        json!({"version": "", "epoch": "e", "hashes": []}),
        json!({"version": "99999999999999999999", "epoch": "e", "hashes": []}),
        json!({"version": -1, "epoch": "e", "hashes": []}),
        json!({"version": "1", "epoch": "", "hashes": []}),
        json!({"version": "1", "epoch": "a&since=0", "hashes": []}),
        json!({"version": "1", "epoch": "e".repeat(65), "hashes": []}),
        json!({"version": "1", "epoch": "e", "hashes": [h.to_uppercase()]}),
        json!({"version": "1", "epoch": "e", "hashes": ["kg_a_raw_key"]}),
        json!({"version": "1", "epoch": "e"}),
        json!({"epoch": "e", "hashes": []}),
        json!([1, 2]),
    ];
    for doc in bad {
        let text = doc.to_string();
        assert!(
            read_changes(Some("200"), Some(text.as_bytes())).is_err(),
            "accepted {text}"
        );
    }
    assert!(read_changes(Some("200"), Some(b"\xff\xfe")).is_err());
    assert!(read_changes(
        Some("200"),
        Some(b"{\"version\": \"1\", \"epoch\": \"e\", \"hashes\": [")
    )
    .is_err());
}

#[test]
fn first_call_learns_the_version_and_forgets_everything() {
    let mut watch = Watch::new(&config(25));
    let call = send(&mut watch, 1, 0);
    assert_eq!(call.path, "/v1/changes?wait=0");
    assert_eq!(watch.due(10), None, "one call at a time");
    let step = answer(&mut watch, 1, "200", &body(7, "e1", &["ignored"]), 50);
    assert_eq!(step.forget, Forget::All);
    assert_eq!(
        step.outcome,
        Outcome::Changed {
            version: 7,
            keys: 0,
            baseline: true
        }
    );
    assert_eq!(watch.position(), Some((7, "e1")));
    // The long-poll follows at once, with a timeout past its wait.
    let call = watch.due(50).unwrap();
    assert_eq!(call.path, "/v1/changes?since=7&epoch=e1&wait=25");
    assert_eq!(call.timeout_ms, 25_000 + TIMEOUT_MARGIN_MS);
}

#[test]
fn changes_forget_their_keys_and_the_next_call_follows_at_once() {
    let mut watch = following();
    send(&mut watch, 2, 100);
    let step = answer(&mut watch, 2, "200", &body(9, "e1", &["a", "b"]), 3_000);
    assert_eq!(step.forget, Forget::Hashes(hashes(&["a", "b"])));
    assert_eq!(
        step.outcome,
        Outcome::Changed {
            version: 9,
            keys: 2,
            baseline: false
        }
    );
    assert_eq!(
        watch.due(3_000).unwrap().path,
        "/v1/changes?since=9&epoch=e1&wait=25"
    );
    // A change with nothing listed (a reload that changed no key this VM may hold).
    send(&mut watch, 3, 3_000);
    let step = answer(&mut watch, 3, "200", &body(10, "e1", &[]), 3_100);
    assert_eq!(step.forget, Forget::Nothing);
    assert!(watch.due(3_100).is_some());
}

#[test]
fn a_long_poll_that_times_out_is_made_again_at_once() {
    let mut watch = following();
    send(&mut watch, 2, 100);
    let step = answer(&mut watch, 2, "304", b"", 25_100);
    assert_eq!(step.forget, Forget::Nothing);
    assert_eq!(step.outcome, Outcome::NotModified);
    assert_eq!(
        watch.due(25_100).unwrap().path,
        "/v1/changes?since=7&epoch=e1&wait=25"
    );
}

#[test]
fn a_feed_that_does_not_hold_the_call_is_not_asked_in_a_loop() {
    let mut watch = following();
    send(&mut watch, 2, 1_000);
    answer(&mut watch, 2, "304", b"", 1_010);
    assert_eq!(watch.due(1_500), None);
    assert!(watch.due(2_000).is_some());
    // The same version again, at once: as quiet as a 304.
    send(&mut watch, 3, 2_000);
    answer(&mut watch, 3, "200", &body(7, "e1", &[]), 2_005);
    assert_eq!(watch.due(2_500), None);
    assert!(watch.due(3_000).is_some());
}

#[test]
fn another_epoch_or_an_older_version_is_a_new_baseline() {
    let mut watch = following();
    send(&mut watch, 2, 100);
    let step = answer(&mut watch, 2, "200", &body(3, "e2", &["a"]), 200);
    assert_eq!(step.forget, Forget::All);
    assert_eq!(watch.position(), Some((3, "e2")));
    send(&mut watch, 3, 200);
    let step = answer(&mut watch, 3, "200", &body(2, "e2", &[]), 300);
    assert_eq!(step.forget, Forget::All, "a version that went back");
    assert_eq!(watch.position(), Some((2, "e2")));
}

#[test]
fn gone_forgets_everything_and_starts_over() {
    let mut watch = following();
    send(&mut watch, 2, 100);
    let step = answer(&mut watch, 2, "410", b"", 200);
    assert_eq!((step.forget, step.outcome), (Forget::All, Outcome::Gone));
    assert_eq!(watch.position(), None);
    assert_eq!(watch.due(500), None, "no faster than once a second");
    assert_eq!(watch.due(1_100).unwrap().path, "/v1/changes?wait=0");
    // 410 or 304 to a first call is the service's fault: backed off, nothing forgotten.
    send(&mut watch, 3, 1_100);
    let step = answer(&mut watch, 3, "410", b"", 1_200);
    assert_eq!(step.forget, Forget::Nothing);
    assert!(matches!(step.outcome, Outcome::Failed { .. }));
}

#[test]
fn failures_back_off_and_keep_the_position() {
    let mut watch = following();
    let mut now = 100;
    let mut retries = Vec::new();
    for token in 2..10 {
        send(&mut watch, token, now);
        let step = answer(&mut watch, token, "404", b"", now);
        assert_eq!(step.forget, Forget::Nothing);
        let Outcome::Failed {
            retry_in_ms,
            reason,
        } = step.outcome
        else {
            panic!("{:?}", step.outcome)
        };
        assert!(reason.contains("404"));
        assert_eq!(watch.due(now + retry_in_ms - 1), None);
        retries.push(retry_in_ms);
        now += retry_in_ms;
    }
    assert_eq!(
        retries,
        [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000]
    );
    assert_eq!(watch.failures(), 8);
    // The version followed is kept: no change is skipped when the feed comes back.
    assert_eq!(
        watch.due(now).unwrap().path,
        "/v1/changes?since=7&epoch=e1&wait=25"
    );
    send(&mut watch, 20, now);
    answer(&mut watch, 20, "304", b"", now + 25_000);
    assert_eq!(watch.failures(), 0);
    // Jitter spreads the retries by up to a quarter.
    let step = watch.not_sent("no cluster".into(), now, 1_000_003);
    let Outcome::Failed { retry_in_ms, .. } = step.outcome else {
        panic!()
    };
    assert!((1_000..=1_250).contains(&retry_in_ms), "{retry_in_ms}");
}

#[test]
fn answers_to_other_calls_and_lost_calls() {
    let mut watch = following();
    assert_eq!(watch.answered(99, Some("200"), Some(b""), 100, 0), None);
    let call = send(&mut watch, 2, 100);
    assert_eq!(watch.overdue(100 + call.timeout_ms, 0), None);
    let step = watch
        .overdue(100 + call.timeout_ms + TIMEOUT_MARGIN_MS, 0)
        .unwrap();
    assert!(matches!(step.outcome, Outcome::Failed { .. }));
    assert!(!watch.is_call(2));
    assert_eq!(
        watch.answered(2, Some("304"), Some(b""), 40_000, 0),
        None,
        "too late"
    );
}

#[test]
fn a_changes_path_with_a_query_gets_more_parameters() {
    let mut watch = Watch::new(&WatchConfig {
        changes_path: "/changes?tenant=a".into(),
        wait_seconds: 5,
    });
    assert_eq!(watch.due(0).unwrap().path, "/changes?tenant=a&wait=0");
    send(&mut watch, 1, 0);
    answer(&mut watch, 1, "200", &body(1, "e", &[]), 0);
    assert_eq!(
        watch.due(0).unwrap().path,
        "/changes?tenant=a&since=1&epoch=e&wait=5"
    );
}

/// The argument of the module's documentation, played out: an answer obtained before the
/// baseline, or on its way when it arrives, is not kept.
#[test]
fn no_answer_from_before_the_baseline_survives_it() {
    let mut cache = LookupCache::new(60, 60, 100);
    let mut watch = Watch::new(&config(25));
    let (early, in_flight, late) = (
        KeyHash::of_key("early"),
        KeyHash::of_key("in flight"),
        KeyHash::of_key("late"),
    );
    // Answered before the watch's first call.
    cache.probe(&early, 1, 0);
    cache.resolve(&early, Some(Answer::Unknown), 0);
    send(&mut watch, 1, 10);
    assert_eq!(cache.probe(&in_flight, 2, 20), Probe::Ask);
    let forget = |cache: &mut LookupCache, step: Step| match step.forget {
        Forget::All => cache.forget_all(),
        Forget::Hashes(h) => cache.forget(&h),
        Forget::Nothing => {}
    };
    let step = answer(&mut watch, 1, "200", &body(5, "e", &[]), 30);
    forget(&mut cache, step);
    cache.resolve(&in_flight, Some(Answer::Unknown), 40);
    assert_eq!(cache.probe(&early, 3, 50), Probe::Ask);
    assert_eq!(cache.probe(&in_flight, 4, 50), Probe::Ask);
    // Asked after the baseline: kept until the feed reports the key.
    cache.probe(&late, 5, 60);
    cache.resolve(&late, Some(Answer::Unknown), 60);
    assert_eq!(cache.probe(&late, 6, 70), Probe::Hit(Answer::Unknown));
    send(&mut watch, 2, 70);
    let step = answer(&mut watch, 2, "200", &body(6, "e", &["late"]), 80);
    forget(&mut cache, step);
    assert_eq!(cache.probe(&late, 7, 90), Probe::Ask);
}

#[test]
fn report_counts_each_step_and_warns_once_a_streak() {
    let mut watch = Watch::new(&config(25));
    send(&mut watch, 1, 0);
    let step = answer(&mut watch, 1, "200", &body(7, "e1", &[]), 100);
    assert_eq!(
        watch.report(&step.outcome, "ks", 0),
        FeedReport {
            stat: Some(FeedStat::Changes),
            lines: vec![(
                Level::Info,
                "keygate: following the change feed of cluster ks from version 7 (epoch e1); \
                 cached answers dropped"
                    .into()
            )]
        }
    );
    send(&mut watch, 2, 100);
    let step = answer(&mut watch, 2, "200", &body(8, "e1", &["k"]), 200);
    let report = watch.report(&step.outcome, "ks", 0);
    assert_eq!(report.stat, Some(FeedStat::Changes));
    assert_eq!(report.lines[0].0, Level::Debug);

    // A streak of failures: a warning for the first, the rest quieter.
    send(&mut watch, 3, 200);
    let first = answer(&mut watch, 3, "500", b"", 200);
    let report = watch.report(&first.outcome, "ks", 0);
    assert_eq!(report.stat, Some(FeedStat::Failed));
    assert_eq!(report.lines.len(), 1);
    assert_eq!(report.lines[0].0, Level::Warn);
    assert!(report.lines[0]
        .1
        .contains("change feed of cluster ks failed"));
    let now = 200 + 2_000;
    send(&mut watch, 4, now);
    let again = answer(&mut watch, 4, "500", b"", now);
    assert_eq!(
        watch.report(&again.outcome, "ks", 1).lines[0].0,
        Level::Debug
    );

    // The feed answers again: said once, with the step's own report.
    let now = now + 4_000;
    send(&mut watch, 5, now);
    let back = answer(&mut watch, 5, "304", b"", now + 25_000);
    assert_eq!(
        watch.report(&back.outcome, "ks", 2),
        FeedReport {
            stat: None,
            lines: vec![(
                Level::Info,
                "keygate: change feed of cluster ks answers again".into()
            )]
        }
    );

    // 410: started over.
    send(&mut watch, 6, now + 25_000);
    let gone = answer(&mut watch, 6, "410", b"", now + 25_000);
    let report = watch.report(&gone.outcome, "ks", 0);
    assert_eq!(report.stat, None);
    assert!(report.lines[0]
        .1
        .contains("no longer holds our version (410)"));
}
