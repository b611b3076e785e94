//! keygate's configuration pushed through extension config discovery (ECDS), through the
//! shipped `envoy/keygate-ecds.yaml` and `envoy/keygate-ecds-filter.yaml` (README "Changing keys without a restart"): Envoy
//! takes the filter's whole configuration from a file it watches. Renaming a new file into
//! place adds a key and revokes another while a client keeps sending requests, with no
//! restart, no listener change and no answer other than the expected ones; an update keygate
//! refuses is rejected whole and the configuration in force stays.

use keygate_testkit as support;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::{
    eventually, hash_of, Background, Bootstrap, Envoy, EnvoyOptions, Request, TempDir, Upstream,
};

/// In the shipped resource file from the start, revoked by the update.
const REVOKED: &str = "kg_example_browse_key_replace_me";
/// In the shipped resource file, valid throughout.
const STAYS: &str = "kg_example_upload_key_replace_me";
/// Added by the update.
const ADDED: &str = "kg_ecds_test_key_added_by_the_update";

const PATH: &str = "/data/query/study";

/// A shipped file under `envoy/`, made to load the build under test.
fn shipped(name: &str) -> String {
    let text = std::fs::read_to_string(support::repo_root().join("envoy").join(name)).unwrap();
    support::shipped_for_build(&text)
}

/// `text` with `from` replaced, which must be there.
fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "no {from:?} in:\n{text}");
    text.replace(from, to)
}

/// Replaces the watched file in one step (a rename in its directory), as Envoy expects.
fn publish(file: &Path, text: &str) {
    let tmp = file.with_extension("yaml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

/// A counter or gauge by its full name; 0 until it exists.
fn stat(envoy: &Envoy, name: &str) -> u64 {
    text_stat(envoy, name).parse().unwrap_or(0)
}

/// A stat's value as `/stats` prints it (text readouts keep their quotes).
fn text_stat(envoy: &Envoy, name: &str) -> String {
    envoy
        .admin_get(&format!("/stats?filter=^{}$", name.replace('.', "\\.")))
        .lines()
        .find_map(|l| Some(l.strip_prefix(&format!("{name}: "))?.trim().to_string()))
        .unwrap_or_default()
}

/// Seconds since this Envoy process started serving, as `/server_info` computes them now.
fn uptime(envoy: &Envoy) -> u64 {
    let info: serde_json::Value = serde_json::from_str(&envoy.admin_get("/server_info")).unwrap();
    assert_eq!(info["state"], "LIVE", "{info}");
    info["uptime_current_epoch"]
        .as_str()
        .and_then(|s| s.strip_suffix('s')?.parse().ok())
        .unwrap_or_else(|| panic!("no uptime in {info}"))
}

const ECDS: &str = "extension_config_discovery.http_filter.keygate";

/// What the client loop saw: for each request, which key, when, and the status (or the
/// error that stood in for one).
struct Seen {
    key: &'static str,
    at: Instant,
    answer: Result<u16, String>,
}

#[test]
fn an_ecds_update_adds_and_revokes_keys_without_restart_or_failed_request() {
    let upstream = Upstream::start();
    let dir = TempDir::new("ecds");
    let resource = dir.path().join("keygate-ecds-filter.yaml");
    let first = shipped("keygate-ecds-filter.yaml");
    publish(&resource, &first);

    let port = support::free_port();
    let config = shipped("keygate-ecds.yaml");
    let config = replaced(&config, "port_value: 10000", &format!("port_value: {port}"));
    let config = replaced(&config, "port_value: 9901", "port_value: 0");
    let config = replaced(
        &config,
        "port_value: 8081",
        &format!("port_value: {}", upstream.addr.port()),
    );
    let config = replaced(
        &config,
        "path: envoy/keygate-ecds-filter.yaml",
        &format!("path: {}", resource.display()),
    );
    let envoy = Envoy::start_from(
        Bootstrap::Yaml(&config),
        EnvoyOptions {
            concurrency: 2,
            // The refused update's log line is read below: written out within 100 ms, not
            // Envoy's default 10 s.
            extra_args: vec!["--file-flush-interval-msec", "100"],
            ..EnvoyOptions::default()
        },
    );
    let status = |key: &str| envoy.send(&Request::get(PATH).bearer(key)).status;
    assert_eq!(status(REVOKED), 200, "{}", envoy.log());
    assert_eq!(status(STAYS), 200);
    assert_eq!(status(ADDED), 401);
    assert_eq!(text_stat(&envoy, &format!("{ECDS}.version_text")), "\"1\"");
    let reloads = stat(&envoy, &format!("{ECDS}.config_reload"));
    let listeners_created = stat(&envoy, "listener_manager.listener_create_success");
    let uptime_before = uptime(&envoy);

    // One client, one request after another on new connections, cycling through the three
    // keys, from before the first rewrite until after the last.
    let listener = envoy.listener;
    let client = Background::start(move |stop| {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        for key in [REVOKED, ADDED, STAYS].into_iter().cycle() {
            if stop.load(Ordering::Relaxed) || seen.len() >= 50_000 || Instant::now() > deadline {
                break;
            }
            let at = Instant::now();
            let answer = support::try_request(listener, &Request::get(PATH).bearer(key))
                .map(|r| r.status)
                .map_err(|e| e.to_string());
            seen.push(Seen { key, at, answer });
        }
        seen
    });
    std::thread::sleep(Duration::from_millis(500));

    // The update: ADDED takes REVOKED's place.
    let second = replaced(
        &replaced(&first, &hash_of(REVOKED), &hash_of(ADDED)),
        "version_info: \"1\"",
        "version_info: \"2\"",
    );
    let published = Instant::now();
    publish(&resource, &second);
    assert!(
        eventually(Duration::from_secs(10), || status(ADDED) == 200),
        "the added key never got in:\n{}",
        envoy.log()
    );
    assert_eq!(status(REVOKED), 401);
    assert_eq!(text_stat(&envoy, &format!("{ECDS}.version_text")), "\"2\"");
    assert!(stat(&envoy, &format!("{ECDS}.config_reload")) > reloads);
    std::thread::sleep(Duration::from_millis(500));

    // An update keygate refuses: rejected whole, version 2 stays in force.
    let rejected_before = stat(&envoy, &format!("{ECDS}.update_rejected"));
    let broken = replaced(
        &replaced(
            &second,
            "\"unmatched\": \"deny\"",
            "\"unmatched\": \"nope\"",
        ),
        "version_info: \"2\"",
        "version_info: \"3\"",
    );
    publish(&resource, &broken);
    assert!(
        eventually(Duration::from_secs(10), || stat(
            &envoy,
            &format!("{ECDS}.update_rejected")
        ) > rejected_before),
        "the broken update was not rejected:\n{}",
        envoy.log()
    );
    // The log line may reach Envoy's log file a little after the counter moved.
    assert!(
        eventually(Duration::from_secs(10), || envoy
            .log()
            .contains("unmatched")),
        "{}",
        envoy.log()
    );
    assert_eq!(text_stat(&envoy, &format!("{ECDS}.version_text")), "\"2\"");
    std::thread::sleep(Duration::from_millis(500));
    let seen = client.stop();

    // Every answer was one of the expected ones, and each key switched once, for good.
    let mut problems = Vec::new();
    let mut switched: [Option<Instant>; 2] = [None, None];
    for s in &seen {
        let (before, after, slot) = match s.key {
            REVOKED => (200, 401, Some(0)),
            ADDED => (401, 200, Some(1)),
            _ => (200, 200, None),
        };
        match (&s.answer, slot) {
            (Ok(code), None) if *code == before => {}
            (Ok(code), Some(i)) if *code == after => {
                switched[i].get_or_insert(s.at);
            }
            (Ok(code), Some(i)) if *code == before && switched[i].is_none() => {}
            (answer, _) => problems.push(format!("{}: {answer:?}", s.key)),
        }
    }
    let count = |key: &str, code: u16| {
        seen.iter()
            .filter(|s| s.key == key && s.answer == Ok(code))
            .count()
    };
    let after_ms =
        |i: usize| switched[i].map(|t| t.saturating_duration_since(published).as_millis());
    eprintln!(
        "ecds: {} requests during the updates; revoked key 200 x{} then 401 x{} (switched {:?} ms \
         after the rename), added key 401 x{} then 200 x{} (switched {:?} ms after), steady key \
         200 x{}",
        seen.len(),
        count(REVOKED, 200),
        count(REVOKED, 401),
        after_ms(0),
        count(ADDED, 401),
        count(ADDED, 200),
        after_ms(1),
        count(STAYS, 200),
    );
    assert!(
        problems.is_empty(),
        "unexpected answers during the updates: {problems:?}"
    );
    assert!(
        seen.len() > 30,
        "the client sent only {} requests",
        seen.len()
    );
    assert!(switched.iter().all(Option::is_some), "a key never switched");
    assert!(
        count(REVOKED, 200) > 0 && count(ADDED, 401) > 0,
        "no request before the update"
    );

    // Same process, same listener: the filter's configuration changed under it.
    assert_eq!(
        stat(&envoy, "listener_manager.listener_create_success"),
        listeners_created
    );
    assert_eq!(stat(&envoy, "listener_manager.listener_modified"), 0);
    assert_eq!(stat(&envoy, "listener_manager.total_listeners_draining"), 0);
    assert!(uptime(&envoy) > uptime_before, "Envoy started again");
    assert!(upstream.take().len() >= count(STAYS, 200));
}
