use super::*;
use serde_json::json;

fn h(key: &str) -> String {
    KeyHash::of_key(key).to_hex()
}

/// Reads `body` whole, and checks that reading it streamed, in chunks of several sizes,
/// comes to the same: the same shape and records, or the same error.
fn scan_with(body: &[u8], budget: usize) -> Result<(Scanned, Staged), String> {
    let whole = scan_whole(body, budget);
    let sizes: &[usize] = if body.len() <= 64 * 1024 {
        &[1, 2, 7, 64, 4096]
    } else {
        &[4096, 65536]
    };
    for &size in sizes {
        let streamed = scan_streamed(body, size, budget);
        assert_eq!(
            outcome(&streamed),
            outcome(&whole),
            "fed {size} bytes at a time"
        );
    }
    whole
}

fn scan_whole(body: &[u8], budget: usize) -> Result<(Scanned, Staged), String> {
    let mut scan = Scan::new(body.to_vec());
    loop {
        let mut left = budget;
        if let Step::Done(scanned) = scan.step(&mut left)? {
            return Ok((scanned, scan.into_staged()));
        }
    }
}

fn scan_streamed(body: &[u8], size: usize, budget: usize) -> Result<(Scanned, Staged), String> {
    let mut scan = Scan::streaming();
    let mut chunks = body.chunks(size);
    let mut ended = false;
    loop {
        let mut left = budget;
        match scan.step(&mut left)? {
            Step::Done(scanned) => return Ok((scanned, scan.into_staged())),
            Step::More => {}
            Step::Hungry => {
                assert!(!ended, "a scan that was given its end asked for more");
                match chunks.next() {
                    Some(chunk) => scan.feed(chunk)?,
                    None => {
                        scan.end();
                        ended = true;
                    }
                }
            }
        }
    }
}

/// What a scan came to, comparable: the shape and every item with its record.
type Outcome = Result<(String, Vec<([u8; 32], Option<Vec<u8>>)>), String>;

fn outcome(result: &Result<(Scanned, Staged), String>) -> Outcome {
    let (scanned, staged) = result.as_ref().map_err(Clone::clone)?;
    let items = staged
        .sorted()
        .iter()
        .map(|item| (item.hash, staged.record(item).map(<[u8]>::to_vec)))
        .collect();
    Ok((format!("{scanned:?}"), items))
}

#[test]
fn a_streamed_answer_holds_only_the_value_in_progress() {
    let keys: Vec<_> = (0..2000)
        .map(|i| rec(&format!("k{i}"), &format!("key{i}")))
        .collect();
    let body = json!({"version": "1", "keys": keys}).to_string();
    let mut scan = Scan::streaming();
    let mut most = 0;
    for chunk in body.as_bytes().chunks(1000) {
        scan.feed(chunk).unwrap();
        most = most.max(scan.body.capacity());
        loop {
            let mut left = usize::MAX;
            match scan.step(&mut left).unwrap() {
                Step::Hungry => break,
                Step::More => {}
                Step::Done(_) => panic!("done before its end"),
            }
        }
    }
    scan.end();
    let mut left = usize::MAX;
    assert!(matches!(scan.step(&mut left).unwrap(), Step::Done(_)));
    assert_eq!(scan.body_len(), body.len());
    assert_eq!(scan.staged().len(), 2000);
    assert!(
        most < 4 * 1000,
        "held {most} bytes of a {} byte answer",
        body.len()
    );
}

#[test]
fn a_streamed_value_too_large_to_hold_is_refused() {
    let mut scan = Scan::streaming();
    scan.feed(br#"{"keys": [{"id": ""#).unwrap();
    let filler = vec![b'a'; 64 * 1024];
    let refused = (0..40).find_map(|_| {
        let mut left = usize::MAX;
        assert!(matches!(scan.step(&mut left), Ok(Step::Hungry)));
        scan.feed(&filler).err()
    });
    let why = refused.expect("a 2 MiB value was held");
    assert!(why.contains("a value larger than 1024 KiB"), "{why}");
}

#[test]
fn a_streamed_answer_cut_short_or_fed_after_its_end_is_refused() {
    let mut scan = Scan::streaming();
    scan.feed(br#"{"keys": [{"id": "a""#).unwrap();
    let mut left = usize::MAX;
    assert!(matches!(scan.step(&mut left), Ok(Step::Hungry)));
    scan.end();
    let why = scan.step(&mut left).err().unwrap();
    assert!(why.contains("ends inside a value"), "{why}");
    assert!(scan.feed(b"}]}").is_err());
}

fn scan(value: serde_json::Value) -> Result<(Scanned, Staged), String> {
    scan_with(value.to_string().as_bytes(), usize::MAX)
}

fn rec(id: &str, key: &str) -> serde_json::Value {
    json!({"id": id, "hash": h(key), "owner": "o", "scopes": ["browse"]})
}

#[test]
fn reads_the_three_shapes() {
    let (plain, staged) = scan(json!({"keys": [rec("a", "ka")]})).unwrap();
    assert_eq!(
        plain,
        Scanned::Full {
            version: None,
            epoch: None
        }
    );
    assert_eq!(staged.len(), 1);

    let (full, _) = scan(json!({"version": "3", "epoch": "e1", "keys": []})).unwrap();
    assert_eq!(
        full,
        Scanned::Full {
            version: Some("3".into()),
            epoch: Some(Epoch::parse("e1").unwrap())
        }
    );

    let (delta, staged) = scan(json!({"version": "9", "epoch": "e1", "since": "7",
        "upsert": [rec("a", "ka")], "delete": [h("kb")]}))
    .unwrap();
    assert_eq!(
        delta,
        Scanned::Delta {
            version: 9,
            epoch: Epoch::parse("e1").unwrap(),
            since: 7
        }
    );
    let items = staged.sorted();
    assert_eq!(items.len(), 2);
    assert_eq!(items.iter().filter(|i| i.is_delete()).count(), 1);
}

#[test]
fn any_budget_reads_the_same() {
    let keys: Vec<_> = (0..300)
        .map(|i| rec(&format!("id{i}"), &format!("k{i}")))
        .collect();
    let body = json!({"version": "v", "keys": keys}).to_string();
    let (whole, staged) = scan_with(body.as_bytes(), usize::MAX).unwrap();
    for budget in [1, 2, 7, 100] {
        let (sliced, again) = scan_with(body.as_bytes(), budget).unwrap();
        assert_eq!(sliced, whole);
        let a: Vec<_> = staged
            .sorted()
            .iter()
            .map(|i| (i.hash, staged.record(i).map(<[u8]>::to_vec)))
            .collect();
        let b: Vec<_> = again
            .sorted()
            .iter()
            .map(|i| (i.hash, again.record(i).map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(a, b, "budget {budget}");
    }
}

#[test]
fn white_space_and_escapes_are_json_s() {
    let body = format!(
        " {{ \"ver\\u0073ion\" : \"1\" ,\n\t\"keys\" : [ {} , {} ] }} \n",
        json!({"id": "a\"b", "hash": h("ka"), "owner": "o]}", "label": "x\\"}),
        json!({"id": "c", "hash": h("kc"), "owner": "o"})
    );
    let (scanned, staged) = scan_with(body.as_bytes(), 3).unwrap();
    assert_eq!(
        scanned,
        Scanned::Full {
            version: Some("1".into()),
            epoch: None
        }
    );
    assert_eq!(staged.len(), 2);
}

#[test]
fn refuses_what_is_not_one_of_the_shapes() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"".to_vec(), "JSON object"),
        (b"[]".to_vec(), "JSON object"),
        (b"{".to_vec(), "ends inside"),
        (b"{}".to_vec(), "not a mix"),
        (br#"{"keys": [], }"#.to_vec(), "expected a field after"),
        (br#"{"keys": [1,]}"#.to_vec(), "keys[0]"),
        (br#"{"keys": [] "version": "1"}"#.to_vec(), "expected ',' or '}'"),
        (br#"{"keys": []}x"#.to_vec(), "trailing"),
        (br#"{"keys": [], "keys": []}"#.to_vec(), "duplicate field"),
        (br#"{"keys": [], "extra": 1}"#.to_vec(), "unknown field"),
        (br#"{"keys": [{"id": "a"]}"#.to_vec(), "unexpected"),
        (br#"{"keys": ["#.to_vec(), "ends inside"),
        (br#"{"version": 1, "keys": []}"#.to_vec(), "version: expected a string"),
        (br#"{"version": "01", "epoch": "e", "keys": []}"#.to_vec(), "decimal"),
        (br#"{"epoch": "e", "keys": []}"#.to_vec(), "has a version"),
        (br#"{"version": "1", "epoch": "bad epoch", "keys": []}"#.to_vec(), "epoch"),
        (br#"{"version": "2", "epoch": "e", "since": "1", "upsert": [], "delete": [], "keys": []}"#.to_vec(), "not a mix"),
        (br#"{"version": "2", "epoch": "e", "since": "2", "upsert": [], "delete": []}"#.to_vec(), "after its since"),
        (br#"{"version": "2", "epoch": "e", "since": "1", "upsert": [], "delete": ["x"]}"#.to_vec(), "delete[0]"),
    ];
    for (body, says) in cases {
        let error = scan_with(&body, 2)
            .err()
            .unwrap_or_else(|| panic!("accepted {:?}", String::from_utf8_lossy(&body)));
        assert!(
            error.contains(says),
            "{:?}: {error}",
            String::from_utf8_lossy(&body)
        );
    }
}

#[test]
fn a_key_upserted_and_deleted_in_one_delta_is_refused() {
    let error = scan(json!({"version": "9", "epoch": "e1", "since": "7",
        "upsert": [rec("a", "ka")], "delete": [h("ka")]}))
    .err()
    .unwrap();
    assert!(
        error.contains("delete[0]: this hash is also in upsert[0]"),
        "{error}"
    );
}

#[test]
fn nesting_is_bounded_by_serde_not_by_the_stack() {
    let deep = format!(
        "{{\"keys\": [{}{}]}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(scan_with(deep.as_bytes(), 10).is_err());
}

#[test]
fn repeats_are_found_in_a_large_answer_too() {
    let mut keys: Vec<_> = (0..5_000)
        .map(|i| rec(&format!("id{i}"), &format!("k{i}")))
        .collect();
    keys[4_999] = rec("id-last", "k10");
    let error = scan_with(json!({"keys": keys.clone()}).to_string().as_bytes(), 100)
        .err()
        .unwrap();
    assert_eq!(
        error,
        "keys[4999].hash: duplicate hash (also keys[10]): two records for one key"
    );
    keys[4_999] = rec("id10", "k-last");
    let error = scan_with(json!({"keys": keys}).to_string().as_bytes(), 100)
        .err()
        .unwrap();
    assert_eq!(error, "keys[4999].id: duplicate id (also keys[10])");
}

/// A delta of the key service (README "`keygate serve`"): upsert `a`, delete `b`.
fn good_delta() -> serde_json::Value {
    json!({"version": "7", "epoch": "e1", "since": "5",
        "upsert": [{"id": "a", "hash": h("a"), "owner": "alice", "scopes": ["browse"]}],
        "delete": [h("b")]})
}

#[test]
fn a_delta_is_read_with_its_versions() {
    let (scanned, staged) = scan(good_delta()).unwrap();
    assert_eq!(
        scanned,
        Scanned::Delta {
            version: 7,
            epoch: Epoch::parse("e1").unwrap(),
            since: 5
        }
    );
    let items = staged.sorted();
    let upserted: Vec<_> = items
        .iter()
        .filter(|i| !i.is_delete())
        .map(|i| i.hash)
        .collect();
    let deleted: Vec<_> = items
        .iter()
        .filter(|i| i.is_delete())
        .map(|i| i.hash)
        .collect();
    assert_eq!(upserted, [*KeyHash::of_key("a").bytes()]);
    assert_eq!(deleted, [*KeyHash::of_key("b").bytes()]);
    let empty = json!({"version": "1", "epoch": "e", "since": "0", "upsert": [], "delete": []});
    assert!(scan(empty).is_ok());
}

#[test]
fn delta_versions_are_decimal_strings_and_move_forward() {
    for (version, since) in [
        (json!(7), json!("5")),
        (json!("7"), json!(5)),
        (json!("07"), json!("5")),
        (json!("-7"), json!("5")),
        (json!("7.0"), json!("5")),
        (json!(""), json!("5")),
        (json!("99999999999999999999"), json!("5")),
        (json!("5"), json!("5")),
        (json!("4"), json!("5")),
    ] {
        let mut doc = good_delta();
        doc["version"] = version.clone();
        doc["since"] = since.clone();
        assert!(scan(doc).is_err(), "{version} since {since}");
    }
}

#[test]
fn delta_hashes_records_and_fields_are_checked() {
    let mut doc = good_delta();
    doc["delete"] = json!(["kg_live_secret"]);
    let error = scan(doc).err().unwrap();
    assert!(error.contains("not a SHA-256 hash"), "{error}");
    assert!(
        !error.contains("secret"),
        "the value is not repeated: {error}"
    );
    let mut doc = good_delta();
    doc["upsert"][0]["status"] = json!("revoked");
    assert!(scan(doc).is_err());
    let mut doc = good_delta();
    doc["keys"] = json!([]);
    assert!(scan(doc).err().unwrap().contains("not a mix"));
    for missing in ["version", "epoch", "since", "upsert", "delete"] {
        let mut doc = good_delta();
        doc.as_object_mut().unwrap().remove(missing);
        assert!(scan(doc).is_err(), "{missing}");
    }
    let mut doc = good_delta();
    doc["epoch"] = json!("a b");
    assert!(scan(doc).is_err());
    assert!(scan_with(b"\xff", 10).is_err());
    assert!(scan_with(b"{} x", 10).is_err());
}

#[test]
fn no_key_twice_in_a_delta() {
    let mut deleted_twice = good_delta();
    deleted_twice["delete"] = json!([h("b"), h("b")]);
    assert!(scan(deleted_twice)
        .err()
        .unwrap()
        .contains("duplicate hash"));
    let mut upserted_twice = good_delta();
    upserted_twice["upsert"] = json!([
        {"id": "a", "hash": h("a"), "owner": "alice"},
        {"id": "a2", "hash": h("a"), "owner": "alice"}
    ]);
    assert!(scan(upserted_twice)
        .err()
        .unwrap()
        .contains("duplicate hash"));
}

#[test]
fn a_full_document_without_an_epoch_is_a_plain_servers() {
    let mut no_epoch = json!({"version": "7", "epoch": "e1",
        "keys": [{"id": "a", "hash": h("a"), "owner": "alice"}]});
    no_epoch.as_object_mut().unwrap().remove("epoch");
    let (scanned, staged) = scan(no_epoch).unwrap();
    assert_eq!(
        scanned,
        Scanned::Full {
            version: Some("7".into()),
            epoch: None
        }
    );
    assert_eq!(staged.len(), 1);
}

#[test]
fn deltas_are_bounded() {
    let hashes: Vec<String> = (0..=MAX_DELTA_KEYS).map(|i| h(&i.to_string())).collect();
    let mut doc = good_delta();
    doc["upsert"] = json!([]);
    doc["delete"] = json!(hashes);
    assert!(scan(doc).err().unwrap().contains("more than"));
}

#[test]
fn white_space_between_values_is_not_held_as_a_value() {
    // 2 MiB of white space, more than a value may take while streamed: passed once, not
    // held and read again with every chunk.
    let gap = " ".repeat(2 << 20);
    let body = format!(r#"{{"keys":[{gap}{}{gap}]{gap}}}"#, rec("a", "ka"));
    let (scanned, staged) = scan_with(body.as_bytes(), usize::MAX).unwrap();
    assert_eq!(
        scanned,
        Scanned::Full {
            version: None,
            epoch: None
        }
    );
    assert_eq!(staged.len(), 1);
}
