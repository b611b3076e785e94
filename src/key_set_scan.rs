//! Reading a key service's answer a slice at a time (README "Key sets over HTTP").
//!
//! A million-key document is over 100 MiB of JSON: read in one go, it holds up the
//! worker that fetched it for seconds and takes several times its size in memory. This
//! reader walks the answer's top level itself and hands each record to the JSON reader (crate::json) on its own,
//! so it can stop after any record and go on at the next call; what it keeps of a record
//! is the few bytes [`crate::record_codec`] writes, not the parsed document.
//!
//! It reads all three answers of `/v1/keyset` (README "`keygate serve`"): a plain key-set
//! document `{"version"?, "keys"}`, the incremental sync's full document
//! `{"version","epoch","keys"}`, and a delta `{"version","epoch","since","upsert","delete"}`.
//! Every byte is either structure it checks (`{ } [ ] , :` and white space) or part of a
//! value the JSON reader reads strictly, so what it accepts is valid JSON of one of those shapes.

use crate::key_set_delta::{parse_version, MAX_DELTA_KEYS};
use crate::record::{KeyHash, KeyRecordDoc};
use crate::record_codec;
use crate::watch::Epoch;
use std::hash::{DefaultHasher, Hash, Hasher};

/// Records are grouped by this many leading bits of their hash (and of their id's hash)
/// as they are read, so that checking for repeats and writing buckets never sorts the
/// whole set at once.
const GROUP_BITS: u8 = crate::key_set_bucket::MAX_BITS;
const NONE: u32 = u32::MAX;

/// An answer being read: whole ([`Scan::new`]), or as it arrives ([`Scan::streaming`],
/// fed a chunk at a time, so that no one ever holds the whole document).
pub struct Scan {
    /// What is not read yet of the input given so far (all of it for a whole answer).
    body: Vec<u8>,
    pos: usize,
    /// Bytes of the answer dropped from the front of `body`, once read.
    base: usize,
    /// All of the answer has been given: running out of input is an error, not a wait.
    ended: bool,
    /// A read in this step ran into the end of the input given so far.
    short: std::cell::Cell<bool>,
    state: State,
    fields: Fields,
    /// The index of the next element of the array being read.
    index: usize,
    staged: Staged,
}

/// What the log or a test may see of a scan: never the answer's bytes.
impl std::fmt::Debug for Scan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scan")
            .field("read", &(self.base + self.pos))
            .field("ended", &self.ended)
            .field("staged", &self.staged.len())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Start,
    /// Before a field name; `first`: no field read yet.
    Field {
        first: bool,
    },
    Array {
        list: List,
        first: bool,
    },
    /// After a record of a list: `,` or the list's end.
    AfterRecord {
        list: List,
    },
    /// After a field's value.
    Next,
    End,
    /// Read; checking groups from this one on for repeats.
    Check(u32),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum List {
    Keys,
    Upsert,
    Delete,
}

impl List {
    fn name(self) -> &'static str {
        match self {
            List::Keys => "keys",
            List::Upsert => "upsert",
            List::Delete => "delete",
        }
    }
}

#[derive(Default)]
struct Fields {
    version: Option<String>,
    epoch: Option<String>,
    since: Option<String>,
    keys: bool,
    upsert: bool,
    delete: bool,
}

/// What was read: records to put in place, hashes to take out.
pub struct Staged {
    /// The encoded records, one after another.
    arena: Vec<u8>,
    items: Vec<Item>,
    /// Per item, a hash of its record's id (0 for a delete).
    id_hashes: Vec<u64>,
    /// Once there are many items, they are grouped as they come; few are sorted at the end.
    groups: Option<Groups>,
}

/// Items by [`GROUP_BITS`] leading bits of their hash, and of their id's hash: linked
/// lists, the head per group, a link per item.
struct Groups {
    heads: Vec<u32>,
    next: Vec<u32>,
    id_heads: Vec<u32>,
    id_next: Vec<u32>,
}

/// Fewer items than this are sorted in one go at the end rather than grouped.
const GROUP_FROM: usize = 4096;

/// One record to put in place (`len` > 0, at `at` in the arena) or one hash to take out.
#[derive(Clone, Copy)]
pub struct Item {
    pub hash: [u8; 32],
    at: u32,
    len: u32,
    /// Where it was read: `keys[3]`, `delete[0]`.
    list: u8,
    index: u32,
    /// Where it was read among all items.
    seq: u32,
}

impl Item {
    pub fn is_delete(&self) -> bool {
        self.list == 2
    }

    fn place(&self) -> String {
        let list = match self.list {
            0 => "keys",
            1 => "upsert",
            _ => "delete",
        };
        format!("{list}[{}]", self.index)
    }
}

/// The shape of a whole answer, once read.
#[derive(Debug, PartialEq, Eq)]
pub enum Scanned {
    /// Every key of the set. `epoch` is present when the server speaks the incremental
    /// sync; its version is then a decimal number.
    Full {
        version: Option<String>,
        epoch: Option<Epoch>,
    },
    Delta {
        version: u64,
        epoch: Epoch,
        since: u64,
    },
}

impl Staged {
    fn new() -> Staged {
        Staged {
            arena: Vec::new(),
            items: Vec::new(),
            id_hashes: Vec::new(),
            groups: None,
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The encoded record of an item that puts one in place.
    pub fn record(&self, item: &Item) -> Option<&[u8]> {
        if item.is_delete() {
            return None;
        }
        let at = item.at as usize;
        self.arena.get(at..at + item.len as usize)
    }

    /// Every item, sorted by hash: for a delta, whose size bounds the work.
    pub fn sorted(&self) -> Vec<Item> {
        let mut items = self.items.clone();
        items.sort_unstable_by(|a, b| by_hash(&a.hash, &b.hash));
        items
    }

    /// The items of bucket `bucket` under layout `bits` (at most [`GROUP_BITS`]), sorted
    /// by hash, and what finding them cost.
    pub fn bucket(&self, bits: u8, bucket: u32) -> (Vec<&Item>, usize) {
        let bits = bits.min(GROUP_BITS);
        let mut items: Vec<&Item> = match &self.groups {
            Some(groups) => {
                let span = 1u32 << (GROUP_BITS - bits);
                let first = bucket.saturating_mul(span);
                (first..first.saturating_add(span))
                    .flat_map(|group| groups.members(&groups.heads, &groups.next, group))
                    .filter_map(|at| self.items.get(at as usize))
                    .collect()
            }
            // Sorted by [`Staged::check`]: the bucket is a range.
            None => {
                let from = self
                    .items
                    .partition_point(|i| crate::key_set_bucket::bucket_of(&i.hash, bits) < bucket);
                let to = self
                    .items
                    .partition_point(|i| crate::key_set_bucket::bucket_of(&i.hash, bits) <= bucket);
                self.items
                    .get(from..to)
                    .unwrap_or_default()
                    .iter()
                    .collect()
            }
        };
        let cost = 1 + items.len() + self.groups.as_ref().map_or(0, |_| 1 << (GROUP_BITS - bits));
        items.sort_unstable_by(|a, b| by_hash(&a.hash, &b.hash));
        (items, cost)
    }

    /// The number the next item gets.
    fn seq(&self) -> Result<u32, String> {
        u32::try_from(self.items.len()).map_err(|_| "too many keys".to_string())
    }

    fn add(&mut self, item: Item, id: Option<&str>) -> Result<(), String> {
        let n = self.seq()?;
        let id_hash = id.map_or(0, |id| {
            let mut hasher = DefaultHasher::new();
            id.hash(&mut hasher);
            hasher.finish()
        });
        self.items.push(item);
        self.id_hashes.push(id_hash);
        match &mut self.groups {
            Some(groups) => groups.link(n, &item, id_hash),
            None if self.items.len() >= GROUP_FROM => {
                let mut groups = Groups {
                    heads: vec![NONE; 1 << GROUP_BITS],
                    next: Vec::with_capacity(self.items.capacity()),
                    id_heads: vec![NONE; 1 << GROUP_BITS],
                    id_next: Vec::with_capacity(self.items.capacity()),
                };
                for (at, (item, id_hash)) in (0u32..).zip(self.items.iter().zip(&self.id_hashes)) {
                    groups.link(at, item, *id_hash);
                }
                self.groups = Some(groups);
            }
            None => {}
        }
        Ok(())
    }

    /// Checks for a hash listed twice or an id used twice. Few items are sorted and
    /// checked at once; many, a group at a time from `from`, for about `budget` items:
    /// returns the next group to check, `None` when all are checked.
    fn check(&mut self, from: u32, budget: &mut usize) -> Result<Option<u32>, String> {
        let Some(groups) = &self.groups else {
            self.items
                .sort_unstable_by(|a, b| by_hash(&a.hash, &b.hash));
            let items: Vec<&Item> = self.items.iter().collect();
            repeated_hash(&items)?;
            // Sorting moved the items: their id hashes go with them.
            let ids: Vec<(u64, &Item)> = self
                .items
                .iter()
                .filter(|i| !i.is_delete())
                .map(|i| (id_hash_of(&self.id_hashes, i), i))
                .collect();
            repeated_id(ids)?;
            return Ok(None);
        };
        let mut group = from;
        let mut items: Vec<&Item> = Vec::new();
        while group < 1 << GROUP_BITS {
            items.clear();
            items.extend(
                groups
                    .members(&groups.heads, &groups.next, group)
                    .filter_map(|at| self.items.get(at as usize)),
            );
            items.sort_unstable_by(|a, b| by_hash(&a.hash, &b.hash));
            repeated_hash(&items)?;
            let ids: Vec<(u64, &Item)> = groups
                .members(&groups.id_heads, &groups.id_next, group)
                .filter_map(|at| {
                    Some((
                        *self.id_hashes.get(at as usize)?,
                        self.items.get(at as usize)?,
                    ))
                })
                .filter(|(_, item)| !item.is_delete())
                .collect();
            *budget = budget.saturating_sub(1 + items.len() + ids.len());
            repeated_id(ids)?;
            group += 1;
            if *budget == 0 && group < 1 << GROUP_BITS {
                return Ok(Some(group));
            }
        }
        Ok(None)
    }
}

impl Groups {
    fn link(&mut self, at: u32, item: &Item, id_hash: u64) {
        let group = crate::key_set_bucket::bucket_of(&item.hash, GROUP_BITS) as usize;
        self.next.push(self.heads[group]);
        self.heads[group] = at;
        let id_group = (id_hash >> (64 - u32::from(GROUP_BITS))) as usize;
        self.id_next.push(self.id_heads[id_group]);
        self.id_heads[id_group] = at;
    }

    fn members<'a>(
        &'a self,
        heads: &'a [u32],
        next: &'a [u32],
        group: u32,
    ) -> impl Iterator<Item = u32> + 'a {
        let mut at = heads.get(group as usize).copied().unwrap_or(NONE);
        std::iter::from_fn(move || {
            let this = at;
            at = *next.get(this as usize)?;
            Some(this)
        })
    }
}

/// Hashes in byte order, out of line: wasm has no byte swap, so each 32-byte comparison
/// inlined is some 400 bytes of shifts, and a sort inlines hundreds (issue #24: 68 KB).
#[inline(never)]
fn by_hash(a: &[u8; 32], b: &[u8; 32]) -> std::cmp::Ordering {
    a.cmp(b)
}

/// The id hash of an item, wherever sorting put it: items are numbered by where they were
/// read, kept in the item.
fn id_hash_of(id_hashes: &[u64], item: &Item) -> u64 {
    id_hashes.get(item.seq as usize).copied().unwrap_or(0)
}

/// Refuses a hash listed twice among `items`, sorted by hash.
fn repeated_hash(items: &[&Item]) -> Result<(), String> {
    for pair in items.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.hash != b.hash {
            continue;
        }
        let (first, then) = if (a.list, a.index) <= (b.list, b.index) {
            (a, b)
        } else {
            (b, a)
        };
        return Err(if first.list == then.list {
            format!(
                "{}.hash: duplicate hash (also {}): two records for one key",
                then.place(),
                first.place()
            )
        } else {
            format!(
                "{}: this hash is also in {}: a key is either upserted or deleted, once",
                then.place(),
                first.place()
            )
        });
    }
    Ok(())
}

/// Refuses an id used twice; `ids` pairs a hash of each record's id with its item.
fn repeated_id(mut ids: Vec<(u64, &Item)>) -> Result<(), String> {
    ids.sort_unstable_by_key(|(hash, item)| (*hash, item.list, item.index));
    for pair in ids.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(format!(
                "{}.id: duplicate id (also {})",
                pair[1].1.place(),
                pair[0].1.place()
            ));
        }
    }
    Ok(())
}

/// The most a single value (a record, a field's name or value) may take while it is
/// being streamed in: a key service that sends one larger is refused rather than held.
pub const MAX_STREAMED_VALUE: usize = 1 << 20;

/// What a step of reading came to.
pub enum Step {
    /// Read up to the budget; call again.
    More,
    /// A streamed answer needs more input ([`Scan::feed`], or [`Scan::end`] if there is
    /// no more) before it can go on.
    Hungry,
    /// The whole answer is read and checked.
    Done(Scanned),
}

impl Scan {
    /// Reads a whole answer.
    pub fn new(body: Vec<u8>) -> Scan {
        Scan {
            body,
            pos: 0,
            base: 0,
            ended: true,
            short: std::cell::Cell::new(false),
            state: State::Start,
            fields: Fields::default(),
            index: 0,
            staged: Staged::new(),
        }
    }

    /// Reads an answer as it arrives: [`Scan::feed`] each chunk, [`Scan::step`] until
    /// [`Step::Hungry`], and [`Scan::end`] once the answer is complete.
    pub fn streaming() -> Scan {
        Scan {
            ended: false,
            ..Scan::new(Vec::new())
        }
    }

    /// Gives a streamed answer its next bytes. What was read is dropped first, so the
    /// scan holds at most one value in progress and the chunk; a value in progress larger
    /// than [`MAX_STREAMED_VALUE`] refuses the answer.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        if self.ended {
            return Err("the answer went on after its end".into());
        }
        self.body.drain(..self.pos);
        self.base += self.pos;
        self.pos = 0;
        if self.body.len() > MAX_STREAMED_VALUE {
            return Err(self.error(&format!(
                "a value larger than {} KiB: refused",
                MAX_STREAMED_VALUE / 1024
            )));
        }
        self.body.extend_from_slice(chunk);
        Ok(())
    }

    /// A streamed answer is complete: what is left must read to its end.
    pub fn end(&mut self) {
        self.ended = true;
    }

    /// The answer's size so far, for the log.
    pub fn body_len(&self) -> usize {
        self.base + self.body.len()
    }

    pub fn staged(&self) -> &Staged {
        &self.staged
    }

    /// Gives up the body once read, keeping what was staged.
    pub fn into_staged(self) -> Staged {
        self.staged
    }

    /// Reads on for about `budget` records (each field and record costs one). An error
    /// refuses the whole answer.
    pub fn step(&mut self, budget: &mut usize) -> Result<Step, String> {
        loop {
            // After a record, what follows it is read without charge: a record is one.
            let after_record = matches!(self.state, State::AfterRecord { .. });
            if !after_record {
                if *budget == 0 {
                    return Ok(Step::More);
                }
                *budget -= 1;
            }
            // White space between tokens is passed once, so that a rewind below never
            // reads it again nor counts it toward a value's size.
            if !matches!(self.state, State::Check(_)) {
                self.skip_ws();
            }
            // Each state is read whole or not at all: when a streamed answer runs out of
            // input partway, the state and position go back to where it began, and the
            // read is done again once more input has come.
            let (pos, state) = (self.pos, self.state);
            self.short.set(false);
            match self.advance(budget) {
                Ok(None) => {}
                Ok(Some(Step::Hungry)) => {
                    // Nothing was read: the step is not charged.
                    if !after_record {
                        *budget += 1;
                    }
                    return Ok(Step::Hungry);
                }
                Ok(Some(step)) => return Ok(step),
                Err(_) if self.short.get() && !self.ended => {
                    self.pos = pos;
                    self.state = state;
                    if !after_record {
                        *budget += 1;
                    }
                    return Ok(Step::Hungry);
                }
                Err(why) => return Err(why),
            }
        }
    }

    /// Reads what the state in force calls for; `Some` ends the step.
    fn advance(&mut self, budget: &mut usize) -> Result<Option<Step>, String> {
        match self.state {
            State::Start => {
                self.expect(b'{', "the answer must be a JSON object")?;
                self.state = State::Field { first: true };
            }
            State::Field { first } => {
                if !self.closed((b'}', State::End), first, "expected a field after ','")? {
                    self.field()?;
                }
            }
            State::Array { list, first } => {
                if !self.closed((b']', State::Next), first, "expected a value after ','")? {
                    self.element(list)?;
                    self.state = State::AfterRecord { list };
                }
            }
            State::AfterRecord { list } => self.after_value(
                (b']', State::Next),
                State::Array { list, first: false },
                "expected ',' or ']' after a record",
            )?,
            State::Next => self.after_value(
                (b'}', State::End),
                State::Field { first: false },
                "expected ',' or '}' after a field",
            )?,
            State::End => {
                self.skip_ws();
                if self.pos != self.body.len() {
                    return Err(self.error("trailing characters after the answer"));
                }
                if !self.ended {
                    return Ok(Some(Step::Hungry));
                }
                self.state = State::Check(0);
            }
            State::Check(group) => match self.staged.check(group, budget)? {
                Some(next) => self.state = State::Check(next),
                None => return self.finish().map(|scanned| Some(Step::Done(scanned))),
            },
        }
        Ok(None)
    }

    fn field(&mut self) -> Result<(), String> {
        let start = self.pos;
        let end = self.skip(start)?;
        let name = crate::json::string(&self.body[start..end])
            .ok_or_else(|| self.error("expected a field name"))?;
        self.pos = end;
        self.expect(b':', "expected ':' after a field name")?;
        self.skip_ws();
        let seen = match name.as_str() {
            "version" | "epoch" | "since" => {
                let start = self.pos;
                let end = self.skip(start)?;
                let text = crate::json::string(&self.body[start..end])
                    .ok_or_else(|| format!("{name}: expected a string"))?;
                self.pos = end;
                self.state = State::Next;
                let slot = match name.as_str() {
                    "version" => &mut self.fields.version,
                    "epoch" => &mut self.fields.epoch,
                    _ => &mut self.fields.since,
                };
                slot.replace(text).is_some()
            }
            "keys" | "upsert" | "delete" => {
                let (list, flag) = match name.as_str() {
                    "keys" => (List::Keys, &mut self.fields.keys),
                    "upsert" => (List::Upsert, &mut self.fields.upsert),
                    _ => (List::Delete, &mut self.fields.delete),
                };
                if *flag {
                    return Err(format!("duplicate field {name:?}"));
                }
                self.expect(b'[', &format!("{name}: expected an array"))?;
                let flag = match list {
                    List::Keys => &mut self.fields.keys,
                    List::Upsert => &mut self.fields.upsert,
                    List::Delete => &mut self.fields.delete,
                };
                *flag = true;
                self.index = 0;
                self.state = State::Array { list, first: true };
                false
            }
            other => {
                return Err(format!(
                    "unknown field {other:?}: a key set answer has version, epoch, keys \
                     (a full document) or since, upsert, delete (a delta)"
                ))
            }
        };
        if seen {
            return Err(format!("duplicate field {name:?}"));
        }
        Ok(())
    }

    fn element(&mut self, list: List) -> Result<(), String> {
        let start = self.pos;
        let end = self.skip(start)?;
        let place = format!("{}[{}]", list.name(), self.index);
        let index = u32::try_from(self.index).map_err(|_| "too many keys".to_string())?;
        let value = &self.body[start..end];
        match list {
            List::Delete => {
                let hash: KeyHash = crate::json::read_one(value, &place)?;
                let item = Item {
                    hash: *hash.bytes(),
                    at: 0,
                    len: 0,
                    list: 2,
                    index,
                    seq: self.staged.seq()?,
                };
                self.staged.add(item, None)?;
            }
            List::Keys | List::Upsert => {
                let doc = KeyRecordDoc::parse(value, &place)?;
                let record = record_codec::encode(&doc);
                let at = u32::try_from(self.staged.arena.len())
                    .map_err(|_| "the key set is too large to hold".to_string())?;
                let len = u32::try_from(record.len()).unwrap_or(u32::MAX);
                self.staged.arena.extend_from_slice(&record);
                let item = Item {
                    hash: *doc.hash.bytes(),
                    at,
                    len,
                    list: if list == List::Keys { 0 } else { 1 },
                    index,
                    seq: self.staged.seq()?,
                };
                self.staged.add(item, Some(doc.id.as_str()))?;
            }
        }
        self.pos = end;
        self.index += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<Scanned, String> {
        let f = std::mem::take(&mut self.fields);
        let scanned = match f {
            Fields {
                version,
                epoch,
                since: None,
                keys: true,
                upsert: false,
                delete: false,
            } => match epoch {
                None => Scanned::Full {
                    version,
                    epoch: None,
                },
                Some(epoch) => {
                    let version = version.ok_or("a full document with an epoch has a version")?;
                    parse_version("version", &version)?;
                    Scanned::Full {
                        version: Some(version),
                        epoch: Some(Epoch::parse(&epoch)?),
                    }
                }
            },
            Fields {
                version: Some(version),
                epoch: Some(epoch),
                since: Some(since),
                keys: false,
                upsert: true,
                delete: true,
            } => {
                if self.staged.len() > MAX_DELTA_KEYS {
                    return Err(format!(
                        "the delta lists {} keys, more than {MAX_DELTA_KEYS}: refused",
                        self.staged.len()
                    ));
                }
                let version = parse_version("version", &version)?;
                let since = parse_version("since", &since)?;
                if version <= since {
                    return Err(format!(
                        "the delta's version ({version}) must be after its since ({since})"
                    ));
                }
                Scanned::Delta {
                    version,
                    epoch: Epoch::parse(&epoch)?,
                    since,
                }
            }
            _ => {
                return Err(
                    "a key set answer is a full document (version, epoch, keys) or a \
                            delta (version, epoch, since, upsert, delete), not a mix"
                        .into(),
                )
            }
        };
        Ok(scanned)
    }

    /// At the start of an object's field or a list's element: the closer ends it (going on
    /// to `done`), unless a `,` came before (`first` false).
    fn closed(
        &mut self,
        (closer, done): (u8, State),
        first: bool,
        what: &str,
    ) -> Result<bool, String> {
        self.skip_ws();
        if self.peek() != Some(closer) {
            return Ok(false);
        }
        if !first {
            return Err(self.error(what));
        }
        self.pos += 1;
        self.state = done;
        Ok(true)
    }

    /// After a value in a list or object: `,` goes on to `more`; the closer to `done`.
    fn after_value(
        &mut self,
        (closer, done): (u8, State),
        more: State,
        what: &str,
    ) -> Result<(), String> {
        self.skip_ws();
        let next = match self.peek() {
            Some(b',') => more,
            Some(b) if b == closer => done,
            _ => return Err(self.error(what)),
        };
        self.pos += 1;
        self.state = next;
        Ok(())
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        let byte = self.body.get(self.pos).copied();
        if byte.is_none() {
            self.short.set(true);
        }
        byte
    }

    /// Where the value at `start` ends (see [`skip_value`]).
    fn skip(&self, start: usize) -> Result<usize, String> {
        match skip_value(&self.body, start, self.ended) {
            Ok(end) => Ok(end),
            Err(Skip::Short(why)) => {
                self.short.set(true);
                Err(self.error(why))
            }
            Err(Skip::Bad(why)) => Err(self.error(&why)),
        }
    }

    fn expect(&mut self, byte: u8, what: &str) -> Result<(), String> {
        self.skip_ws();
        if self.peek() != Some(byte) {
            return Err(self.error(what));
        }
        self.pos += 1;
        Ok(())
    }

    fn error(&self, what: &str) -> String {
        format!(
            "invalid key set answer at byte {}: {what}",
            self.base + self.pos
        )
    }
}

/// Where the JSON value starting at `start` ends: strings with their escapes, nested
/// arrays and objects with their closers matched, scalars up to a delimiter. The value is
/// then read by the JSON reader, which checks it fully. `ended`: `body` holds the rest of the answer
/// (a scalar may end with it); otherwise a value that reaches its end is cut short.
fn skip_value(body: &[u8], start: usize, ended: bool) -> Result<usize, Skip> {
    let mut closers: Vec<u8> = Vec::new();
    let mut pos = start;
    loop {
        let Some(&byte) = body.get(pos) else {
            return Err(Skip::Short("the answer ends inside a value"));
        };
        match byte {
            b'"' => {
                pos += 1;
                loop {
                    match body.get(pos) {
                        None => return Err(Skip::Short("the answer ends inside a string")),
                        Some(b'\\') => pos += 2,
                        Some(b'"') => break,
                        Some(_) => pos += 1,
                    }
                }
                pos += 1;
            }
            b'{' => {
                closers.push(b'}');
                pos += 1;
            }
            b'[' => {
                closers.push(b']');
                pos += 1;
            }
            b'}' | b']' => {
                if closers.pop() != Some(byte) {
                    return Err(Skip::Bad(format!("unexpected '{}'", byte as char)));
                }
                pos += 1;
            }
            _ if !closers.is_empty() => pos += 1,
            _ => {
                // A scalar at the top: up to the next delimiter.
                while let Some(b) = body.get(pos) {
                    if matches!(b, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    pos += 1;
                }
                if pos == body.len() && !ended {
                    return Err(Skip::Short("the answer ends inside a value"));
                }
                if pos == start {
                    return Err(Skip::Bad("expected a value".into()));
                }
                return Ok(pos);
            }
        }
        if closers.is_empty() {
            return Ok(pos);
        }
    }
}

/// Why [`skip_value`] found no end.
enum Skip {
    /// The input ran out first.
    Short(&'static str),
    Bad(String),
}

#[cfg(test)]
#[path = "key_set_scan_tests.rs"]
mod tests;
