//! Histories of a key-value map: the per-key register model, the split by key, and a text
//! format for saving failing histories.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::kv::command::{Op, OpResult};
use bytes::Bytes;
use raft_mem::linearizability::{check, Budget, Explanation, Model, OpOutcome, OpRecord, Report};

/// One operation of a key-value history: the service's own [`Op`] and [`OpResult`].
pub type KvOperation = OpRecord<Op, OpResult>;

/// The key an operation touches (`None` for a session registration or a node's tombstone,
/// which are not operations of the map).
pub fn key_of(op: &Op) -> Option<&Bytes> {
    op.key()
}

/// The sequential specification of the map, partitioned by key: each part is checked alone, and
/// its state is the value of its one key (`None`: absent). Session registrations belong to no
/// part: they are the client's bookkeeping, not operations of the map, and are not checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct KvModel;

impl Model for KvModel {
    type State = Option<Bytes>;
    type Input = Op;
    type Output = OpResult;

    fn init(&self) -> Option<Bytes> {
        None
    }

    fn step(&self, state: &Option<Bytes>, op: &Op) -> (Option<Bytes>, OpResult) {
        match op {
            Op::Get { .. } => (state.clone(), OpResult::Value(state.clone())),
            Op::Put { value, .. } => (Some(value.clone()), OpResult::Written),
            Op::Delete { .. } => (None, OpResult::Deleted { existed: state.is_some() }),
            Op::Cas { expected, new, .. } if expected == state => {
                (new.clone(), OpResult::Cas { swapped: true })
            }
            Op::Cas { .. } => (state.clone(), OpResult::Cas { swapped: false }),
            // Never searched (no part holds it); answered as a no-op.
            Op::Register { id } => {
                (state.clone(), OpResult::Registered { id: *id, incarnation: 0 })
            }
            Op::Tombstone { id } => (state.clone(), OpResult::Tombstoned { id: *id }),
        }
    }

    fn partition(&self, history: &[KvOperation]) -> Vec<Vec<usize>> {
        let mut by_key: BTreeMap<&Bytes, Vec<usize>> = BTreeMap::new();
        for (i, op) in history.iter().enumerate() {
            if let Some(key) = key_of(&op.op) {
                by_key.entry(key).or_default().push(i);
            }
        }
        by_key.into_values().collect()
    }

    fn is_read_only(&self, op: &Op) -> bool {
        op.is_read()
    }
}

/// Checks a history of the map, key by key, within `budget`.
pub fn check_kv_history(history: &[KvOperation], budget: Budget) -> Report {
    check(&KvModel, history, budget)
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
        let input = match &op.op {
            Op::Register { id } => format!("register {id:x}"),
            Op::Tombstone { id } => format!("tombstone {id}"),
            Op::Get { .. } => "get".to_owned(),
            Op::Put { value, .. } => format!("put {}", show(Some(value))),
            Op::Delete { .. } => "delete".to_owned(),
            Op::Cas { expected, new, .. } => {
                format!("cas {} {}", show(expected.as_ref()), show(new.as_ref()))
            }
        };
        let ret = op.ret.map_or("-".to_owned(), |at| at.as_micros().to_string());
        let output = match &op.outcome {
            OpOutcome::Unknown => "unknown".to_owned(),
            OpOutcome::Failed => "failed".to_owned(),
            OpOutcome::Ok(output) => match output {
                OpResult::Registered { incarnation, .. } => format!("registered {incarnation}"),
                OpResult::Value(v) => show(v.as_ref()),
                OpResult::Written => "ok".to_owned(),
                OpResult::Deleted { existed } => format!("deleted existed={existed}"),
                OpResult::Cas { swapped } => format!("swapped={swapped}"),
                OpResult::Tombstoned { id } => format!("tombstoned {id}"),
            },
        };
        let _ = writeln!(
            text,
            "{} {} {} {} {} -> {}",
            op.client,
            show(key_of(&op.op)),
            op.call.as_micros(),
            ret,
            input,
            output
        );
    }
    text
}

/// [`format_history`] of the operations an explanation names.
pub fn format_explanation(history: &[KvOperation], explanation: &Explanation) -> String {
    let ops: Vec<KvOperation> =
        explanation.ops.iter().filter_map(|&i| history.get(i).cloned()).collect();
    format_history(&ops)
}

/// Writes [`format_history`] to `path`.
pub fn save_history(path: &Path, history: &[KvOperation]) -> std::io::Result<()> {
    std::fs::write(path, format_history(history))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use raft_mem::linearizability::Verdict;

    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn get(key: &str) -> Op {
        Op::Get { key: b(key) }
    }

    fn op(op: Op, output: Option<OpResult>, call: u64, ret: u64) -> KvOperation {
        let (ret, outcome) = match output {
            Some(output) => (Some(Duration::from_millis(ret)), OpOutcome::Ok(output)),
            None => (None, OpOutcome::Unknown),
        };
        KvOperation { client: 0, op, call: Duration::from_millis(call), ret, outcome }
    }

    fn verdict(history: &[KvOperation]) -> Verdict {
        check_kv_history(history, Budget::default()).verdict
    }

    #[test]
    fn keys_are_independent() {
        let put = |key: &str, value: &str| Op::Put { key: b(key), value: b(value) };
        let history = [
            op(put("a", "1"), Some(OpResult::Written), 0, 1),
            op(get("b"), Some(OpResult::Value(None)), 2, 3),
            op(get("a"), Some(OpResult::Value(Some(b("1")))), 4, 5),
        ];
        let report = check_kv_history(&history, Budget::default());
        assert_eq!((report.verdict, report.parts), (Verdict::Linearizable, 2));
        let lost = [
            op(put("a", "1"), Some(OpResult::Written), 0, 1),
            op(get("a"), Some(OpResult::Value(None)), 2, 3),
        ];
        assert!(matches!(verdict(&lost), Verdict::NotLinearizable { .. }));
    }

    #[test]
    fn cas_and_delete_follow_the_register() {
        let cas = |e: Option<&str>, n: Option<&str>| Op::Cas {
            key: b("k"),
            expected: e.map(b),
            new: n.map(b),
        };
        let delete = || Op::Delete { key: b("k") };
        let ok = [
            op(cas(None, Some("x")), Some(OpResult::Cas { swapped: true }), 0, 1),
            op(cas(None, Some("y")), Some(OpResult::Cas { swapped: false }), 2, 3),
            op(delete(), Some(OpResult::Deleted { existed: true }), 4, 5),
            op(delete(), Some(OpResult::Deleted { existed: false }), 6, 7),
        ];
        assert!(verdict(&ok).is_linearizable());
        // Two sequential swaps from the same expected value cannot both succeed.
        let double = [
            op(cas(None, Some("x")), Some(OpResult::Cas { swapped: true }), 0, 1),
            op(cas(None, Some("y")), Some(OpResult::Cas { swapped: true }), 2, 3),
        ];
        assert!(matches!(verdict(&double), Verdict::NotLinearizable { .. }));
        // An unknown swap may explain a later read.
        let unknown = [
            op(cas(None, Some("x")), None, 0, 0),
            op(get("k"), Some(OpResult::Value(Some(b("x")))), 2, 3),
        ];
        assert!(verdict(&unknown).is_linearizable());
    }

    #[test]
    fn histories_format_one_line_per_operation() {
        let history = [op(Op::Put { key: b("k"), value: b("v") }, None, 0, 0)];
        let text = format_history(&history);
        assert!(text.contains("\"k\" 0 - put \"v\" -> unknown"), "{text}");
    }
}
