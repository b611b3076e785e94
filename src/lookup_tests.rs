//! `lookup` coordination against a host double: calls are recorded, answers delivered by
//! hand, the clock set by the test.

use super::*;
use crate::decision::{begin, Step};
use crate::record::KeyHash;
use crate::stats::Outcome;
use serde_json::json;

const ROOT: u32 = 1;
const ALICE: &str = "kg_alice";

fn config() -> Config {
    let doc = json!({
        "sources": [{"authorization": {"schemes": ["Bearer"]}}, {"query": "api_key"}],
        "lookup": {"cluster": "keyservice", "path": "/v1/keys/{hash}", "timeout_ms": 1000},
        "rules": [
            {"path_prefix": "/public", "public": true},
            {"path_prefix": "/data", "scopes": ["browse"]}
        ]
    });
    match Config::parse(doc.to_string().as_bytes()) {
        Ok(c) => c,
        Err(e) => panic!("{e:?}"),
    }
}

fn lookups(config: &Config) -> Lookups {
    match &config.keys {
        crate::config::KeySource::Lookup(l) => Lookups::new(l),
        _ => panic!("not a lookup config"),
    }
}

fn check(config: &Config, path: &str, key: &str) -> KeyCheck {
    let auth = format!("Bearer {key}");
    let headers = [
        (":method", "GET"),
        (":path", path),
        ("authorization", auth.as_str()),
    ];
    match begin(config, &headers) {
        Step::Key(check) => check,
        Step::Done(v) => panic!("no key to look up: {v:?}"),
    }
}

/// A lookup config, its lookups, and a host at `T0`.
fn setup() -> (Config, Lookups, Host) {
    let config = config();
    let state = lookups(&config);
    (config, state, host())
}

/// Request `context_id` for `path` with alice's key, hidden at once.
fn ask(state: &Lookups, host: &mut Host, config: &Config, context_id: u32, path: &str) -> Next {
    state.start(host, context_id, check(config, path, ALICE), || None, true)
}

/// Requests 10 (for /data, the one that asks) and 11 (for `second_path`) wait for alice's
/// key.
fn two_waiting(second_path: &str) -> (Config, Lookups, Host) {
    let (config, state, mut host) = setup();
    ask(&state, &mut host, &config, 10, "/data");
    ask(&state, &mut host, &config, 11, second_path);
    (config, state, host)
}

/// The key service answers call `token` with alice's record holding `scopes`.
fn found_alice(state: &Lookups, host: &mut Host, config: &Config, token: u32, scopes: &[&str]) {
    state.answered(
        host,
        config,
        token,
        Some("200"),
        &record_body(ALICE, scopes),
    );
}

/// The root context's sweep with the clock at `T0 + after_ms`.
fn sweep_at(state: &Lookups, host: &mut Host, config: &Config, after_ms: u64) {
    host.now_ms = T0 + after_ms;
    state.sweep(host, config, ROOT);
}

fn record_body(key: &str, scopes: &[&str]) -> Vec<u8> {
    json!({"id": format!("id-{key}"), "hash": KeyHash::of_key(key).to_hex(),
           "owner": "o", "scopes": scopes})
    .to_string()
    .into_bytes()
}

/// The clock at the start of each test (the host's is milliseconds since the epoch).
const T0: u64 = 1_800_000_000_000;

fn host() -> Host {
    Host {
        now_ms: T0,
        ..Host::default()
    }
}

#[derive(Default)]
struct Host {
    now_ms: u64,
    next_token: u32,
    refuse_calls: bool,
    /// (token, path) of every call made.
    calls: Vec<(u32, String)>,
    failures: Vec<String>,
    hits: usize,
    paths_set: Vec<Vec<u8>>,
    /// (context, outcome, redacted path) of every request resumed.
    resumed: Vec<(u32, Outcome, Option<Vec<u8>>)>,
    /// The key hash each resumed request was handed with.
    resumed_hashes: Vec<KeyHash>,
}

impl LookupHost for Host {
    fn now_ms(&self) -> u64 {
        self.now_ms
    }
    fn request_time(&self) -> Timestamp {
        Timestamp::from_unix_nanos(0)
    }
    fn dispatch(&mut self, path: &str) -> Result<u32, String> {
        if self.refuse_calls {
            return Err("no such cluster".into());
        }
        self.next_token += 1;
        self.calls.push((self.next_token, path.to_string()));
        Ok(self.next_token)
    }
    fn failed(&mut self, reason: &str) {
        self.failures.push(reason.to_string());
    }
    fn cache_hit(&mut self) {
        self.hits += 1;
    }
    fn set_path(&mut self, path: &[u8]) {
        self.paths_set.push(path.to_vec());
    }
    fn resume(
        &mut self,
        context_id: u32,
        hash: &KeyHash,
        verdict: Verdict<'_>,
        redacted: Option<&[u8]>,
    ) {
        self.resumed_hashes.push(*hash);
        // The reentrancy test's state, asked while a request is resumed: no borrow may
        // be held then.
        if let Some(state) = REENTER.with(|r| r.get()) {
            assert!(!state.is_waiting(context_id));
            state.done(context_id);
        }
        self.resumed
            .push((context_id, verdict.outcome(), redacted.map(<[u8]>::to_vec)));
    }
}

// Set by the reentrancy test only (each test runs on its own thread).
thread_local! {
    static REENTER: std::cell::Cell<Option<&'static Lookups>> = const { std::cell::Cell::new(None) };
}

fn outcomes(host: &Host) -> Vec<(u32, Outcome)> {
    let mut got: Vec<_> = host.resumed.iter().map(|(c, o, _)| (*c, *o)).collect();
    got.sort_by_key(|(c, _)| *c);
    got
}

#[test]
fn concurrent_requests_share_one_call_and_are_decided_by_it() {
    let (config, state, mut host) = setup();
    for context in [10, 11, 12] {
        let next = state.start(
            &mut host,
            context,
            check(&config, "/data/x", ALICE),
            || None,
            true,
        );
        assert!(matches!(next, Next::Paused));
        assert!(state.is_waiting(context));
    }
    assert_eq!(host.calls.len(), 1, "one call for three requests");
    let (token, path) = host.calls[0].clone();
    assert_eq!(
        path,
        format!("/v1/keys/{}", KeyHash::of_key(ALICE).to_hex())
    );
    assert!(state.is_call(token));
    found_alice(&state, &mut host, &config, token, &["browse"]);
    assert_eq!(
        outcomes(&host),
        [
            (10, Outcome::Allowed),
            (11, Outcome::Allowed),
            (12, Outcome::Allowed)
        ]
    );
    assert_eq!(host.resumed_hashes, [KeyHash::of_key(ALICE); 3]);
    assert!(!state.is_waiting(10) && !state.is_call(token));
    // The answer is cached: the next request is decided at once.
    match ask(&state, &mut host, &config, 13, "/data/x") {
        Next::Decide(_, Answer::Found(record)) => assert_eq!(record.owner.as_str(), "o"),
        other => panic!("{other:?}"),
    }
    assert_eq!((host.hits, host.calls.len()), (1, 1));
}

#[test]
fn an_answer_to_an_unknown_token_changes_nothing() {
    let (config, state, mut host) = setup();
    ask(&state, &mut host, &config, 10, "/data");
    state.answered(&mut host, &config, 99, Some("404"), b"");
    assert!(host.resumed.is_empty());
    assert!(state.is_waiting(10));
}

#[test]
fn when_the_asker_leaves_the_root_asks_again_at_the_next_tick() {
    let (config, state, mut host) = two_waiting("/data");
    let (first, _) = host.calls[0].clone();
    // The asker's client goes away: its call's answer is lost with it.
    state.done(10);
    assert!(!state.is_waiting(10) && state.is_waiting(11));
    sweep_at(&state, &mut host, &config, 500);
    assert_eq!(
        host.calls.len(),
        2,
        "asked again at once, not after the timeout"
    );
    assert!(!state.is_call(first));
    let (second, _) = host.calls[1].clone();
    found_alice(&state, &mut host, &config, second, &[]);
    assert_eq!(outcomes(&host), [(11, Outcome::Forbidden)]);
}

#[test]
fn a_call_lost_with_the_request_it_went_through_is_asked_again() {
    let (config, state, mut host) = two_waiting("/data");
    // The root asks again (the asker left), and the request its call goes out through
    // ends too: that call is lost.
    state.done(10);
    sweep_at(&state, &mut host, &config, 500);
    let (root_call, _) = host.calls[1].clone();
    state.lost(root_call);
    assert!(!state.is_call(root_call));
    sweep_at(&state, &mut host, &config, 600);
    assert_eq!(
        host.calls.len(),
        3,
        "asked again at once, not failed after the timeout"
    );
    let (third, _) = host.calls[2].clone();
    found_alice(&state, &mut host, &config, third, &["browse"]);
    assert_eq!(outcomes(&host), [(11, Outcome::Allowed)]);
    // A token it never made, or one already answered, changes nothing.
    state.lost(third);
    state.lost(9_999);
    assert!(host.failures.is_empty(), "{:?}", host.failures);
}

#[test]
fn a_leaver_who_did_not_ask_orphans_nothing() {
    let (config, state, mut host) = two_waiting("/data");
    state.done(11);
    sweep_at(&state, &mut host, &config, 500);
    assert_eq!(host.calls.len(), 1, "the asker's call still stands");
    let (token, _) = host.calls[0].clone();
    state.answered(&mut host, &config, token, Some("404"), b"");
    assert_eq!(outcomes(&host), [(10, Outcome::Invalid)]);
}

#[test]
fn an_overdue_call_is_made_again_then_fails_its_waiters() {
    let (config, state, mut host) = two_waiting("/public");
    // Within timeout + 1 s the call is left alone.
    sweep_at(&state, &mut host, &config, 2_000);
    assert_eq!(host.calls.len(), 1);
    // Past it, the root asks again (the answer may have gone with a request)...
    sweep_at(&state, &mut host, &config, 2_001);
    assert_eq!(host.calls.len(), 2);
    assert!(host.resumed.is_empty());
    // ...and when the root's own call is overdue, the waiters are decided without it.
    sweep_at(&state, &mut host, &config, 4_002);
    assert_eq!(host.calls.len(), 2);
    assert_eq!(
        outcomes(&host),
        [(10, Outcome::Unavailable), (11, Outcome::Public)],
        "protected: 503; public: passes without an identity"
    );
    assert!(!state.is_waiting(10) && !state.is_waiting(11));
    // A failure is not cached: the next request asks.
    ask(&state, &mut host, &config, 12, "/data");
    assert_eq!(host.calls.len(), 3);
}

#[test]
fn a_failed_answer_fails_the_waiters_and_is_not_kept() {
    let (config, state, mut host) = setup();
    ask(&state, &mut host, &config, 10, "/data");
    let (token, _) = host.calls[0].clone();
    state.answered(&mut host, &config, token, Some("500"), b"");
    assert_eq!(outcomes(&host), [(10, Outcome::Unavailable)]);
    assert_eq!(host.failures.len(), 1);
    assert!(host.failures[0].contains("500"), "{:?}", host.failures);
    // A record for another key is a failure too.
    ask(&state, &mut host, &config, 11, "/data");
    let (token, _) = host.calls[1].clone();
    state.answered(
        &mut host,
        &config,
        token,
        Some("200"),
        &record_body("kg_other", &["browse"]),
    );
    assert_eq!(outcomes(&host)[1], (11, Outcome::Unavailable));
}

#[test]
fn a_call_that_cannot_be_made_decides_at_once() {
    let config = config();
    let state = lookups(&config);
    let mut host = Host {
        refuse_calls: true,
        ..host()
    };
    let next = ask(&state, &mut host, &config, 10, "/data");
    assert!(matches!(next, Next::Unavailable(_)));
    assert!(!state.is_waiting(10));
    assert_eq!(host.failures, ["no such cluster"]);
    host.refuse_calls = false;
    ask(&state, &mut host, &config, 11, "/data");
    assert_eq!(host.calls.len(), 1, "nothing pending was left behind");
}

#[test]
fn a_paused_request_loses_its_query_key_when_the_key_is_hidden() {
    let (config, state, mut host) = setup();
    let redacted = || Some(b"/data?q=1".to_vec());
    state.start(
        &mut host,
        10,
        check(&config, "/data", ALICE),
        redacted,
        false,
    );
    assert!(
        host.paths_set.is_empty(),
        "hide_credentials off: left as sent"
    );
    state.start(
        &mut host,
        11,
        check(&config, "/data", ALICE),
        redacted,
        true,
    );
    assert_eq!(host.paths_set, [b"/data?q=1".to_vec()]);
    let (token, _) = host.calls[0].clone();
    state.answered(&mut host, &config, token, Some("404"), b"");
    // A refusal carries the redacted path for the access log.
    assert!(host
        .resumed
        .iter()
        .all(|(_, o, p)| *o == Outcome::Invalid && p.as_deref() == Some(&b"/data?q=1"[..])));
}

#[test]
fn the_host_may_call_back_in_while_a_request_is_resumed() {
    let config = config();
    let state: &'static Lookups = Box::leak(Box::new(lookups(&config)));
    REENTER.with(|r| r.set(Some(state)));
    let mut host = host();
    ask(state, &mut host, &config, 10, "/data");
    ask(state, &mut host, &config, 11, "/data");
    let (token, _) = host.calls[0].clone();
    state.answered(&mut host, &config, token, Some("404"), b"");
    assert_eq!(outcomes(&host).len(), 2);
    // And from the sweep's resumes.
    state.start(
        &mut host,
        12,
        check(&config, "/data", "kg_b"),
        || None,
        true,
    );
    sweep_at(state, &mut host, &config, 10_000);
    sweep_at(state, &mut host, &config, 20_000);
    assert_eq!(outcomes(&host).len(), 3);
}

#[test]
fn a_key_the_change_feed_reports_is_asked_again() {
    use crate::watch::Forget;
    let (config, state, mut host) = setup();
    let ask = |state: &Lookups, host: &mut Host, context: u32| {
        state.start(host, context, check(&config, "/data", ALICE), || None, true)
    };
    ask(&state, &mut host, 10);
    let (token, _) = host.calls[0].clone();
    found_alice(&state, &mut host, &config, token, &["browse"]);
    assert!(matches!(ask(&state, &mut host, 11), Next::Decide(..)));
    state.forget(&Forget::Nothing);
    assert!(matches!(ask(&state, &mut host, 12), Next::Decide(..)));
    state.forget(&Forget::Hashes(vec![KeyHash::of_key(ALICE)]));
    assert!(matches!(ask(&state, &mut host, 13), Next::Paused));
    assert_eq!(host.calls.len(), 2);
    // Revoked meanwhile: 404, and the request is refused.
    let (token, _) = host.calls[1].clone();
    state.answered(&mut host, &config, token, Some("404"), b"");
    assert_eq!(host.resumed.last().map(|r| r.1), Some(Outcome::Invalid));
    state.forget(&Forget::All);
    assert!(matches!(ask(&state, &mut host, 14), Next::Paused));
    assert_eq!(host.calls.len(), 3);
}
