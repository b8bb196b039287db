//! Sharding the key-value service over Raft groups (`kv-node --groups N`): which group a key
//! belongs to, and the number of groups as part of a data directory's identity.
//!
//! A key belongs to group [`group_of`]`(key, N)`: the FNV-1a 64-bit hash of the key's bytes,
//! modulo N. The function is fixed (no per-process seed, unlike std's `RandomState`), so every
//! client and node, of any build, maps a key to the same group. N is therefore part of the
//! cluster's identity: with another N, keys would map to groups that do not hold them. A node
//! stores N in `DATA_DIR/groups` at its first start (for N > 1) and refuses to start with
//! another N ([`GroupsError::Mismatch`]). A single-group node (N = 1) writes no such file and
//! keeps the single-group layout (`DATA_DIR/raft`, `DATA_DIR/snapshots`); a sharded node keeps
//! every group in one LMDB environment in `DATA_DIR/raft-groups` ([`GROUPS_STORE_DIR`]).

use std::path::{Path, PathBuf};

use raft_core::GroupId;

/// The file in the data directory that holds the number of groups of a sharded node.
pub const GROUPS_FILE: &str = "groups";
/// The directory (in the data directory) of a sharded node's LMDB environment.
pub const GROUPS_STORE_DIR: &str = "raft-groups";
/// The directory (in the data directory) of a single-group node's log store.
pub const SINGLE_STORE_DIR: &str = "raft";
/// The most groups one service may have (`--groups`).
pub const MAX_GROUPS: u32 = 1024;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The group of `key` in a service of `groups` groups: FNV-1a 64 of the key's bytes, modulo
/// `groups` (group 0 if `groups` is 0 or 1). Stable across processes, platforms and releases.
pub fn group_of(key: &[u8], groups: u32) -> GroupId {
    if groups <= 1 {
        return 0;
    }
    let hash = key
        .iter()
        .fold(FNV_OFFSET_BASIS, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME));
    hash % u64::from(groups)
}

/// Why a data directory cannot be used with the configured number of groups.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupsError {
    /// The data directory holds the state of a service with another number of groups.
    #[error(
        "{path} belongs to a service of {stored} group(s), but --groups is {configured}: the \
         number of groups is fixed when a cluster is created (keys map to groups by it); start \
         with --groups {stored}"
    )]
    Mismatch {
        /// The file or directory that says so.
        path: PathBuf,
        /// The number of groups the data directory was created with.
        stored: u32,
        /// The number given with `--groups`.
        configured: u32,
    },
    /// The file exists but does not hold a number of groups.
    #[error("{path}: not a number of groups: `{text}`")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What it holds.
        text: String,
    },
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Checks that `data_dir` may run a service of `configured` groups, and records the number for
/// later starts (for more than one group). Refuses a data directory created with another
/// number: one whose `groups` file holds another number, a single-group directory (it has
/// `raft/` and no `groups` file) for `configured > 1`, and a sharded one for 1.
pub fn settle(data_dir: &Path, configured: u32) -> Result<(), GroupsError> {
    let path = data_dir.join(GROUPS_FILE);
    let stored = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text.trim().parse::<u32>().map_err(|_| GroupsError::Malformed {
            path: path.clone(),
            text: text.trim().chars().take(64).collect(),
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(GroupsError::Io { path, source }),
    };
    let mismatch = |path: PathBuf, stored| GroupsError::Mismatch { path, stored, configured };
    match stored {
        Some(stored) if stored != configured => Err(mismatch(path, stored)),
        Some(_) => Ok(()),
        None if configured > 1 && data_dir.join(SINGLE_STORE_DIR).exists() => {
            Err(mismatch(data_dir.join(SINGLE_STORE_DIR), 1))
        }
        None if configured > 1 => {
            super::cluster_id::write_whole(data_dir, GROUPS_FILE, &format!("{configured}\n"))
                .map_err(|source| GroupsError::Io { path, source })
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_map_to_groups_by_fnv1a() {
        // FNV-1a 64 reference values: "" and "a".
        assert_eq!(group_of(b"", u32::MAX), 0xcbf2_9ce4_8422_2325 % u64::from(u32::MAX));
        assert_eq!(group_of(b"a", u32::MAX), 0xaf63_dc4c_8601_ec8c % u64::from(u32::MAX));
        assert_eq!(group_of(b"anything", 1), 0);
        assert_eq!(group_of(b"anything", 0), 0);
        let mut seen = [0usize; 4];
        for i in 0..400 {
            seen[group_of(format!("key-{i}").as_bytes(), 4) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 60), "keys spread over the groups: {seen:?}");
    }

    #[test]
    fn the_number_of_groups_is_kept_and_another_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sharded = dir.path().join("sharded");
        settle(&sharded, 4).unwrap();
        assert_eq!(std::fs::read_to_string(sharded.join(GROUPS_FILE)).unwrap(), "4\n");
        settle(&sharded, 4).unwrap();
        for other in [1, 3] {
            let error = settle(&sharded, other).unwrap_err();
            assert!(matches!(error, GroupsError::Mismatch { stored: 4, configured, .. }
                if configured == other));
        }
        // A single-group directory writes nothing and cannot become a sharded one.
        let single = dir.path().join("single");
        settle(&single, 1).unwrap();
        assert!(!single.join(GROUPS_FILE).exists());
        std::fs::create_dir_all(single.join(SINGLE_STORE_DIR)).unwrap();
        let error = settle(&single, 2).unwrap_err();
        assert!(matches!(error, GroupsError::Mismatch { stored: 1, configured: 2, .. }));
        assert!(error.to_string().contains("--groups 1"), "{error}");
        std::fs::write(sharded.join(GROUPS_FILE), "x").unwrap();
        assert!(matches!(settle(&sharded, 4), Err(GroupsError::Malformed { .. })));
    }
}
