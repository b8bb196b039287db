//! Histories of a key-value map: the per-key register model, the split by key, and a text
//! format for saving failing histories.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{check_operations, Model, Operation, Outcome};

/// An operation on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvInput {
    /// Read the key.
    Get,
    /// Write a value.
    Put(Bytes),
    /// Remove the key.
    Delete,
    /// Compare-and-swap (`None`: absent).
    Cas {
        /// The value required.
        expected: Option<Bytes>,
        /// The value installed (`None`: remove).
        new: Option<Bytes>,
    },
}

/// The observed answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOutput {
    /// The value read.
    Value(Option<Bytes>),
    /// A put completed.
    Written,
    /// A delete completed; whether the key existed.
    Deleted(bool),
    /// A compare-and-swap completed; whether it swapped.
    Cas(bool),
}

/// One operation of a key-value history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvOperation {
    /// The client that ran it.
    pub client: u64,
    /// The key.
    pub key: Bytes,
    /// What was asked.
    pub input: KvInput,
    /// What was answered; `None` if the outcome is unknown.
    pub output: Option<KvOutput>,
    /// Invocation time (since the start of the test).
    pub call: Duration,
    /// Response time; `None` if the outcome is unknown.
    pub ret: Option<Duration>,
}

/// One key as a register over interned values (`u32` ids; absent is `None`).
struct Register;

#[derive(Debug)]
enum In {
    Get,
    Put(u32),
    Delete,
    Cas(Option<u32>, Option<u32>),
}

#[derive(Debug)]
enum Out {
    Value(Option<u32>),
    Written,
    Deleted(bool),
    Cas(bool),
}

impl Model for Register {
    type State = Option<u32>;
    type Input = In;
    type Output = Out;

    fn init(&self) -> Option<u32> {
        None
    }

    fn step(&self, state: &Option<u32>, input: &In, output: Option<&Out>) -> Option<Option<u32>> {
        match (input, output) {
            (In::Get, None) => Some(*state),
            (In::Get, Some(Out::Value(v))) => (v == state).then_some(*state),
            (In::Put(v), None | Some(Out::Written)) => Some(Some(*v)),
            (In::Delete, None) => Some(None),
            (In::Delete, Some(Out::Deleted(existed))) => {
                (*existed == state.is_some()).then_some(None)
            }
            (In::Cas(expected, new), output) => {
                let matches = expected == state;
                match output {
                    Some(Out::Cas(swapped)) if *swapped != matches => None,
                    None | Some(Out::Cas(_)) => Some(if matches { *new } else { *state }),
                    Some(_) => None,
                }
            }
            _ => None,
        }
    }
}

#[derive(Default)]
struct Interner(HashMap<Bytes, u32>);

impl Interner {
    fn id(&mut self, value: &Bytes) -> u32 {
        let next = self.0.len() as u32;
        *self.0.entry(value.clone()).or_insert(next)
    }
    fn opt(&mut self, value: &Option<Bytes>) -> Option<u32> {
        value.as_ref().map(|v| self.id(v))
    }
}

fn intern(op: &KvOperation, values: &mut Interner) -> Operation<In, Out> {
    let input = match &op.input {
        KvInput::Get => In::Get,
        KvInput::Put(v) => In::Put(values.id(v)),
        KvInput::Delete => In::Delete,
        KvInput::Cas { expected, new } => In::Cas(values.opt(expected), values.opt(new)),
    };
    let output = op.output.as_ref().map(|o| match o {
        KvOutput::Value(v) => Out::Value(values.opt(v)),
        KvOutput::Written => Out::Written,
        KvOutput::Deleted(existed) => Out::Deleted(*existed),
        KvOutput::Cas(swapped) => Out::Cas(*swapped),
    });
    Operation { client: op.client, input, output, call: op.call, ret: op.ret }
}

/// The verdict for a whole history.
#[derive(Clone, Debug)]
pub struct KvReport {
    /// The verdict of each key.
    pub keys: BTreeMap<Bytes, Outcome>,
    /// Operations checked (reads with unknown outcome are dropped: they cannot matter).
    pub checked: usize,
    /// How long the check took.
    pub elapsed: Duration,
}

impl KvReport {
    /// The overall verdict: not linearizable if any key is not, else unknown if any key is
    /// unknown, else linearizable.
    pub fn outcome(&self) -> Outcome {
        let mut overall = Outcome::Linearizable;
        for outcome in self.keys.values() {
            match outcome {
                Outcome::NotLinearizable { .. } => return outcome.clone(),
                Outcome::Unknown => overall = Outcome::Unknown,
                Outcome::Linearizable => {}
            }
        }
        overall
    }
}

/// Checks a history of a map key by key, within `budget` overall.
pub fn check_kv_history(history: &[KvOperation], budget: Duration) -> KvReport {
    let started = Instant::now();
    let mut by_key: BTreeMap<Bytes, Vec<&KvOperation>> = BTreeMap::new();
    for op in history {
        if op.output.is_none() && op.input == KvInput::Get {
            continue;
        }
        by_key.entry(op.key.clone()).or_default().push(op);
    }
    let checked = by_key.values().map(Vec::len).sum();
    let mut keys = BTreeMap::new();
    for (key, ops) in by_key {
        let mut values = Interner::default();
        let ops: Vec<_> = ops.iter().map(|op| intern(op, &mut values)).collect();
        let left = budget.saturating_sub(started.elapsed());
        keys.insert(key, check_operations(&Register, &ops, left));
    }
    KvReport { keys, checked, elapsed: started.elapsed() }
}

fn show(value: Option<&Bytes>) -> String {
    match value {
        Some(v) => format!("{:?}", String::from_utf8_lossy(v)),
        None => "nil".into(),
    }
}

/// Formats a history, one operation per line, sorted by invocation time.
pub fn format_history(history: &[KvOperation]) -> String {
    let mut ops: Vec<&KvOperation> = history.iter().collect();
    ops.sort_by_key(|op| op.call);
    let mut text = String::from("# client key call_us return_us input -> output\n");
    for op in ops {
        let input = match &op.input {
            KvInput::Get => "get".to_owned(),
            KvInput::Put(v) => format!("put {}", show(Some(v))),
            KvInput::Delete => "delete".to_owned(),
            KvInput::Cas { expected, new } => {
                format!("cas {} {}", show(expected.as_ref()), show(new.as_ref()))
            }
        };
        let output = match &op.output {
            None => "unknown".to_owned(),
            Some(KvOutput::Value(v)) => show(v.as_ref()),
            Some(KvOutput::Written) => "ok".to_owned(),
            Some(KvOutput::Deleted(existed)) => format!("deleted existed={existed}"),
            Some(KvOutput::Cas(swapped)) => format!("swapped={swapped}"),
        };
        let ret = op.ret.map_or("-".to_owned(), |r| r.as_micros().to_string());
        let _ = writeln!(
            text,
            "{} {} {} {} {} -> {}",
            op.client,
            show(Some(&op.key)),
            op.call.as_micros(),
            ret,
            input,
            output
        );
    }
    text
}

/// Writes [`format_history`] to `path`.
pub fn save_history(path: &Path, history: &[KvOperation]) -> std::io::Result<()> {
    std::fs::write(path, format_history(history))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn op(key: &str, input: KvInput, output: Option<KvOutput>, call: u64, ret: u64) -> KvOperation {
        KvOperation {
            client: 0,
            key: b(key),
            input,
            ret: output.as_ref().map(|_| Duration::from_millis(ret)),
            output,
            call: Duration::from_millis(call),
        }
    }

    fn verdict(history: &[KvOperation]) -> Outcome {
        check_kv_history(history, Duration::from_secs(5)).outcome()
    }

    #[test]
    fn keys_are_independent() {
        let history = [
            op("a", KvInput::Put(b("1")), Some(KvOutput::Written), 0, 1),
            op("b", KvInput::Get, Some(KvOutput::Value(None)), 2, 3),
            op("a", KvInput::Get, Some(KvOutput::Value(Some(b("1")))), 4, 5),
        ];
        assert!(verdict(&history).is_linearizable());
        let lost = [
            op("a", KvInput::Put(b("1")), Some(KvOutput::Written), 0, 1),
            op("a", KvInput::Get, Some(KvOutput::Value(None)), 2, 3),
        ];
        assert!(matches!(verdict(&lost), Outcome::NotLinearizable { .. }));
    }

    #[test]
    fn cas_and_delete_follow_the_register() {
        let cas =
            |e: Option<&str>, n: Option<&str>| KvInput::Cas { expected: e.map(b), new: n.map(b) };
        let ok = [
            op("k", cas(None, Some("x")), Some(KvOutput::Cas(true)), 0, 1),
            op("k", cas(None, Some("y")), Some(KvOutput::Cas(false)), 2, 3),
            op("k", KvInput::Delete, Some(KvOutput::Deleted(true)), 4, 5),
            op("k", KvInput::Delete, Some(KvOutput::Deleted(false)), 6, 7),
        ];
        assert!(verdict(&ok).is_linearizable());
        // Two sequential swaps from the same expected value cannot both succeed.
        let double = [
            op("k", cas(None, Some("x")), Some(KvOutput::Cas(true)), 0, 1),
            op("k", cas(None, Some("y")), Some(KvOutput::Cas(true)), 2, 3),
        ];
        assert!(matches!(verdict(&double), Outcome::NotLinearizable { .. }));
        // An unknown swap may explain a later read.
        let unknown = [
            op("k", cas(None, Some("x")), None, 0, 0),
            op("k", KvInput::Get, Some(KvOutput::Value(Some(b("x")))), 2, 3),
        ];
        assert!(verdict(&unknown).is_linearizable());
    }

    #[test]
    fn histories_format_one_line_per_operation() {
        let history = [op("k", KvInput::Put(b("v")), None, 0, 0)];
        let text = format_history(&history);
        assert!(text.contains("\"k\" 0 - put \"v\" -> unknown"), "{text}");
    }
}
