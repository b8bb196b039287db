//! `bench-multi` runs end to end: three node processes with two groups, four clients, one
//! measured second, with a task per group's main loop and with a host loop; it must exit
//! successfully and print a row for each configuration (the host-loop one with its groups
//! stepped per pass), and its idle mode must print the per-node and per-pair tables. Not
//! timed: the only time bound is a hang guard.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A hang guard, far above what the run takes even in a debug build on a loaded machine.
const HANG_GUARD: Duration = Duration::from_secs(600);

/// Runs bench-multi with `args` under a fresh directory; its stdout.
fn bench_multi(args: &[&str]) -> String {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bench-multi"))
        .args(args)
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).unwrap();
        out
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > HANG_GUARD {
            child.kill().unwrap();
            panic!("bench-multi {args:?} did not finish within the hang guard");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = reader.join().unwrap();
    assert!(status.success(), "bench-multi {args:?} failed ({status}); stdout:\n{out}");
    // The run's data is removed at the end.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "left data behind");
    out
}

#[test]
fn two_groups_four_clients_print_a_row() {
    // 1 group with 2 clients too: the base of the 2-group, 4-client row's "same clients per
    // group" ratio.
    let args = ["--groups", "1,2", "--clients", "2,4", "--seconds", "1", "--rounds", "1"];
    let out = bench_multi(&[&args[..], &["--host-loop", "0,1"]].concat());
    let cells_of = |row: &str| -> Vec<String> {
        row.trim_matches('|').split('|').map(|c| c.trim().to_owned()).collect()
    };
    let puts_of = |groups: u64, host: &str, clients: usize| -> f64 {
        let prefix = format!("| {groups} | {host} | {clients} |");
        let row = out
            .lines()
            .find(|line| line.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no row {prefix} in:\n{out}"));
        cells_of(row)[3].parse().unwrap()
    };
    for host in ["tasks", "loop"] {
        let row = out
            .lines()
            .find(|line| line.starts_with(&format!("| 2 | {host} | 4 |")))
            .unwrap_or_else(|| panic!("no row for 2 groups ({host}) and 4 clients in:\n{out}"));
        // groups, host, clients, puts/s, ratio, ratio at the same clients per group, p50, p99,
        // syncs/s, entries/sync, KiB/sync, CPU s, CPU µs/put, RPCs/put, frames/put, failed, k
        // (group steps per host-loop pass)
        let cells = cells_of(row);
        assert_eq!(cells.len(), 17, "{row}");
        let frames: f64 = cells[14].parse().unwrap();
        assert!(frames > 0.0, "no request frame sent: {row}");
        let puts: f64 = cells[3].parse().unwrap();
        assert!(puts > 0.0, "no put acknowledged: {row}");
        // Both ratios: against 1 group with 4 clients, and with 2 (the printed puts/s are
        // rounded, the ratios are not: a margin for that and the ratios' own rounding).
        let ratio = |cell: &str| -> f64 { cell.trim_end_matches('x').parse().unwrap() };
        let expected = |base: f64| puts / base.max(1.0);
        let near = |cell: &str, base: f64| (ratio(cell) - expected(base)).abs() <= 0.02;
        assert!(near(&cells[4], puts_of(1, host, 4)), "vs 1 group with 4 clients: {row}");
        assert!(near(&cells[5], puts_of(1, host, 2)), "vs 1 group with 2 clients: {row}");
        assert_eq!(cells[8].split(" / ").count(), 3, "one syncs/s figure per node: {row}");
        if host == "loop" {
            let k: Vec<f64> = cells[16].split(" / ").map(|k| k.parse().unwrap()).collect();
            assert!(k.len() == 3 && k.iter().all(|&k| k > 0.0), "k per node: {row}");
        } else {
            assert_eq!(cells[16], "-", "{row}");
        }
    }
}

#[test]
fn idle_mode_prints_cpu_and_rpcs_per_pair() {
    let out = bench_multi(&["--idle-groups", "3", "--seconds", "1"]);
    for node in 1..=3 {
        assert!(out.lines().any(|l| l.starts_with(&format!("| {node} | "))), "node {node}:\n{out}");
    }
    for pair in ["1-2", "1-3", "2-3"] {
        let line = out.lines().find(|l| l.starts_with(&format!("| {pair} | ")));
        let rpcs: f64 = line
            .unwrap_or_else(|| panic!("no pair {pair} in:\n{out}"))
            .trim_matches('|')
            .split('|')
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // A number (idle groups that quiesce may send none at all).
        assert!(rpcs >= 0.0, "pair {pair}: {rpcs}");
    }
}
