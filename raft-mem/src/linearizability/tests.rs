#![allow(clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;

/// A register of integers: `Some(v)` writes v (and answers v), `None` reads.
struct Register;

impl Model for Register {
    type State = i64;
    type Input = Option<i64>;
    type Output = i64;

    fn init(&self) -> i64 {
        0
    }

    fn step(&self, state: &i64, input: &Option<i64>) -> (i64, i64) {
        match input {
            Some(v) => (*v, *v),
            None => (*state, *state),
        }
    }

    fn is_read_only(&self, input: &Option<i64>) -> bool {
        input.is_none()
    }
}

type Op = OpRecord<Option<i64>, i64>;

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn returned<I, O>(client: u64, op: I, output: O, call: u64, ret: u64) -> OpRecord<I, O> {
    OpRecord { client, op, call: ms(call), ret: Some(ms(ret)), outcome: OpOutcome::Ok(output) }
}

fn unknown<I, O>(client: u64, op: I, call: u64) -> OpRecord<I, O> {
    OpRecord { client, op, call: ms(call), ret: None, outcome: OpOutcome::Unknown }
}

fn write(client: u64, v: i64, call: u64, ret: u64) -> Op {
    returned(client, Some(v), v, call, ret)
}

fn read(client: u64, seen: i64, call: u64, ret: u64) -> Op {
    returned(client, None, seen, call, ret)
}

fn unknown_write(client: u64, v: i64, call: u64) -> Op {
    unknown(client, Some(v), call)
}

fn verdict(history: &[Op]) -> Verdict {
    check(&Register, history, Budget::default()).verdict
}

/// The explanation of a history that must not be linearizable.
fn explain(history: &[Op]) -> Explanation {
    match verdict(history) {
        Verdict::NotLinearizable(explanation) => explanation,
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn sequential_histories() {
    assert!(verdict(&[]).is_linearizable());
    assert!(verdict(&[write(1, 1, 0, 1), read(2, 1, 2, 3)]).is_linearizable());
    assert!(verdict(&[read(1, 0, 0, 1), write(1, 5, 2, 3), read(2, 5, 4, 5)]).is_linearizable());
}

#[test]
fn a_stale_read_is_caught_with_the_write_it_missed() {
    // Client 1's write returned before client 2 read the old value.
    let history = [write(1, 1, 0, 10), read(2, 0, 20, 30)];
    assert_eq!(explain(&history), Explanation { ops: vec![0, 1], minimal: true });
}

#[test]
fn a_lost_write_is_caught() {
    // The second write was acknowledged, then a read saw the first one's value.
    let history = [write(1, 1, 0, 1), write(1, 2, 2, 3), read(2, 1, 4, 5)];
    assert_eq!(explain(&history), Explanation { ops: vec![0, 1, 2], minimal: true });
}

#[test]
fn a_value_never_written_is_explained_by_the_read_alone() {
    let history = [write(1, 1, 0, 1), write(2, 2, 0, 3), read(3, 9, 4, 5), read(1, 2, 6, 7)];
    assert_eq!(explain(&history), Explanation { ops: vec![2], minimal: true });
}

#[test]
fn overlapping_writes_take_effect_in_either_order() {
    // Two writes overlap; a later read may see either, not the value before both.
    for last in [1, 2] {
        let history = [write(1, 1, 0, 10), write(2, 2, 1, 9), read(3, last, 11, 12)];
        assert!(verdict(&history).is_linearizable(), "read {last}");
    }
    let history = [write(1, 1, 0, 10), write(2, 2, 1, 9), read(3, 0, 11, 12)];
    let explanation = explain(&history);
    // Either write alone, completed before the read, contradicts it.
    assert_eq!(explanation.ops.len(), 2, "{explanation:?}");
    assert!(explanation.ops.contains(&2));
    assert!(explanation.minimal);
}

#[test]
fn reads_during_overlapping_writes_fix_their_order() {
    // Reads during the writes saw 2 then 1: write 2 took effect first, then write 1.
    let history = [
        write(1, 1, 0, 10),
        write(2, 2, 1, 9),
        read(3, 2, 2, 3),
        read(3, 1, 4, 5),
        read(4, 1, 11, 12),
    ];
    assert!(verdict(&history).is_linearizable());
    // ... and cannot then see 2 again.
    let mut flipped = history.to_vec();
    flipped.push(read(3, 2, 6, 7));
    let explanation = explain(&flipped);
    assert!(explanation.ops.contains(&5), "{explanation:?}");
    assert!(!explanation.ops.contains(&4), "the last read is irrelevant: {explanation:?}");
}

#[test]
fn an_unknown_write_may_take_effect_late_or_never() {
    // Not seen, then seen: it took effect between the reads, long after its call.
    let late = [unknown_write(1, 7, 0), read(2, 0, 5, 6), read(2, 7, 10, 11)];
    assert!(verdict(&late).is_linearizable());
    // Never seen: it never took effect.
    let never = [unknown_write(1, 7, 0), read(2, 0, 5, 6), read(2, 0, 10, 11)];
    assert!(verdict(&never).is_linearizable());
    // Seen, then not: impossible (nothing wrote 0 again).
    let flicker = [unknown_write(1, 7, 0), read(2, 7, 5, 6), read(2, 0, 10, 11)];
    // The write may be relaxed: even if it happened at any time, the reads contradict each other.
    assert_eq!(explain(&flicker), Explanation { ops: vec![1, 2], minimal: true });
    // Seen before it was called: impossible.
    let early = [read(2, 7, 0, 1), unknown_write(1, 7, 5)];
    // The read alone is the contradiction: nothing called before it returned wrote 7.
    assert_eq!(explain(&early), Explanation { ops: vec![0], minimal: true });
}

#[test]
fn an_unknown_write_can_reorder_after_completed_ones() {
    // The unknown write of 1 lands after the acknowledged write of 2.
    let history = [unknown_write(1, 1, 0), write(2, 2, 1, 2), read(3, 1, 3, 4)];
    assert!(verdict(&history).is_linearizable());
}

#[test]
fn unknown_reads_are_left_out() {
    let history = [write(1, 1, 0, 1), unknown(2, None, 2), unknown(3, None, 3)];
    let report = check(&Register, &history, Budget::default());
    assert_eq!((report.verdict, report.searched), (Verdict::Linearizable, 1));
}

#[test]
fn failed_operations_are_left_out() {
    // A write refused before it entered any log: a read that saw its value is stale.
    let mut refused = unknown_write(1, 1, 0);
    (refused.ret, refused.outcome) = (Some(ms(1)), OpOutcome::Failed);
    let history = [refused, read(2, 1, 2, 3)];
    let report = check(&Register, &history, Budget::default());
    let expected = Verdict::NotLinearizable(Explanation { ops: vec![1], minimal: true });
    assert_eq!((report.verdict, report.searched), (expected, 1));
}

/// `clients` clients each doing `per_client` operations that overlap their neighbours'.
fn busy_history(clients: u64, per_client: u64, unknown_every: u64) -> Vec<Op> {
    let mut history = Vec::new();
    let mut value = 0;
    for i in 0..clients * per_client {
        let client = i % clients;
        let (call, ret) = (10 * i, 10 * i + 15);
        if i % 3 == 0 {
            value = i as i64;
            if unknown_every > 0 && i % unknown_every == 0 {
                history.push(unknown_write(client, value, call));
            } else {
                history.push(write(client, value, call, ret));
            }
        } else {
            history.push(read(client, value, call, ret));
        }
    }
    history
}

#[test]
fn a_large_concurrent_history_is_checked_within_a_small_budget() {
    let history = busy_history(4, 500, 0);
    let report = check(&Register, &history, Budget { steps: 20_000, ..Budget::default() });
    assert_eq!(report.verdict, Verdict::Linearizable);
    assert!(report.steps <= 20_000);
}

#[test]
fn an_exhausted_budget_answers_unknown() {
    let history = busy_history(4, 500, 7);
    let report = check(&Register, &history, Budget { steps: 100, ..Budget::default() });
    assert_eq!((report.verdict, report.steps), (Verdict::Unknown, 100));
    let report = check(&Register, &history, Budget { steps: 0, ..Budget::default() });
    assert_eq!(report.verdict, Verdict::Unknown);
    // Memory is bounded too: too few configurations to remember is as good as no time.
    let report = check(&Register, &history, Budget { steps: u64::MAX, states: 10 });
    assert_eq!(report.verdict, Verdict::Unknown);
    // With enough budget, the same history is decided.
    assert!(verdict(&history).is_linearizable());
}

#[test]
fn a_violation_deep_in_a_long_history_is_explained_by_the_few_operations_involved() {
    let mut history = busy_history(4, 100, 11);
    // A read long after the last write, of the value before it.
    let last = history.iter().rev().find_map(|op| op.op).unwrap_or_default();
    let stale = history.iter().rev().filter_map(|op| op.op).nth(1).unwrap_or_default();
    history.push(read(9, stale, 100_000, 100_001));
    let explanation = explain(&history);
    let ops: Vec<_> = explanation.ops.iter().map(|&i| &history[i]).collect();
    assert!(explanation.minimal);
    // The last write, the stale read, and what pins the stale value before the last write
    // (here an unknown write of it, which could otherwise land late, and a read that saw it).
    assert_eq!(explanation.ops.len(), 4, "{ops:?}");
    assert!(ops.iter().any(|op| op.op == Some(last)), "{ops:?}");
    assert!(ops.iter().all(|op| op.call >= ms(3_900)), "{ops:?}");
    assert_eq!(explanation.ops.last(), Some(&(history.len() - 1)));
}

#[test]
fn the_check_is_deterministic() {
    let history = busy_history(3, 200, 5);
    let first = check(&Register, &history, Budget { steps: 5_000, ..Budget::default() });
    assert_eq!(first, check(&Register, &history, Budget { steps: 5_000, ..Budget::default() }));
}

/// A map of registers, partitioned by key: `(key, Some(v))` writes, `(key, None)` reads.
struct Map;

impl Model for Map {
    type State = BTreeMap<u8, i64>;
    type Input = (u8, Option<i64>);
    type Output = i64;

    fn init(&self) -> Self::State {
        BTreeMap::new()
    }

    fn step(&self, state: &Self::State, (key, input): &(u8, Option<i64>)) -> (Self::State, i64) {
        let mut next = state.clone();
        if let Some(v) = input {
            next.insert(*key, *v);
        }
        let output = next.get(key).copied().unwrap_or(0);
        (next, output)
    }

    fn partition(&self, history: &[OpRecord<Self::Input, i64>]) -> Vec<Vec<usize>> {
        let mut parts: BTreeMap<u8, Vec<usize>> = BTreeMap::new();
        for (i, record) in history.iter().enumerate() {
            parts.entry(record.op.0).or_default().push(i);
        }
        parts.into_values().collect()
    }
}

#[test]
fn a_partitioned_model_checks_each_part_alone() {
    let op = |key, input, output, call, ret| returned(0, (key, input), output, call, ret);
    let history = [
        op(b'a', Some(1), 1, 0, 1),
        op(b'b', None, 0, 2, 3),
        op(b'a', None, 1, 4, 5),
        op(b'b', Some(4), 4, 6, 7),
    ];
    let report = check(&Map, &history, Budget::default());
    assert_eq!((report.verdict, report.parts, report.searched), (Verdict::Linearizable, 2, 4));
    // A stale read of b; the explanation names operations of the whole history.
    let mut stale = history.to_vec();
    stale.push(op(b'b', None, 0, 8, 9));
    let report = check(&Map, &stale, Budget::default());
    assert_eq!(
        report.verdict,
        Verdict::NotLinearizable(Explanation { ops: vec![3, 4], minimal: true })
    );
}

/// Linearizability by brute force: tries every order of every subset of the unknown operations.
fn brute_force(history: &[Op]) -> bool {
    fn search(history: &[Op], left: &mut Vec<usize>, state: i64) -> bool {
        if left.iter().all(|&i| history[i].outcome.ok().is_none()) {
            return true;
        }
        for position in 0..left.len() {
            let op = &history[left[position]];
            // Some operation left returned before this one was called: it must go first.
            let blocked = left.iter().any(|&j| history[j].ret.is_some_and(|at| at < op.call));
            let (next, output) = Register.step(&state, &op.op);
            if blocked || op.outcome.ok().is_some_and(|seen| *seen != output) {
                continue;
            }
            let taken = left.remove(position);
            let found = search(history, left, next);
            left.insert(position, taken);
            if found {
                return true;
            }
        }
        false
    }
    search(history, &mut (0..history.len()).collect(), 0)
}

#[test]
fn verdicts_agree_with_brute_force_on_small_random_histories() {
    use rand_chacha::ChaCha8Rng;
    use rand_core::{RngCore, SeedableRng};
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let mut below = |n: u64| rng.next_u64() % n;
    let (mut linearizable, mut not) = (0, 0);
    for _ in 0..2_000 {
        let history: Vec<Op> = (0..1 + below(7))
            .map(|_| {
                let (client, call) = (below(3), below(20));
                let ret = call + below(8);
                match below(6) {
                    0 => unknown_write(client, below(3) as i64, call),
                    1 | 2 => write(client, 1 + below(2) as i64, call, ret),
                    _ => read(client, below(3) as i64, call, ret),
                }
            })
            .collect();
        let report = check(&Register, &history, Budget::default());
        match &report.verdict {
            Verdict::Linearizable => linearizable += 1,
            Verdict::NotLinearizable(explanation) => {
                not += 1;
                assert!(explanation.minimal && !explanation.ops.is_empty(), "{history:?}");
            }
            Verdict::Unknown => panic!("a tiny history exhausted the budget: {history:?}"),
        }
        assert_eq!(report.verdict.is_linearizable(), brute_force(&history), "{history:?}");
    }
    // Both verdicts were exercised.
    assert!(linearizable > 200 && not > 200, "{linearizable} linearizable, {not} not");
}
