//! `lookup` mode's watch (README "Watching for changes"): each VM long-polls the key
//! service's change feed, `GET {changes_path}?since=V&epoch=E&wait=S`, and drops its cached
//! answers for the keys that changed, so that a revocation is enforced within about a
//! second instead of when the cached answer expires.
//!
//! The feed's answers: 200 `{"version","epoch","hashes":[...]}` (the keys changed or removed
//! since `V`), 304 (nothing changed within `S` seconds), 410 (`V` is older than the changes
//! the service keeps). This module reads them ([`read_changes`]) and keeps the watch's
//! state ([`Watch`]): which call to make next, when, and what the cache must forget. The
//! shell makes the calls; the cache forgets ([`crate::lookup_cache::LookupCache::forget`]).
//!
//! ## Why no change is missed
//!
//! The first call of a VM (and the first after a 410) has no `since`: the service answers
//! at once with its current version `V0` and no hashes (its baseline). Every change after
//! `V0` is reported by the calls that follow (`since=V0`, then the version each answer
//! gives). What is not covered is an answer the VM obtained *before* the service reached
//! `V0`. So when the baseline answer arrives, every cached answer is dropped, and every
//! lookup still on its way is marked stale: its answer decides the requests waiting for it
//! but is not kept (it may have been given before `V0`). A lookup sent after the baseline
//! answer arrived was answered after the service gave `V0`, hence reflects `V0` or later,
//! and any later change to its key is reported by the feed. The same holds for a single
//! changed key: an answer on its way when its key is reported changed is not kept. An
//! answer in another epoch (a new or restored store) is a new baseline: everything is
//! dropped and the answer's version is the new `V0`.
//!
//! While the feed fails (a service without it answers 404), nothing is dropped early:
//! cached answers live out `cache_seconds`, as without a watch.

use crate::json::{self, FromJson, Json};
use crate::record::KeyHash;
use crate::remote::WatchConfig;

/// At most this many hashes in one answer; a service with more to report answers 410.
pub const MAX_HASHES: usize = 100_000;
/// An answer body is read only up to this size (a hash is 66 bytes quoted, plus a comma).
pub const MAX_BODY_BYTES: usize = MAX_HASHES * 68 + 4096;
/// An epoch is at most this long, and made of URL-safe characters: it is sent back as is.
pub const MAX_EPOCH_LEN: usize = 64;
/// A call may take the long-poll's wait plus this much before it is given up.
pub const TIMEOUT_MARGIN_MS: u64 = 5_000;
/// The first retry after a failure; doubled on each failure in a row, up to the max.
pub const FIRST_BACKOFF_MS: u64 = 1_000;
pub const MAX_BACKOFF_MS: u64 = 60_000;
/// A feed that answers at once with nothing new (it does not hold the long-poll) is asked
/// again no sooner than this after the previous call.
pub const MIN_INTERVAL_MS: u64 = 1_000;

/// The store's identity, sent back as is in `epoch=`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Epoch(Box<str>);

impl Epoch {
    pub fn parse(text: &str) -> Result<Epoch, String> {
        let url_safe = |b: u8| b.is_ascii_alphanumeric() || b"-._~".contains(&b);
        if text.is_empty() || text.len() > MAX_EPOCH_LEN || !text.bytes().all(url_safe) {
            return Err(format!(
                "the epoch must be 1 to {MAX_EPOCH_LEN} letters, digits, '-', '.', '_' or '~'"
            ));
        }
        Ok(Epoch(text.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A 200 answer of the feed.
#[derive(Debug, PartialEq, Eq)]
pub struct Changes {
    pub version: u64,
    pub epoch: Epoch,
    pub hashes: Vec<KeyHash>,
}

/// What the feed answered.
#[derive(Debug, PartialEq, Eq)]
pub enum FeedAnswer {
    Changed(Changes),
    /// 304: nothing changed during the wait.
    NotModified,
    /// 410: the version asked from is older than the changes kept.
    Gone,
}

/// The version as a decimal string (as the key service sends it) or a number.
fn parse_version(version: Option<&Json>) -> Result<u64, String> {
    match version {
        Some(Json::UInt(n)) => Ok(*n),
        Some(Json::Str(t))
            if !t.is_empty() && t.len() <= 19 && t.bytes().all(|b| b.is_ascii_digit()) =>
        {
            t.parse().map_err(|e| format!("invalid version: {e}"))
        }
        Some(Json::Str(_)) => Err("the version must be a decimal integer".into()),
        Some(_) => Err("invalid changes: the version must be a string or a number".into()),
        None => Err("invalid changes: missing field `version`".into()),
    }
}

/// Reads an answer of the feed (`status` `None`: no answer; `body` `None`: a body larger
/// than [`MAX_BODY_BYTES`], not read). Anything else is a failure (`Err`, the reason).
pub fn read_changes(status: Option<&str>, body: Option<&[u8]>) -> Result<FeedAnswer, String> {
    match status {
        Some("200") => {}
        Some("304") => return Ok(FeedAnswer::NotModified),
        Some("410") => return Ok(FeedAnswer::Gone),
        Some("404") => {
            return Err(
                "the key service has no change feed (404): cached answers live out \
                        cache_seconds"
                    .into(),
            )
        }
        Some(other) => return Err(format!("the key service answered {other}")),
        None => {
            return Err("no answer from the key service (timeout or connection failure)".into())
        }
    }
    // Too many changes to list: as good as 410.
    let Some(body) = body else {
        return Ok(FeedAnswer::Gone);
    };
    let text = std::str::from_utf8(body).map_err(|_| "the changes are not UTF-8".to_string())?;
    let doc =
        json::parse(text.as_bytes(), "changes").map_err(|e| format!("invalid changes: {e}"))?;
    let Json::Object(fields) = &doc else {
        return Err("invalid changes: expected an object".into());
    };
    let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let epoch = field("epoch")
        .ok_or("invalid changes: missing field `epoch`")?
        .as_str()
        .ok_or("invalid changes: epoch: expected a string")?;
    let mut errors = Vec::new();
    let hashes = match field("hashes") {
        Some(hashes) => Vec::<KeyHash>::read(hashes, "hashes", &mut errors),
        None => return Err("invalid changes: missing field `hashes`".into()),
    };
    let (Some(hashes), None) = (hashes, errors.first()) else {
        return Err(match errors.first() {
            Some(e) => format!("invalid changes: {e}"),
            None => "invalid changes".into(),
        });
    };
    if hashes.len() > MAX_HASHES {
        return Ok(FeedAnswer::Gone);
    }
    Ok(FeedAnswer::Changed(Changes {
        version: parse_version(field("version"))?,
        epoch: Epoch::parse(epoch)?,
        hashes,
    }))
}

/// What the cache must forget.
#[derive(Debug, PartialEq, Eq)]
pub enum Forget {
    Nothing,
    Hashes(Vec<KeyHash>),
    All,
}

/// A call to make: the path and the call's timeout.
#[derive(Debug, PartialEq, Eq)]
pub struct Call {
    pub path: String,
    pub timeout_ms: u64,
}

/// What an answer (or a failure) came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A 200: the version now followed, and how many keys changed (a new baseline: none
    /// listed, everything forgotten).
    Changed {
        version: u64,
        keys: usize,
        baseline: bool,
    },
    NotModified,
    /// 410: everything forgotten; the next call starts over.
    Gone,
    /// The call failed: nothing forgotten, the next call in `retry_in_ms`.
    Failed {
        reason: String,
        retry_in_ms: u64,
    },
}

#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    pub forget: Forget,
    pub outcome: Outcome,
}

/// How loud a line of [`Watch::report`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
}

/// Which of the feed's counters a step counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedStat {
    Changes,
    Failed,
}

/// What [`Watch::report`] says of a step: the counter it counts in and the log lines, the
/// same in every shell.
#[derive(Debug, PartialEq, Eq)]
pub struct FeedReport {
    pub stat: Option<FeedStat>,
    pub lines: Vec<(Level, String)>,
}

#[derive(Debug)]
struct InFlight {
    token: u32,
    sent_ms: u64,
    until_ms: u64,
}

/// One VM's watch: at most one call on its way.
#[derive(Debug)]
pub struct Watch {
    path: Box<str>,
    wait_seconds: u32,
    /// The version and epoch followed; `None` until a baseline is known.
    position: Option<(u64, Epoch)>,
    in_flight: Option<InFlight>,
    next_at_ms: u64,
    /// Failures in a row.
    failures: u32,
}

impl Watch {
    pub fn new(config: &WatchConfig) -> Watch {
        Watch {
            path: config.changes_path.clone(),
            wait_seconds: config.wait_seconds,
            position: None,
            in_flight: None,
            next_at_ms: 0,
            failures: 0,
        }
    }

    /// The version and epoch followed, once known.
    pub fn position(&self) -> Option<(u64, &str)> {
        self.position.as_ref().map(|(v, e)| (*v, e.as_str()))
    }

    /// The call to make now, if one is due (none is on its way, and any back-off is over).
    pub fn due(&self, now_ms: u64) -> Option<Call> {
        if self.in_flight.is_some() || now_ms < self.next_at_ms {
            return None;
        }
        let joint = if self.path.contains('?') { '&' } else { '?' };
        Some(match &self.position {
            None => Call {
                path: format!("{}{joint}wait=0", self.path),
                timeout_ms: TIMEOUT_MARGIN_MS,
            },
            Some((version, epoch)) => Call {
                path: format!(
                    "{}{joint}since={version}&epoch={}&wait={}",
                    self.path,
                    epoch.as_str(),
                    self.wait_seconds
                ),
                timeout_ms: u64::from(self.wait_seconds) * 1000 + TIMEOUT_MARGIN_MS,
            },
        })
    }

    /// The call [`Watch::due`] gave was made: `token` is its answer's.
    pub fn sent(&mut self, token: u32, call: &Call, now_ms: u64) {
        self.in_flight = Some(InFlight {
            token,
            sent_ms: now_ms,
            until_ms: now_ms.saturating_add(call.timeout_ms + TIMEOUT_MARGIN_MS),
        });
    }

    /// The call could not be made.
    pub fn not_sent(&mut self, reason: String, now_ms: u64, jitter: u64) -> Step {
        self.in_flight = None;
        self.fail(reason, now_ms, jitter)
    }

    pub fn is_call(&self, token: u32) -> bool {
        self.in_flight.as_ref().is_some_and(|c| c.token == token)
    }

    /// A call whose answer is long overdue (should the host never deliver it) counts as
    /// failed, so the watch goes on.
    pub fn overdue(&mut self, now_ms: u64, jitter: u64) -> Option<Step> {
        let call = self.in_flight.as_ref()?;
        if now_ms < call.until_ms {
            return None;
        }
        self.in_flight = None;
        Some(self.fail(
            "the change feed's call was never answered".into(),
            now_ms,
            jitter,
        ))
    }

    /// The answer to call `token` (see [`read_changes`] for `status` and `body`). Returns
    /// `None` for a token that is not this watch's call.
    pub fn answered(
        &mut self,
        token: u32,
        status: Option<&str>,
        body: Option<&[u8]>,
        now_ms: u64,
        jitter: u64,
    ) -> Option<Step> {
        if !self.is_call(token) {
            return None;
        }
        let call = self.in_flight.take()?;
        let baseline_call = self.position.is_none();
        let step = match read_changes(status, body) {
            Err(reason) => self.fail(reason, now_ms, jitter),
            // A first call has no version to be gone from or to be unchanged since.
            Ok(answer @ (FeedAnswer::Gone | FeedAnswer::NotModified)) if baseline_call => {
                let status = if matches!(answer, FeedAnswer::Gone) {
                    410
                } else {
                    304
                };
                self.fail(
                    format!("the key service answered {status} to a first call"),
                    now_ms,
                    jitter,
                )
            }
            Ok(FeedAnswer::Gone) => {
                self.failures = 0;
                self.position = None;
                // Starting over at once; a service that answers 410 again and again is
                // asked no faster than once a second.
                self.next_at_ms = call.sent_ms.saturating_add(MIN_INTERVAL_MS);
                Step {
                    forget: Forget::All,
                    outcome: Outcome::Gone,
                }
            }
            Ok(FeedAnswer::NotModified) => {
                self.failures = 0;
                self.next_at_ms = self.after_quiet_answer(&call, now_ms);
                Step {
                    forget: Forget::Nothing,
                    outcome: Outcome::NotModified,
                }
            }
            Ok(FeedAnswer::Changed(changes)) => {
                self.failures = 0;
                self.changed(changes, &call, now_ms)
            }
        };
        Some(step)
    }

    fn changed(&mut self, changes: Changes, call: &InFlight, now_ms: u64) -> Step {
        let Changes {
            version,
            epoch,
            hashes,
        } = changes;
        let same_line = match &self.position {
            Some((current, followed)) if *followed == epoch && version >= *current => {
                Some(*current)
            }
            _ => None,
        };
        self.position = Some((version, epoch));
        match same_line {
            // A first answer, another epoch, or a version that went back: a new baseline.
            None => {
                self.next_at_ms = now_ms;
                Step {
                    forget: Forget::All,
                    outcome: Outcome::Changed {
                        version,
                        keys: 0,
                        baseline: true,
                    },
                }
            }
            Some(current) => {
                // Nothing newer: a feed that does not hold the long-poll. Not asked again
                // at once.
                self.next_at_ms = if version == current {
                    self.after_quiet_answer(call, now_ms)
                } else {
                    now_ms
                };
                let keys = hashes.len();
                Step {
                    forget: if hashes.is_empty() {
                        Forget::Nothing
                    } else {
                        Forget::Hashes(hashes)
                    },
                    outcome: Outcome::Changed {
                        version,
                        keys,
                        baseline: false,
                    },
                }
            }
        }
    }

    /// After an answer with nothing new: at once if the service held the call for most of
    /// the wait, else no sooner than [`MIN_INTERVAL_MS`] after the call was made.
    fn after_quiet_answer(&self, call: &InFlight, now_ms: u64) -> u64 {
        let held = now_ms.saturating_sub(call.sent_ms);
        if held * 2 >= u64::from(self.wait_seconds) * 1000 {
            now_ms
        } else {
            call.sent_ms.saturating_add(MIN_INTERVAL_MS).max(now_ms)
        }
    }

    fn fail(&mut self, reason: String, now_ms: u64, jitter: u64) -> Step {
        self.failures = self.failures.saturating_add(1);
        let base = FIRST_BACKOFF_MS
            .saturating_mul(1 << self.failures.saturating_sub(1).min(16))
            .min(MAX_BACKOFF_MS);
        // Up to a quarter more, so that the workers do not retry in step.
        let retry_in_ms = base + jitter % (base / 4 + 1);
        self.next_at_ms = now_ms.saturating_add(retry_in_ms);
        Step {
            forget: Forget::Nothing,
            outcome: Outcome::Failed {
                reason,
                retry_in_ms,
            },
        }
    }

    /// Failures in a row (to log the first of a streak, not each one).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// How the shells report `outcome`, the step just taken on the feed of `cluster`, which
    /// had failed `failures_before` times in a row before it.
    pub fn report(&self, outcome: &Outcome, cluster: &str, failures_before: u32) -> FeedReport {
        let mut lines = Vec::new();
        if failures_before > 0 && self.failures == 0 {
            lines.push((
                Level::Info,
                format!("keygate: change feed of cluster {cluster} answers again"),
            ));
        }
        let stat = match outcome {
            Outcome::Changed {
                version,
                keys,
                baseline,
            } => {
                lines.push(if *baseline {
                    let epoch = self.position().map_or("-", |(_, epoch)| epoch);
                    (
                        Level::Info,
                        format!(
                            "keygate: following the change feed of cluster {cluster} from \
                             version {version} (epoch {epoch}); cached answers dropped"
                        ),
                    )
                } else {
                    (
                        Level::Debug,
                        format!("keygate: change feed: version {version}, {keys} key(s) changed"),
                    )
                });
                Some(FeedStat::Changes)
            }
            Outcome::NotModified => None,
            Outcome::Gone => {
                lines.push((
                    Level::Info,
                    format!(
                        "keygate: the change feed of cluster {cluster} no longer holds our \
                         version (410); cached answers dropped"
                    ),
                ));
                None
            }
            Outcome::Failed {
                reason,
                retry_in_ms,
            } => {
                // The first failure of a streak is worth a warning; the rest repeat it.
                lines.push(if self.failures == 1 {
                    (
                        Level::Warn,
                        format!(
                            "keygate: change feed of cluster {cluster} failed, retrying in \
                             {retry_in_ms} ms (cached answers expire as usual meanwhile): \
                             {reason}"
                        ),
                    )
                } else {
                    (
                        Level::Debug,
                        format!(
                            "keygate: change feed failed again, retrying in {retry_in_ms} ms: \
                             {reason}"
                        ),
                    )
                });
                Some(FeedStat::Failed)
            }
        };
        FeedReport { stat, lines }
    }
}

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
