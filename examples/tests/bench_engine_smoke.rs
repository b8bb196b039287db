//! `bench-engine` runs end to end on a few puts and prints a row per shape, each with a
//! positive cost; a bad argument is refused. Not timed (the engine runs in one thread with no
//! IO; the run ends by itself).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

#[test]
fn prints_a_row_per_shape() {
    let out = Command::new(env!("CARGO_BIN_EXE_bench-engine"))
        .args(["--puts", "256", "--rounds", "1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| groups"))
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), 9, "{stdout}");
    for row in &rows {
        let us: f64 = row[2].parse().unwrap();
        assert!(us > 0.0, "{row:?}");
    }
    let base = rows.iter().find(|r| r[0] == "1" && r[1] == "64").unwrap();
    assert_eq!(base[3], "1.0x", "{stdout}");
}

#[test]
fn refuses_a_bad_argument() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_bench-engine")).args(["--puts", "0"]).output().unwrap();
    assert!(!out.status.success());
    let out =
        Command::new(env!("CARGO_BIN_EXE_bench-engine")).args(["--bogus", "1"]).output().unwrap();
    assert!(!out.status.success());
}
