//! Usage reports (README "Usage (last used)"): each VM counts the requests allowed per key
//! hash and, every `report_seconds`, sends the counts to the key service as
//! `{"reports":[{"hash","count","last_used_at"}]}`. Reporting never touches a request: a
//! use is one map update on the VM's clock, a report is made on the root's tick, and one
//! that fails is dropped (and counted).
//!
//! [`UsageConfig`] is the `"usage"` field of the configuration, [`Tally`] one VM's counts
//! (bounded: [`MAX_KEYS_PER_VM`]), [`Reporter`] the timer and the calls behind a
//! [`ReportHost`], and [`UsageReport`] the document both sides read and write.

use crate::error::ConfigError;
use crate::json::{self, Fields, FromJson, Json};
use crate::record::{DigestHasher, KeyHash};
use crate::remote::{check_endpoint, check_path, check_range, Endpoint};
use crate::timestamp::Timestamp;
use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::hash::BuildHasherDefault;

/// `"usage"`: where and how often this proxy reports its counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageConfig {
    pub endpoint: Endpoint,
    pub path: Box<str>,
    pub report_seconds: u32,
}

pub const DEFAULT_USAGE_PATH: &str = "/v1/usage";
pub const DEFAULT_REPORT_SECONDS: u32 = 60;
pub const MAX_REPORT_SECONDS: u32 = 3_600;
pub const DEFAULT_REPORT_TIMEOUT_MS: u32 = 2_000;
/// The most entries one report carries; more keys are sent as several reports.
pub const MAX_REPORT_ENTRIES: usize = 10_000;
/// The most distinct keys one VM counts between two reports (about 1 MB). A use of a key
/// not yet counted when the tally is full is not counted (`usage.dropped`); keys already
/// counted go on counting, and the next report makes room again.
pub const MAX_KEYS_PER_VM: usize = 10_000;
/// Reports on their way at once, per VM; past that (a key service that does not answer),
/// a report is dropped rather than kept waiting.
pub const MAX_REPORTS_IN_FLIGHT: usize = 16;

pub(crate) struct UsageDoc {
    cluster: String,
    path: Option<String>,
    authority: Option<String>,
    report_seconds: Option<u32>,
    timeout_ms: Option<u32>,
}

impl FromJson for UsageDoc {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let mut f = Fields::of(
            value,
            at,
            "usage: an object with cluster",
            &[
                "cluster",
                "path",
                "authority",
                "report_seconds",
                "timeout_ms",
            ],
            errors,
        )?;
        let cluster = f.required("cluster");
        let path = f.nullable::<String>("path");
        let authority = f.nullable::<String>("authority");
        let report_seconds = f.nullable::<u32>("report_seconds");
        let timeout_ms = f.nullable::<u32>("timeout_ms");
        f.done()?;
        Some(UsageDoc {
            cluster: cluster?,
            path,
            authority,
            report_seconds,
            timeout_ms,
        })
    }
}

impl UsageDoc {
    pub(crate) fn check(self, errors: &mut Vec<ConfigError>) -> Option<UsageConfig> {
        let before = errors.len();
        let endpoint = check_endpoint(
            "usage",
            self.cluster,
            self.authority,
            self.timeout_ms.unwrap_or(DEFAULT_REPORT_TIMEOUT_MS),
            errors,
        );
        let path = self.path.unwrap_or_else(|| DEFAULT_USAGE_PATH.to_string());
        check_path("usage.path", &path, errors);
        let report_seconds = self.report_seconds.unwrap_or(DEFAULT_REPORT_SECONDS);
        check_range(
            "usage.report_seconds",
            report_seconds,
            1,
            MAX_REPORT_SECONDS,
            errors,
        );
        (errors.len() == before).then(|| UsageConfig {
            endpoint,
            path: path.into(),
            report_seconds,
        })
    }
}

/// One key's uses since the last report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Uses {
    count: u64,
    last_ms: u64,
}

/// What became of one use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    Counted,
    /// The tally was full and the key not in it: the use is not counted.
    Dropped,
}

/// One VM's counts since its last report, keyed by the hashes of allowed keys (which come
/// from the key set, not from clients: the digest hasher is safe here).
#[derive(Debug)]
pub struct Tally {
    uses: HashMap<KeyHash, Uses, BuildHasherDefault<DigestHasher>>,
    capacity: usize,
}

impl Default for Tally {
    fn default() -> Self {
        Tally::with_capacity(MAX_KEYS_PER_VM)
    }
}

impl Tally {
    /// A tally of at most `capacity` distinct keys.
    pub fn with_capacity(capacity: usize) -> Self {
        Tally {
            uses: HashMap::default(),
            capacity,
        }
    }

    /// Counts one use of `hash` at `now_ms` (the VM's clock, Unix milliseconds).
    pub fn record(&mut self, hash: &KeyHash, now_ms: u64) -> Recorded {
        if let Some(uses) = self.uses.get_mut(hash) {
            uses.count = uses.count.saturating_add(1);
            uses.last_ms = uses.last_ms.max(now_ms);
            return Recorded::Counted;
        }
        if self.uses.len() >= self.capacity {
            return Recorded::Dropped;
        }
        self.uses.insert(
            *hash,
            Uses {
                count: 1,
                last_ms: now_ms,
            },
        );
        Recorded::Counted
    }

    pub fn len(&self) -> usize {
        self.uses.len()
    }

    pub fn is_empty(&self) -> bool {
        self.uses.is_empty()
    }

    /// Empties the tally into reports of at most [`MAX_REPORT_ENTRIES`] entries each.
    pub fn drain(&mut self) -> Vec<UsageReport> {
        let mut reports = Vec::new();
        let mut entries = Vec::with_capacity(self.uses.len().min(MAX_REPORT_ENTRIES));
        for (hash, uses) in self.uses.drain() {
            if entries.len() == MAX_REPORT_ENTRIES {
                reports.push(UsageReport {
                    entries: std::mem::take(&mut entries),
                });
            }
            entries.push(UsageEntry {
                hash,
                count: uses.count,
                last_used: Timestamp::from_unix_nanos(i128::from(uses.last_ms) * 1_000_000),
            });
        }
        if !entries.is_empty() {
            reports.push(UsageReport { entries });
        }
        // Give the memory of a busy interval back.
        self.uses.shrink_to(self.capacity.min(64));
        reports
    }
}

/// One key's line in a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageEntry {
    pub hash: KeyHash,
    pub count: u64,
    pub last_used: Timestamp,
}

/// `{"reports":[{"hash","count","last_used_at"}]}`: at most [`MAX_REPORT_ENTRIES`]
/// entries, each with a count of at least 1.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageReport {
    pub entries: Vec<UsageEntry>,
}

struct ReportDoc {
    reports: Vec<EntryDoc>,
}

impl FromJson for ReportDoc {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let mut f = Fields::of(
            value,
            at,
            "a usage report: {\"reports\": [...]}",
            &["reports"],
            errors,
        )?;
        let reports = f.required("reports");
        f.done()?;
        Some(ReportDoc { reports: reports? })
    }
}

struct EntryDoc {
    hash: KeyHash,
    count: u64,
    last_used_at: Timestamp,
}

impl FromJson for EntryDoc {
    fn read(value: &Json, at: &str, errors: &mut Vec<ConfigError>) -> Option<Self> {
        let mut f = Fields::of(
            value,
            at,
            "a usage entry: an object with hash, count and last_used_at",
            &["hash", "count", "last_used_at"],
            errors,
        )?;
        let hash = f.required("hash");
        let count = f.required("count");
        let last_used_at = f.required("last_used_at");
        f.done()?;
        Some(EntryDoc {
            hash: hash?,
            count: count?,
            last_used_at: last_used_at?,
        })
    }
}

impl UsageReport {
    /// The document as sent: hashes, counts and times only.
    pub fn to_json(&self) -> String {
        // {"hash":"<64>","count":<20>,"last_used_at":"<24>"}, a little over 140 bytes.
        let mut out = String::with_capacity(16 + self.entries.len() * 144);
        out.push_str("{\"reports\":[");
        for (i, entry) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"hash\":\"{}\",\"count\":{},\"last_used_at\":\"{}\"}}",
                entry.hash.to_hex(),
                entry.count,
                rfc3339_millis(entry.last_used)
            );
        }
        out.push_str("]}");
        out
    }

    /// Reads a report as the key service receives it; every problem is named by its field
    /// (`reports[3].count`). The same hash may appear more than once.
    pub fn parse(json: &[u8]) -> Result<UsageReport, Vec<ConfigError>> {
        let doc = json::read_document(json, "usage report", |v, e| ReportDoc::read(v, "", e))?;
        let mut errors = Vec::new();
        if doc.reports.len() > MAX_REPORT_ENTRIES {
            errors.push(ConfigError::new(
                "reports",
                format!(
                    "holds {} entries; at most {MAX_REPORT_ENTRIES}",
                    doc.reports.len()
                ),
            ));
        }
        for (i, entry) in doc.reports.iter().enumerate() {
            if entry.count == 0 {
                errors.push(ConfigError::new(
                    format!("reports[{i}].count"),
                    "must be at least 1",
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(UsageReport {
            entries: doc
                .reports
                .into_iter()
                .map(|e| UsageEntry {
                    hash: e.hash,
                    count: e.count,
                    last_used: e.last_used_at,
                })
                .collect(),
        })
    }
}

/// An instant as RFC 3339 in UTC, to the millisecond: `2026-11-30T10:12:29.500Z`.
pub fn rfc3339_millis(t: Timestamp) -> String {
    let millis = t.unix_nanos().div_euclid(1_000_000);
    let seconds = millis.div_euclid(1_000);
    let days = seconds.div_euclid(86_400);
    let (year, month, day) = match i64::try_from(days) {
        Ok(days) => crate::timestamp::civil_from_days(days),
        Err(_) => (i64::MAX, 0, 0),
    };
    // Beyond the years -9999 to 9999 (where the `time` crate stopped): the latest instant
    // it wrote.
    if !(-9999..=9999).contains(&year) {
        return "9999-12-31T23:59:59.999Z".to_string();
    }
    let of_day = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3_600,
        of_day / 60 % 60,
        of_day % 60,
        millis.rem_euclid(1_000)
    )
}

/// What the reporter needs of its host.
pub trait ReportHost {
    /// POSTs `body` (a report) to the usage endpoint; the call's token, or why the call
    /// could not be made.
    fn dispatch(&mut self, body: &[u8]) -> Result<u32, String>;
    /// The key service accepted a report.
    fn sent(&mut self);
    /// A report was dropped (for the log, which names no key, and the failure counter).
    fn failed(&mut self, reason: &str);
}

/// One VM's usage: its tally, when to report next and the reports on their way.
#[derive(Debug)]
pub struct Reporter {
    period_ms: u64,
    tally: Tally,
    next_ms: Option<u64>,
    in_flight: HashSet<u32>,
}

impl Reporter {
    pub fn new(config: &UsageConfig) -> Self {
        Reporter::with_tally(config, Tally::default())
    }

    pub fn with_tally(config: &UsageConfig, tally: Tally) -> Self {
        Reporter {
            period_ms: u64::from(config.report_seconds) * 1000,
            tally,
            next_ms: None,
            in_flight: HashSet::new(),
        }
    }

    /// Counts one allowed use of `hash` (on the request path: no host call).
    pub fn record(&mut self, hash: &KeyHash, now_ms: u64) -> Recorded {
        self.tally.record(hash, now_ms)
    }

    /// On the root's tick: every `report_seconds` (the first one a period after the first
    /// tick), sends what was counted, if anything.
    pub fn tick(&mut self, host: &mut impl ReportHost, now_ms: u64) {
        let next = *self.next_ms.get_or_insert(now_ms + self.period_ms);
        if now_ms < next {
            return;
        }
        self.next_ms = Some(now_ms + self.period_ms);
        for report in self.tally.drain() {
            if self.in_flight.len() >= MAX_REPORTS_IN_FLIGHT {
                host.failed(&format!(
                    "usage report of {} keys dropped: {MAX_REPORTS_IN_FLIGHT} reports are \
                     still unanswered",
                    report.entries.len()
                ));
                continue;
            }
            match host.dispatch(report.to_json().as_bytes()) {
                Ok(token) => {
                    self.in_flight.insert(token);
                }
                Err(reason) => host.failed(&format!(
                    "usage report of {} keys dropped: {reason}",
                    report.entries.len()
                )),
            }
        }
    }

    /// Whether `token` is a report on its way.
    pub fn is_report(&self, token: u32) -> bool {
        self.in_flight.contains(&token)
    }

    /// The key service answered report `token` with `status` (`None`: no answer, as for a
    /// reset or a timeout). Returns false if `token` is not a report.
    pub fn answered(
        &mut self,
        host: &mut impl ReportHost,
        token: u32,
        status: Option<&str>,
    ) -> bool {
        if !self.in_flight.remove(&token) {
            return false;
        }
        match status {
            Some(s) if s.len() == 3 && s.starts_with('2') => host.sent(),
            Some(s) => host.failed(&format!(
                "usage report dropped: the key service answered {s}"
            )),
            None => host.failed(
                "usage report dropped: no answer from the key service (timeout or connection \
                 failure)",
            ),
        }
        true
    }

    /// Distinct keys counted since the last report.
    pub fn pending_keys(&self) -> usize {
        self.tally.len()
    }
}

#[cfg(test)]
#[path = "usage_tests.rs"]
mod tests;
