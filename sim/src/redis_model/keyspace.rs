//! The keyspace: values with expiry on the Redis host's clock, and three records of change —
//! the write log (every change in order, for a system's checkers to interpret; the model
//! itself gives keys no meaning), per-key modification stamps (for `WATCH`), and an undo
//! journal (so a crash can lose the writes a real Redis would lose: the last second under
//! `appendfsync everysec`, or what a lagging replica had not received when it took over).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// A value, as the commands see it. Hash fields keep insertion order, as a small Redis hash
/// (listpack) does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    Str(#[serde(with = "lossy")] Vec<u8>),
    Hash(#[serde(with = "lossy_pairs")] Vec<(Vec<u8>, Vec<u8>)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub val: Value,
    /// Absolute time on the Redis host's clock.
    pub expires_at_ms: Option<u64>,
}

/// One change to the keyspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    /// Simulation time of the command that made it.
    pub at_ms: u64,
    /// Which client command made it: writes of one script or one `EXEC` share the number.
    pub command: u64,
    #[serde(with = "lossy")]
    pub key: Vec<u8>,
    pub op: WriteOp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteOp {
    /// The key now holds this string (`SET`, `INCR`, ...).
    Set(#[serde(with = "lossy")] Vec<u8>),
    /// These hash fields were set.
    HSet(#[serde(with = "lossy_pairs")] Vec<(Vec<u8>, Vec<u8>)>),
    /// These hash fields were removed.
    HDel(Vec<String>),
    /// The key was removed by a command (not by expiry).
    Del,
    /// The key's expiry changed (absolute, on the Redis clock; `None`: persistent).
    Expire(Option<u64>),
    /// A crash lost this key's later writes: it holds this again (`None`: absent).
    Lost(Option<Value>),
}

/// The write log and journal as JSON keep bytes readable (keys and values are text here).
mod lossy {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        Ok(String::deserialize(d)?.into_bytes())
    }
}

mod lossy_pairs {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[(Vec<u8>, Vec<u8>)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|(a, b)| (String::from_utf8_lossy(a), String::from_utf8_lossy(b))))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(Vec<u8>, Vec<u8>)>, D::Error> {
        Ok(Vec::<(String, String)>::deserialize(d)?.into_iter().map(|(a, b)| (a.into_bytes(), b.into_bytes())).collect())
    }
}

#[derive(Debug, Default)]
pub(crate) struct Keyspace {
    data: BTreeMap<Vec<u8>, Entry>,
    /// Last modification stamp per key (for `WATCH`); never shrinks within a run.
    touched: BTreeMap<Vec<u8>, u64>,
    touch_seq: u64,
    /// `(at_ms, key, value before)` for each change, oldest first, kept `journal_keep_ms`.
    journal: VecDeque<(u64, Vec<u8>, Option<Entry>)>,
    /// 0: no journal (nothing acknowledged can be lost, so nothing needs undoing).
    pub journal_keep_ms: u64,
    pub writes: Vec<Write>,
    /// The Redis clock for the command being executed (frozen during a script, as in Redis).
    pub now_ms: u64,
    /// Simulation time of the command being executed.
    pub stamp_ms: u64,
    /// Number of the client command being executed.
    pub command: u64,
}

impl Keyspace {
    /// The live entry under `key`; an expired one is removed first (lazy expiry).
    pub fn get(&mut self, key: &[u8]) -> Option<&Entry> {
        if self.data.get(key).is_some_and(|e| e.expires_at_ms.is_some_and(|t| t <= self.now_ms)) {
            // Expiry is not a client's write: journalled (a rollback may need it) but neither
            // logged nor a modification for WATCH.
            let before = self.data.remove(key);
            self.journal_push(key, before);
        }
        self.data.get(key)
    }

    pub fn exists(&mut self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    /// Whether `key` holds a value that is past its expiry but not yet removed.
    pub fn is_expired(&self, key: &[u8]) -> bool {
        self.data.get(key).is_some_and(|e| e.expires_at_ms.is_some_and(|t| t <= self.now_ms))
    }

    pub fn stamp_of(&self, key: &[u8]) -> u64 {
        self.touched.get(key).copied().unwrap_or(0)
    }

    /// Replaces (or with `None` removes) the entry under `key`, recording `op`.
    pub fn put(&mut self, key: &[u8], entry: Option<Entry>, op: WriteOp) {
        let before = match entry {
            Some(e) => self.data.insert(key.to_vec(), e),
            None => self.data.remove(key),
        };
        self.journal_push(key, before);
        self.touch(key);
        self.writes.push(Write { at_ms: self.stamp_ms, command: self.command, key: key.to_vec(), op });
    }

    /// Changes the live entry under `key` in place (the caller checked it exists).
    pub fn modify(&mut self, key: &[u8], op: WriteOp, f: impl FnOnce(&mut Entry)) {
        let Some(e) = self.data.get_mut(key) else { return };
        let before = e.clone();
        f(e);
        self.journal_push(key, Some(before));
        self.touch(key);
        self.writes.push(Write { at_ms: self.stamp_ms, command: self.command, key: key.to_vec(), op });
    }

    fn touch(&mut self, key: &[u8]) {
        self.touch_seq += 1;
        if let Some(t) = self.touched.get_mut(key) {
            *t = self.touch_seq;
        } else {
            self.touched.insert(key.to_vec(), self.touch_seq);
        }
    }

    fn journal_push(&mut self, key: &[u8], before: Option<Entry>) {
        if self.journal_keep_ms == 0 {
            return;
        }
        self.journal.push_back((self.stamp_ms, key.to_vec(), before));
        let horizon = self.stamp_ms.saturating_sub(self.journal_keep_ms);
        while self.journal.front().is_some_and(|(t, _, _)| *t < horizon) {
            self.journal.pop_front();
        }
    }

    /// Every live key, for `FLUSHALL` and `DBSIZE`.
    pub fn live_keys(&mut self) -> Vec<Vec<u8>> {
        let keys: Vec<Vec<u8>> = self.data.keys().cloned().collect();
        keys.into_iter().filter(|k| self.exists(k)).collect()
    }

    /// Undoes every change made after `cutoff_ms` (simulation time), newest first, and logs
    /// what each key holds again. Returns how many changes were lost.
    pub fn lose_writes_after(&mut self, cutoff_ms: u64) -> usize {
        let mut lost = 0;
        let mut restored: BTreeMap<Vec<u8>, ()> = BTreeMap::new();
        while self.journal.back().is_some_and(|(t, _, _)| *t > cutoff_ms) {
            let Some((_, key, before)) = self.journal.pop_back() else { break };
            match before {
                Some(e) => self.data.insert(key.clone(), e),
                None => self.data.remove(&key),
            };
            self.touch(&key);
            restored.insert(key, ());
            lost += 1;
        }
        for key in restored.into_keys() {
            let now = self.data.get(&key).map(|e| e.val.clone());
            self.writes.push(Write { at_ms: self.stamp_ms, command: self.command, key, op: WriteOp::Lost(now) });
        }
        lost
    }
}
