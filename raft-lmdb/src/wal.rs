//! The write-ahead file (`raft-wal`) in front of LMDB: pure appends committed with one sync.
//!
//! An LMDB commit costs two syncs (the data pages, then the meta page that points to them). A
//! writer cycle whose requests are all pure appends (entries only: no hard state, no
//! truncation, contiguous after the group's last entry) is instead encoded as one *frame*,
//! written at the file's write offset and made durable with one `fdatasync`; its entries are
//! then *pending*: durable in the file, not yet in LMDB. Any other cycle (hard state,
//! truncation, purge, reset, opening or removing a group, a frame that does not fit) is one
//! LMDB transaction that first applies every pending entry through the normal append path (a
//! *checkpoint*), then the cycle's requests, and writes the next *generation* `G + 1` into the
//! metadata database ([`WAL_GENERATION_KEY`]); after its commit the file is written again from
//! offset 0 with frames of generation `G + 1`. The file therefore only ever holds pure appends on
//! top of LMDB's committed state. A clean close (the writer stopping, not poisoned) checkpoints
//! too.
//!
//! # The file
//!
//! Preallocated at open to its size ([`crate::LmdbOptions::with_wal_bytes`], at most
//! [`crate::MAX_WAL_BYTES`]) by *writing* zeros (not `fallocate`: an unwritten extent makes each
//! later `fdatasync` convert it, which is journaled), synced, and the directory synced (at
//! every open, before any frame is acknowledged: a run that crashed between creating the file
//! and syncing its directory entry is covered by the next): a frame's `pwrite` + `fdatasync`
//! then flushes data only. A file larger than its size (an earlier run's, with a larger
//! option) has all its frames read at open and is truncated to the size only after the open's checkpoint
//! committed the frames it held ([`Wal::shrink`]); if that checkpoint fails the open fails and
//! the file keeps every frame.
//!
//! # Whose frames
//!
//! Each environment has a random 64-bit *id* in its metadata database ([`WAL_ID_KEY`]),
//! committed before its first frame is written (an environment without one, created before
//! the id existed, gets one at open, and whatever its file holds is then foreign: never
//! replayed, overwritten by the next frames). Every frame carries the id, under its CRC, and
//! recovery accepts only frames of LMDB's id and generation: a file left by another
//! environment (LMDB's files removed or replaced, the directory reused) is never replayed
//! into this one, whatever its generations.
//!
//! # Frames
//!
//! `[body length u32][crc32 of the body u32][body]`, body =
//! `[environment id u64][generation u64][format version u16][record ...]`,
//! record = `[group u64][index u64][entry length u32][entry record]` (big-endian; the entry
//! record is the codec's, as stored in LMDB). The version ([`FRAME_VERSION`]) follows the id
//! and the generation, which every layout keeps first: a CRC-valid frame of LMDB's id and
//! generation with another version (a layout this build cannot read, e.g. written by a later
//! build) may hold acknowledged entries, so it is corruption (the open fails), never skipped.
//! Frames of the builds before the version (body = `[id][generation][record ...]`) read as
//! version 0: the error says to open the directory with such a build, which checkpoints them.
//!
//! # Recovery
//!
//! At open, the id and `G` are read from LMDB (`G` absent: 0) and the frames are read one at
//! a time (a buffer of one frame, at most [`crate::MAX_WAL_BYTES`]) from offset 0 while the
//! length is sane (bounded by the file and that maximum), the CRC matches and the id and
//! generation are LMDB's; the scan stops at the first frame that does not. Frames are acknowledged only after their
//! `fdatasync`, in file order, so a torn or stale frame was never acknowledged. The records
//! found must each extend their group's log contiguously (else `Corrupt`); they are applied in
//! one checkpoint transaction before the store is handed out.
//!
//! # Reads racing checkpoints
//!
//! Pending entries are kept in memory ([`Pending`], behind a lock), tagged with the generation
//! of the LMDB state they follow. The writer adds a frame's entries before answering its
//! requests, and empties the pending set (setting its generation to `G + 1`) only after the
//! checkpoint commit, under the lock. A reader takes its LMDB snapshot *while holding the
//! lock* and copies the pending entries it needs: the snapshot's generation is then either
//! the pending set's (the pending entries follow the snapshot's log exactly) or one more (a
//! checkpoint committed but the writer has not emptied the set yet: the snapshot holds the
//! pending entries, possibly already truncated, purged or reset by that commit's requests, and
//! the reader ignores its copy). A reader never sees a frame's entries before the frame is
//! durable, and sees every acknowledged entry.
//!
//! # Failures
//!
//! A frame's failed write or sync fails every request of its cycle and poisons the
//! environment; its entries were never published. A frame written whole may still be read by
//! the next open (its entries follow the acknowledged ones); a torn one is not. A failed
//! checkpoint commits nothing: the generation does not move, the pending entries stay in
//! memory and in the file, and the next open recovers them. Zeros that cannot be written at
//! open turn the file off for the run, after the open checkpointed what it held. Tested in
//! `tests_wal_faults.rs`, with the test hooks of `faults.rs`.
//!
//! # Memory
//!
//! The pending entries in memory are bounded: at most 4096 entries (the writer's
//! `MAX_PENDING_ENTRIES`), and at most the file's size of encoded entries (each is a record
//! of the file; a cycle that would go beyond either checkpoints first). With the default
//! 8 MiB file that is about 8 MiB of payloads plus a few hundred KiB of `Entry` headers.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use raft_core::{Entry, GroupId, LogId, LogIndex, StorageError};

use crate::codec;

/// The write-ahead file's name in a store or environment directory.
pub(crate) const WAL_FILE: &str = "raft-wal";
/// Key, in the metadata database, of the generation of the frames the file may hold for the
/// committed state (big-endian `u64`; absent means 0).
pub(crate) const WAL_GENERATION_KEY: &[u8] = b"wal-generation";
/// Key, in the metadata database, of the environment's id, carried by each of its frames
/// (big-endian `u64`).
pub(crate) const WAL_ID_KEY: &[u8] = b"wal-id";
/// Bytes before a frame's body: its length and CRC.
const FRAME_HEADER: usize = 8;
/// Bytes of a body before its format version: the environment id and the generation (first in
/// every layout).
const BODY_OWNER: usize = 16;
/// Bytes of a body before its records: the environment id, the generation and the version.
const BODY_HEADER: usize = BODY_OWNER + 2;
/// The layout of the frames this build writes and reads (see the module documentation).
const FRAME_VERSION: u16 = 1;
/// Bytes of a record before its entry record.
const RECORD_HEADER: usize = 20;
/// Zeros are written in slices of this size.
const ZERO_SLICE: usize = 1 << 20;

/// Encodes one frame at a time into a reused buffer.
#[derive(Debug, Default)]
pub(crate) struct FrameBuilder {
    buf: Vec<u8>,
}

impl FrameBuilder {
    /// Starts a frame of the environment `id` and `generation`, forgetting the previous one.
    pub(crate) fn begin(&mut self, id: u64, generation: u64) {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; FRAME_HEADER]);
        self.buf.extend_from_slice(&id.to_be_bytes());
        self.buf.extend_from_slice(&generation.to_be_bytes());
        self.buf.extend_from_slice(&FRAME_VERSION.to_be_bytes());
    }

    /// Adds the record of `entry` of `group`.
    pub(crate) fn push(&mut self, group: GroupId, entry: &Entry) -> Result<(), StorageError> {
        self.buf.extend_from_slice(&group.to_be_bytes());
        self.buf.extend_from_slice(&entry.index.to_be_bytes());
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        self.buf = codec::encode_entry(entry, std::mem::take(&mut self.buf))?;
        let len = u32::try_from(self.buf.len() - len_at - 4)
            .map_err(|_| StorageError::InvalidRequest("an entry of 4 GiB or more".into()))?;
        self.buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// Completes the frame (length and CRC) and returns its bytes.
    pub(crate) fn finish(&mut self) -> Result<&[u8], StorageError> {
        let body = &self.buf[FRAME_HEADER..];
        let len = u32::try_from(body.len())
            .map_err(|_| StorageError::InvalidRequest("a frame of 4 GiB or more".into()))?;
        let crc = crc32fast::hash(body);
        self.buf[..4].copy_from_slice(&len.to_be_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_be_bytes());
        Ok(&self.buf)
    }

    /// The bytes of the frame so far (its final length once finished).
    pub(crate) fn frame_len(&self) -> usize {
        self.buf.len()
    }
}

/// What a scan of the file found.
#[derive(Debug, Default)]
pub(crate) struct Scanned {
    /// The records of the valid frames, in file order.
    pub(crate) records: Vec<(GroupId, Entry)>,
    /// The offset after the last valid frame.
    pub(crate) end: u64,
    /// Whether the file holds bytes other than zeros after the valid frames (a torn or stale
    /// frame, or another environment's).
    pub(crate) stopped_on_data: bool,
    /// The bytes of the records' entries ([`Entry::size_bytes`]).
    pub(crate) bytes: u64,
}

/// What the scan reads from: the file, or bytes in tests.
pub(crate) trait ReadAt {
    /// Fills `buf` from `offset` (which the caller keeps within the source).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let at = usize::try_from(offset).map_err(io::Error::other)?;
        let src = at.checked_add(buf.len()).and_then(|end| self.get(at..end));
        buf.copy_from_slice(src.ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?);
        Ok(())
    }
}

/// Reads the frames of the environment `id` and `generation` from the start of `source` (of
/// `len` bytes), one frame at a time. Stops at the first frame whose length does not fit (in
/// the file, or above [`crate::MAX_WAL_BYTES`]), whose CRC does not match or whose id or
/// generation differs; a frame that passes those checks but whose records do not decode is
/// corruption.
pub(crate) fn scan<R: ReadAt + ?Sized>(
    source: &R,
    len: u64,
    id: u64,
    generation: u64,
) -> Result<Scanned, StorageError> {
    let mut scanned = Scanned::default();
    let mut at = 0u64;
    let mut body = Vec::new();
    while read_frame(source, len, at, (id, generation), &mut body)? {
        let mut records = &body[BODY_HEADER..];
        while !records.is_empty() {
            let corrupt =
                || StorageError::Corrupt(format!("a torn record in the write-ahead frame at {at}"));
            let head = records.get(..RECORD_HEADER).ok_or_else(corrupt)?;
            let group = u64::from_be_bytes(head[..8].try_into().map_err(|_| corrupt())?);
            let index = u64::from_be_bytes(head[8..16].try_into().map_err(|_| corrupt())?);
            let len = u32::from_be_bytes(head[16..20].try_into().map_err(|_| corrupt())?);
            let end = RECORD_HEADER.checked_add(len as usize).ok_or_else(corrupt)?;
            let entry = records.get(RECORD_HEADER..end).ok_or_else(corrupt)?;
            scanned.records.push((group, codec::decode_entry(index, entry)?));
            scanned.bytes += scanned.records.last().map_or(0, |(_, e)| e.size_bytes());
            records = &records[end..];
        }
        at += (FRAME_HEADER + body.len()) as u64;
        scanned.end = at;
    }
    // Any byte left (a torn frame's later blocks may have reached the disk without its first
    // one), read in bounded slices.
    let mut slice = vec![0u8; ZERO_SLICE];
    let mut from = at;
    while from < len && !scanned.stopped_on_data {
        let n = usize::try_from(len - from).map_or(ZERO_SLICE, |left| left.min(ZERO_SLICE));
        source.read_exact_at(&mut slice[..n], from).map_err(StorageError::Io)?;
        scanned.stopped_on_data = slice[..n].iter().any(|&b| b != 0);
        from += n as u64;
    }
    Ok(scanned)
}

/// Reads into `body` the valid frame of `(id, generation)` at `at`, if there is one; a valid
/// frame of `(id, generation)` in another layout than [`FRAME_VERSION`] is corruption.
fn read_frame<R: ReadAt + ?Sized>(
    source: &R,
    len: u64,
    at: u64,
    (id, generation): (u64, u64),
    body: &mut Vec<u8>,
) -> Result<bool, StorageError> {
    let start = at + FRAME_HEADER as u64;
    if start > len {
        return Ok(false);
    }
    let mut header = [0u8; FRAME_HEADER];
    source.read_exact_at(&mut header, at).map_err(StorageError::Io)?;
    let [l0, l1, l2, l3, c0, c1, c2, c3] = header;
    let body_len = u64::from(u32::from_be_bytes([l0, l1, l2, l3]));
    // A length past the end of the file or above the largest file is not a frame (no
    // allocation follows from it).
    if body_len < BODY_OWNER as u64 || body_len > len - start || body_len > crate::MAX_WAL_BYTES {
        return Ok(false);
    }
    body.resize(body_len as usize, 0);
    source.read_exact_at(body, start).map_err(StorageError::Io)?;
    if crc32fast::hash(body) != u32::from_be_bytes([c0, c1, c2, c3]) {
        return Ok(false);
    }
    let mut expected = [0u8; BODY_OWNER];
    expected[..8].copy_from_slice(&id.to_be_bytes());
    expected[8..].copy_from_slice(&generation.to_be_bytes());
    if body[..BODY_OWNER] != expected {
        return Ok(false);
    }
    // Of this environment and generation, so possibly acknowledged: never skipped.
    match *body.get(BODY_OWNER..BODY_HEADER).unwrap_or_default() {
        [v0, v1] if u16::from_be_bytes([v0, v1]) == FRAME_VERSION => Ok(true),
        // The layout before versions: the first record's group id (below 2^48) follows the
        // generation, so its top bytes read as version 0.
        [0, 0] => Err(StorageError::Corrupt(format!(
            "the write-ahead frame at {at} was written by an earlier build (frames without a \
             version): open it with that build to checkpoint it"
        ))),
        [v0, v1] => Err(StorageError::Corrupt(format!(
            "the write-ahead frame at {at} has version {} where this build reads {FRAME_VERSION}",
            u16::from_be_bytes([v0, v1])
        ))),
        _ => Err(StorageError::Corrupt(format!(
            "the write-ahead frame at {at} is too short for its version"
        ))),
    }
}

/// The open write-ahead file, owned by the writer thread.
#[derive(Debug)]
pub(crate) struct Wal {
    file: File,
    /// The environment's id, carried by each frame.
    pub(crate) id: u64,
    /// The usable size of the file.
    size: u64,
    /// Where the next frame goes.
    pub(crate) offset: u64,
    /// Encodes frames.
    pub(crate) builder: FrameBuilder,
    /// Test hooks: the environment's (set by the writer when it starts).
    #[cfg(test)]
    pub(crate) faults: std::sync::Arc<crate::faults::Faults>,
}

impl Wal {
    /// The usable size of the file (what [`crate::LmdbOptions::with_wal_bytes`] asked for).
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Whether a frame of `len` bytes fits after the frames written.
    pub(crate) fn fits(&self, len: usize) -> bool {
        self.offset.saturating_add(len as u64) <= self.size
    }

    /// Writes the frame built in `builder` at the write offset and syncs it.
    pub(crate) fn append(&mut self) -> Result<(), StorageError> {
        let frame = self.builder.finish()?;
        // The test hooks (`faults.rs`) replace an outcome; the errors go the same way.
        #[cfg(not(test))]
        let written = self.file.write_all_at(frame, self.offset);
        #[cfg(test)]
        let written = match self.faults.frame_write.strikes() {
            // Cut short (a full disk): half the frame reaches the file.
            true => self
                .file
                .write_all_at(&frame[..frame.len() / 2], self.offset)
                .and(Err(io::Error::from_raw_os_error(crate::faults::ENOSPC))),
            false => self.file.write_all_at(frame, self.offset),
        };
        written.map_err(StorageError::Io)?;
        let synced = self.file.sync_data();
        #[cfg(test)]
        let synced = match self.faults.frame_sync.strikes() {
            true => Err(io::Error::from_raw_os_error(crate::faults::EIO)),
            false => synced,
        };
        synced.map_err(StorageError::Io)?;
        self.offset += frame.len() as u64;
        Ok(())
    }

    /// After a checkpoint committed the next generation: frames start again at 0.
    pub(crate) fn checkpointed(&mut self) {
        self.offset = 0;
    }

    /// Truncates the file to its size if an earlier run left it larger, and syncs it (an error:
    /// the file's length could not be read or changed). Only once the file holds no frame of
    /// LMDB's generation (the open checkpointed what it held, or it held nothing): truncating
    /// before that checkpoint committed would lose acknowledged frames if it failed.
    pub(crate) fn shrink(&self) -> io::Result<Shrink> {
        let len = self.file.metadata()?.len();
        if len <= self.size {
            return Ok(Shrink::Unneeded);
        }
        self.file.set_len(self.size)?;
        Ok(match self.file.sync_all() {
            Ok(()) => Shrink::Shrank { from: len },
            Err(error) => Shrink::Unsynced { from: len, error },
        })
    }
}

/// What [`Wal::shrink`] did.
#[derive(Debug)]
pub(crate) enum Shrink {
    /// Nothing: the file was not larger than its size.
    Unneeded,
    /// Truncated from `from` bytes to its size, and synced.
    Shrank {
        /// The file's length before.
        from: u64,
    },
    /// Truncated from `from` bytes to its size, but the sync that follows failed.
    Unsynced {
        /// The file's length before.
        from: u64,
        /// The sync's error.
        error: io::Error,
    },
}

/// Opens the write-ahead file in `dir` for frames of LMDB's environment `id` and `generation`,
/// or, with `bytes` 0, only reads it if it exists (to recover it; it is removed by
/// [`remove_if_off`] once checkpointed). Returns the file (`None` when off, or when it could
/// not be written to its size: disk full, file size limit) and what it held.
pub(crate) fn open(
    dir: &Path,
    bytes: u64,
    (id, generation): (u64, u64),
) -> Result<(Option<Wal>, Scanned), StorageError> {
    let path = dir.join(WAL_FILE);
    let existing = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(file) => Some(file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(StorageError::Io(e)),
    };
    let scanned = match &existing {
        Some(file) => {
            let len = file.metadata().map_err(StorageError::Io)?.len();
            scan(file, len, id, generation)?
        }
        None => Scanned::default(),
    };
    if bytes == 0 {
        return Ok((None, scanned));
    }
    let file = match existing {
        Some(file) => file,
        None => OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(StorageError::Io)?,
    };
    // At every open, not only when this run creates the file: an earlier run may have created
    // it (and acknowledged frames in it) and crashed before its directory entry was durable.
    crate::fsdir::sync_dir(dir).map_err(StorageError::Io)?;
    let len = file.metadata().map_err(StorageError::Io)?.len();
    if len < bytes {
        if let Err(error) = write_zeros(&file, len, bytes) {
            // Like the data file's headroom: an optimisation that a full disk or a file size
            // limit turns off (every cycle is then an LMDB transaction). What the file held is
            // still checkpointed by the caller, so its frames become stale.
            tracing::warn!(
                %error,
                bytes,
                "raft-lmdb could not write its write-ahead file; commits go to LMDB alone"
            );
            return Ok((None, scanned));
        }
    }
    let wal = Wal {
        file,
        id,
        size: bytes,
        offset: scanned.end,
        builder: FrameBuilder::default(),
        #[cfg(test)]
        faults: std::sync::Arc::default(),
    };
    Ok((Some(wal), scanned))
}

/// With the write-ahead file off, deletes a file an earlier run left (after its frames were
/// checkpointed) and syncs the directory.
pub(crate) fn remove_if_off(dir: &Path) -> io::Result<()> {
    match std::fs::remove_file(dir.join(WAL_FILE)) {
        Ok(()) => crate::fsdir::sync_dir(dir),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes zeros from `from` to `to` and syncs them with the file's size.
fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; ZERO_SLICE];
    let mut at = from;
    while at < to {
        let len = usize::try_from(to - at).map_or(ZERO_SLICE, |left| left.min(ZERO_SLICE));
        file.write_all_at(&zeros[..len], at)?;
        at += len as u64;
        #[cfg(test)]
        if crate::faults::opening().is_some_and(|faults| faults.zeros.strikes()) {
            return Err(io::Error::from_raw_os_error(crate::faults::EFBIG));
        }
    }
    file.sync_all()
}

/// Decodes LMDB's `wal-generation` or `wal-id` record (`None` if absent).
pub(crate) fn decode_u64(bytes: Option<&[u8]>) -> Result<Option<u64>, StorageError> {
    bytes
        .map(|bytes| {
            let bytes: [u8; 8] = bytes.try_into().map_err(|_| {
                StorageError::Corrupt("a write-ahead record of LMDB is not 8 bytes".into())
            })?;
            Ok(u64::from_be_bytes(bytes))
        })
        .transpose()
}

/// A new environment id: random (std's `RandomState` keys come from the operating system's
/// random source), mixed with the time and the process id.
pub(crate) fn new_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    hasher.write_u128(now.map_or(0, |d| d.as_nanos()));
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// The entries acknowledged through the write-ahead file and not checkpointed yet, shared by
/// the writer (which adds and empties) and the readers (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Pending {
    state: Mutex<PendingState>,
}

#[derive(Debug, Default)]
struct PendingState {
    /// The generation of the LMDB state the entries follow.
    generation: u64,
    /// Each group's pending entries, contiguous after its last entry in LMDB.
    groups: HashMap<GroupId, Vec<Entry>>,
}

/// What a reader copied of a group's pending entries, with its snapshot.
#[derive(Debug, Default)]
pub(crate) struct PendingView {
    /// The generation the entries follow: they count only for a snapshot of that generation.
    pub(crate) generation: u64,
    /// The id of the group's last pending entry, if any.
    pub(crate) last: Option<LogId>,
    /// The pending entries asked for, in index order.
    pub(crate) entries: Vec<Entry>,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, PendingState> {
        // Changed only by whole insertions and clears: a panic cannot leave it torn.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Pending entries of generation `generation` (recovered at open).
    pub(crate) fn new(generation: u64, records: Vec<(GroupId, Entry)>) -> Self {
        let mut groups: HashMap<GroupId, Vec<Entry>> = HashMap::new();
        for (group, entry) in records {
            groups.entry(group).or_default().push(entry);
        }
        Self { state: Mutex::new(PendingState { generation, groups }) }
    }

    /// Adds entries acknowledged through a durable frame (before answering their requests).
    pub(crate) fn add(&self, entries: Vec<(GroupId, Vec<Entry>)>) {
        let mut state = self.lock();
        for (group, mut new) in entries {
            state.groups.entry(group).or_default().append(&mut new);
        }
    }

    /// Empties the set after a checkpoint committed `generation` (only then).
    pub(crate) fn checkpointed(&self, generation: u64) {
        let mut state = self.lock();
        state.groups.clear();
        state.generation = generation;
    }

    /// Copies every pending entry, per group (for a checkpoint).
    pub(crate) fn all(&self) -> Vec<(GroupId, Vec<Entry>)> {
        let state = self.lock();
        state.groups.iter().map(|(&g, entries)| (g, entries.clone())).collect()
    }

    /// Takes a snapshot with `snapshot` while holding the lock, and copies `group`'s pending
    /// entries in `range` (those within `max_bytes`, plus the two after them at most: a read
    /// stops at the entry that does not fit), with their generation.
    pub(crate) fn view<T>(
        &self,
        group: GroupId,
        range: std::ops::Range<LogIndex>,
        max_bytes: u64,
        snapshot: impl FnOnce() -> Result<T, StorageError>,
    ) -> Result<(T, PendingView), StorageError> {
        let state = self.lock();
        let txn = snapshot()?;
        let mut view = PendingView { generation: state.generation, ..PendingView::default() };
        if let Some(entries) = state.groups.get(&group) {
            view.last = entries.last().map(Entry::log_id);
            // The entries are contiguous: `range` is a slice of them.
            let base = entries.first().map_or(0, |e| e.index);
            let skip = usize::try_from(range.start.saturating_sub(base)).unwrap_or(usize::MAX);
            let mut bytes = 0u64;
            let wanted = entries.iter().skip(skip).take_while(|e| e.index < range.end);
            // One entry past the bound too: the reader stops at the entry that does not fit.
            for entry in wanted {
                view.entries.push(entry.clone());
                if bytes > max_bytes {
                    break;
                }
                bytes += entry.size_bytes();
            }
        }
        Ok((txn, view))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use raft_core::EntryPayload;

    fn entry(index: LogIndex, term: u64, len: usize) -> Entry {
        Entry { index, term, payload: EntryPayload::Command(Bytes::from(vec![7u8; len])) }
    }

    /// The environment id of the frames in these tests.
    const ID: u64 = 0x5eed_1d00_0000_0001;

    fn scan_bytes(bytes: &[u8], generation: u64) -> Result<Scanned, StorageError> {
        scan(bytes, bytes.len() as u64, ID, generation)
    }

    fn frame(generation: u64, entries: &[(GroupId, Entry)]) -> Vec<u8> {
        let mut builder = FrameBuilder::default();
        builder.begin(ID, generation);
        for (group, entry) in entries {
            assert!(builder.push(*group, entry).is_ok());
        }
        builder.finish().map(<[u8]>::to_vec).unwrap_or_default()
    }

    fn file(frames: &[Vec<u8>], size: usize) -> Vec<u8> {
        let mut bytes: Vec<u8> = frames.concat();
        bytes.resize(size.max(bytes.len()), 0);
        bytes
    }

    #[test]
    fn frames_read_back_in_order() -> Result<(), StorageError> {
        let a = frame(3, &[(1, entry(5, 2, 10)), (9, entry(1, 1, 0))]);
        let b = frame(3, &[(1, entry(6, 2, 3000))]);
        let bytes = file(&[a.clone(), b.clone()], 8192);
        let scanned = scan_bytes(&bytes, 3)?;
        assert_eq!(scanned.records.len(), 3);
        assert_eq!(scanned.records[0], (1, entry(5, 2, 10)));
        assert_eq!(scanned.records[1], (9, entry(1, 1, 0)));
        assert_eq!(scanned.records[2], (1, entry(6, 2, 3000)));
        assert_eq!(scanned.end as usize, a.len() + b.len());
        assert!(!scanned.stopped_on_data);
        Ok(())
    }

    #[test]
    fn zeros_hold_no_frame() -> Result<(), StorageError> {
        let scanned = scan_bytes(&[0u8; 4096], 0)?;
        assert!(scanned.records.is_empty());
        assert_eq!(scanned.end as usize, 0);
        assert!(!scanned.stopped_on_data);
        // Generation 0 with an empty body of zeros is not a frame either.
        assert!(scan_bytes(&[], 0)?.records.is_empty());
        Ok(())
    }

    #[test]
    fn a_torn_last_frame_is_not_read() -> Result<(), StorageError> {
        let a = frame(1, &[(1, entry(1, 1, 100))]);
        let b = frame(1, &[(1, entry(2, 1, 100))]);
        // Cut short: the file ends inside the second frame.
        let mut bytes = [a.clone(), b.clone()].concat();
        bytes.truncate(a.len() + b.len() - 10);
        let scanned = scan_bytes(&bytes, 1)?;
        assert_eq!(scanned.records.len(), 1);
        assert_eq!(scanned.end as usize, a.len());
        assert!(scanned.stopped_on_data);
        // One byte flipped in the last frame's body.
        for at in [FRAME_HEADER + 2, b.len() - 1] {
            let mut torn = b.clone();
            torn[at] ^= 0x40;
            let scanned = scan_bytes(&file(&[a.clone(), torn], 4096), 1)?;
            assert_eq!(scanned.records.len(), 1);
            assert_eq!(scanned.end as usize, a.len());
        }
        Ok(())
    }

    #[test]
    fn stale_generations_are_ignored() -> Result<(), StorageError> {
        // After a checkpoint to generation 5, frames of 4 further on are stale.
        let new = frame(5, &[(1, entry(10, 3, 8))]);
        let old = frame(4, &[(1, entry(7, 3, 8)), (1, entry(8, 3, 8))]);
        let scanned = scan_bytes(&file(&[new.clone(), old.clone()], 4096), 5)?;
        assert_eq!(scanned.records, vec![(1, entry(10, 3, 8))]);
        assert!(scanned.stopped_on_data);
        // Seen from generation 6 (the next checkpoint), nothing is valid.
        assert!(scan_bytes(&file(&[new, old], 4096), 6)?.records.is_empty());
        Ok(())
    }

    #[test]
    fn frames_of_another_environment_are_ignored() -> Result<(), StorageError> {
        let mut builder = FrameBuilder::default();
        builder.begin(ID + 1, 2);
        assert!(builder.push(1, &entry(1, 1, 4)).is_ok());
        let other = builder.finish().map(<[u8]>::to_vec).unwrap_or_default();
        let scanned = scan_bytes(&file(std::slice::from_ref(&other), 4096), 2)?;
        assert!(scanned.records.is_empty());
        assert!(scanned.stopped_on_data);
        // Nor after this environment's own frames.
        let own = frame(2, &[(1, entry(1, 1, 4))]);
        let scanned = scan_bytes(&file(&[own, other], 4096), 2)?;
        assert_eq!(scanned.records.len(), 1);
        assert!(scanned.stopped_on_data);
        Ok(())
    }

    #[test]
    fn a_length_past_the_end_is_not_a_frame() -> Result<(), StorageError> {
        let a = frame(2, &[(1, entry(1, 1, 4))]);
        for len in [u32::MAX, 4097, 1 << 30] {
            let mut bogus = vec![0u8; 64];
            bogus[..4].copy_from_slice(&len.to_be_bytes());
            bogus[4] = 1;
            let scanned = scan_bytes(&[a.clone(), bogus].concat(), 2)?;
            assert_eq!(scanned.records.len(), 1);
            assert!(scanned.stopped_on_data);
        }
        // A length too short for a generation is not a frame either.
        let mut short = vec![0u8; 64];
        short[..4].copy_from_slice(&3u32.to_be_bytes());
        let crc = crc32fast::hash(&short[8..11]);
        short[4..8].copy_from_slice(&crc.to_be_bytes());
        assert!(scan_bytes(&short, 0)?.records.is_empty());
        Ok(())
    }

    #[test]
    fn a_frame_of_another_version_is_corrupt_not_skipped() -> Result<(), StorageError> {
        let own = frame(2, &[(1, entry(1, 1, 4))]);
        // The same frame in layout 2 (a later build), its CRC valid, after a frame of ours.
        let mut later = frame(2, &[(1, entry(2, 1, 4))]);
        later[FRAME_HEADER + BODY_OWNER..FRAME_HEADER + BODY_HEADER]
            .copy_from_slice(&2u16.to_be_bytes());
        let crc = crc32fast::hash(&later[FRAME_HEADER..]);
        later[4..8].copy_from_slice(&crc.to_be_bytes());
        let scanned = scan_bytes(&file(&[own.clone(), later.clone()], 4096), 2);
        assert!(matches!(scanned, Err(StorageError::Corrupt(_))), "{scanned:?}");
        // A body too short for a version, of this environment and generation: corrupt too.
        let mut short = own[..FRAME_HEADER + BODY_OWNER].to_vec();
        short[..4].copy_from_slice(&(BODY_OWNER as u32).to_be_bytes());
        let crc = crc32fast::hash(&short[FRAME_HEADER..]);
        short[4..8].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(scan_bytes(&file(&[short], 4096), 2), Err(StorageError::Corrupt(_))));
        // Of another generation (stale), the version does not matter: not a frame of ours.
        // First in the file, so that the scan reads it (and stops on it, as data).
        let scanned = scan_bytes(&file(std::slice::from_ref(&later), 4096), 3)?;
        assert!(scanned.records.is_empty() && scanned.stopped_on_data);
        // After a frame of generation 3: the scan reads the stale frame and stops there.
        let next = frame(3, &[(1, entry(3, 1, 4))]);
        let scanned = scan_bytes(&file(&[next.clone(), later], 4096), 3)?;
        assert_eq!(scanned.records, vec![(1, entry(3, 1, 4))]);
        assert_eq!(scanned.end as usize, next.len());
        assert!(scanned.stopped_on_data);
        // Of another environment, likewise.
        let mut foreign = own;
        foreign[FRAME_HEADER..FRAME_HEADER + 8].copy_from_slice(&(ID + 1).to_be_bytes());
        foreign[FRAME_HEADER + BODY_OWNER..FRAME_HEADER + BODY_HEADER]
            .copy_from_slice(&2u16.to_be_bytes());
        let crc = crc32fast::hash(&foreign[FRAME_HEADER..]);
        foreign[4..8].copy_from_slice(&crc.to_be_bytes());
        let scanned = scan_bytes(&file(&[foreign], 4096), 2)?;
        assert!(scanned.records.is_empty() && scanned.stopped_on_data);
        Ok(())
    }

    #[test]
    fn a_frame_without_a_version_is_corrupt_with_the_way_out() {
        // The layout of the builds before the version: body = [id][generation][record ...].
        let mut body = Vec::new();
        body.extend_from_slice(&ID.to_be_bytes());
        body.extend_from_slice(&2u64.to_be_bytes());
        let record = codec::encode_entry(&entry(1, 1, 4), Vec::new()).unwrap_or_default();
        body.extend_from_slice(&1u64.to_be_bytes());
        body.extend_from_slice(&1u64.to_be_bytes());
        body.extend_from_slice(&(record.len() as u32).to_be_bytes());
        body.extend_from_slice(&record);
        let mut old = (body.len() as u32).to_be_bytes().to_vec();
        old.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        old.extend_from_slice(&body);
        let scanned = scan_bytes(&file(&[old], 4096), 2);
        assert!(
            matches!(&scanned, Err(StorageError::Corrupt(why))
                if why.contains("written by an earlier build (frames without a version)")
                    && why.contains("open it with that build to checkpoint it")),
            "{scanned:?}"
        );
    }

    #[test]
    fn a_valid_frame_with_a_bad_record_is_corrupt() {
        let mut builder = FrameBuilder::default();
        builder.begin(ID, 0);
        // A record header with no entry after it, under a correct CRC.
        builder.buf.extend_from_slice(&[0u8; 10]);
        let bytes = builder.finish().map(<[u8]>::to_vec).unwrap_or_default();
        assert!(matches!(scan_bytes(&bytes, 0), Err(StorageError::Corrupt(_))));
    }
}
