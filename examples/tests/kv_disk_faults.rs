//! Disk faults under a real 3-node `kv-node` cluster whose data directories share one faulty
//! file system, with concurrent writers:
//!
//! * a full disk: a 96 MiB tmpfs, filled up by another file;
//! * a failing device: ext4 on a loop device whose backing file is served through FUSE by
//!   `nbdfuse` from `nbdkit`'s memory plugin behind its `error` filter, which fails every write
//!   with EIO while a trigger file exists (the kernel then reports I/O errors on the loop device,
//!   as for a dying disk);
//! * a file system remounted read-only: ext4 (`errors=remount-ro`) on a loop device, told of an
//!   error through `/sys/fs/ext4/DEV/trigger_fs_error`, as when it finds corruption.
//!
//! In each case every node that hits the fault stops acknowledging, logs the cause, reports it
//! in its status (`kv status`, `kv health`) and its metrics (`raft_node_failed`), and stays up
//! to say so; after the fault is removed (and the file system checked) and the nodes restart,
//! every acknowledged write reads back.
//!
//! These tests need root, loop devices, tmpfs and FUSE; `.ci/setup-disk-faults` installs the
//! tools (the tests run it). Device-mapper (`dmsetup` with the `error` or `flakey` targets) is
//! not used: the kernels of these machines are built without it (no `CONFIG_BLK_DEV_DM`, no
//! modules). Where a fault cannot be set up, a test says so loudly on standard error and passes,
//! except under CI (`CI` set), where it fails. Time limits here only turn a hang into a
//! failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use examples::kv::cluster::{read_log, wait_for_leader, ClusterSpec, Launcher, ProcessCluster};
use examples::kv::{ClientOptions, Connections, KvClient};
use raft_core::NodeId;

const PATIENCE: Duration = Duration::from_secs(90);
/// Concurrent writers.
const WRITERS: usize = 4;
/// The size of each value written (32 KiB: a node's 8 MiB of file headroom lasts 256 writes).
const VALUE_BYTES: usize = 32 << 10;

/// One disk-fault test at a time: they mount file systems and run clusters.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `program args`; its standard output, or why it failed.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(format!(
            "{program} {}: {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Says loudly why the test cannot run here: outside CI it then passes; under CI it fails.
fn cannot_run(test: &str, why: &str) {
    let message = format!(
        "\n!!!!!!!!\n!!! {test}: NOT RUN: {why}\n!!! (disk-fault tests need root, loop devices, \
         tmpfs and FUSE; see .ci/setup-disk-faults)\n!!!!!!!!\n"
    );
    // Straight to the process's standard error: not captured by the test harness.
    let _ = std::io::stderr().write_all(message.as_bytes());
    assert!(std::env::var_os("CI").is_none(), "{message}");
}

/// Whether this machine can produce disk faults: root, the tools (installed by
/// `.ci/setup-disk-faults` if missing), a free loop device, tmpfs and FUSE.
fn capable() -> Result<(), String> {
    let uid = run("id", &["-u"])?;
    if uid != "0" {
        return Err(format!("not root (uid {uid})"));
    }
    let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/setup-disk-faults");
    run("bash", &[&setup.display().to_string()])?;
    run("losetup", &["--find"]).map_err(|e| format!("no free loop device: {e}"))?;
    if !Path::new("/dev/fuse").exists() {
        return Err("no /dev/fuse (FUSE)".into());
    }
    let probe = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = probe.path().display().to_string();
    run("mount", &["-t", "tmpfs", "-o", "size=1m", "tmpfs", &dir])
        .map_err(|e| format!("cannot mount a tmpfs: {e}"))?;
    run("umount", &[&dir])?;
    Ok(())
}

/// A mounted file system, unmounted when dropped (lazily if busy).
struct Mounted {
    dir: PathBuf,
}

impl Mounted {
    fn tmpfs(dir: &Path, size: &str) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        let dir_s = dir.display().to_string();
        run("mount", &["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", &dir_s]).unwrap();
        Mounted { dir: dir.to_owned() }
    }

    /// Mounts the ext4 file system of `device` on `dir`, read-only after any error.
    fn ext4(device: &str, dir: &Path) -> Mounted {
        std::fs::create_dir_all(dir).unwrap();
        run(
            "mount",
            &["-t", "ext4", "-o", "errors=remount-ro", device, &dir.display().to_string()],
        )
        .unwrap();
        Mounted { dir: dir.to_owned() }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let dir = self.dir.display().to_string();
        if run("umount", &[&dir]).is_err() {
            let _ = run("umount", &["-l", &dir]);
        }
    }
}

/// A loop device over a file, detached when dropped.
struct LoopDevice {
    device: String,
}

impl LoopDevice {
    /// A loop device over `file`, formatted as ext4.
    fn ext4(file: &Path) -> LoopDevice {
        let device = run("losetup", &["--find", "--show", &file.display().to_string()]).unwrap();
        let device = LoopDevice { device };
        run("mkfs.ext4", &["-q", "-F", &device.device]).unwrap();
        device
    }

    /// Its name in `/sys/fs/ext4` (`loop0`).
    fn name(&self) -> &str {
        self.device.trim_start_matches("/dev/")
    }

    /// Checks and repairs its file system (unmounted).
    fn fsck(&self) {
        let status = Command::new("e2fsck").args(["-f", "-y", &self.device]).output().unwrap();
        // 0: clean, 1: errors corrected, 2: corrected (reboot advised); more: not repaired.
        assert!(
            matches!(status.status.code(), Some(0..=2)),
            "e2fsck {}: {}",
            self.device,
            String::from_utf8_lossy(&status.stdout)
        );
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = run("losetup", &["-d", &self.device]);
    }
}

/// A 256 MiB disk image at `dir/disk`, served through FUSE by `nbdfuse` from `nbdkit`'s
/// memory plugin; every write fails with EIO while `trigger` exists. Unmounted when dropped.
struct FailingDisk {
    mount: Mounted,
    nbdfuse: Child,
}

impl FailingDisk {
    fn start(dir: &Path, trigger: &Path) -> FailingDisk {
        std::fs::create_dir_all(dir).unwrap();
        let trigger = trigger.display().to_string();
        let mut args = vec![
            format!("{}/disk", dir.display()),
            "[".into(),
            "nbdkit".into(),
            "--exit-with-parent".into(),
            "memory".into(),
            "256M".into(),
            "--filter=error".into(),
        ];
        for op in ["pwrite", "zero", "trim"] {
            args.push(format!("error-{op}=EIO"));
            args.push(format!("error-{op}-rate=100%"));
            args.push(format!("error-{op}-file={trigger}"));
        }
        args.push("]".into());
        let nbdfuse = Command::new("nbdfuse")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let disk = FailingDisk { mount: Mounted { dir: dir.to_owned() }, nbdfuse };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !dir.join("disk").exists() {
            assert!(Instant::now() < deadline, "nbdfuse did not serve {}/disk", dir.display());
            std::thread::sleep(Duration::from_millis(50));
        }
        disk
    }

    fn file(&self) -> PathBuf {
        self.mount.dir.join("disk")
    }
}

impl Drop for FailingDisk {
    fn drop(&mut self) {
        let _ = run("fusermount3", &["-u", &self.mount.dir.display().to_string()]);
        let _ = self.nbdfuse.kill();
        let _ = self.nbdfuse.wait();
    }
}

/// The faults, and how each is set up, produced and removed.
#[derive(Clone, Copy, Debug)]
enum Fault {
    FullDisk,
    FailingDevice,
    ReadOnly,
}

impl Fault {
    /// What the nodes' errors say (one of these).
    fn causes(self) -> &'static [&'static str] {
        match self {
            // LMDB reports a short write as EIO: the node adds that the disk is full.
            Fault::FullDisk => &["No space left on device", "os error 28", "is full"],
            Fault::FailingDevice => &["Input/output error", "os error 5"],
            Fault::ReadOnly => &["Read-only file system", "os error 30"],
        }
    }
}

/// The file systems under the cluster's data, in the order they must be torn down.
struct Storage {
    fault: Fault,
    root: PathBuf,
    /// The data file system (dropped first).
    data: Option<Mounted>,
    device: Option<LoopDevice>,
    failing: Option<FailingDisk>,
    _dir: tempfile::TempDir,
}

impl Storage {
    fn new(fault: Fault) -> Storage {
        let dir = tempfile::Builder::new().prefix("kv-disk-fault-").tempdir().unwrap();
        let root = dir.path().to_owned();
        let data_dir = root.join("data");
        let (data, device, failing) = match fault {
            Fault::FullDisk => (Mounted::tmpfs(&data_dir, "96m"), None, None),
            Fault::FailingDevice => {
                let failing = FailingDisk::start(&root.join("nbd"), &root.join("trigger"));
                let device = LoopDevice::ext4(&failing.file());
                (Mounted::ext4(&device.device, &data_dir), Some(device), Some(failing))
            }
            Fault::ReadOnly => {
                let image = root.join("disk.img");
                std::fs::File::create(&image).unwrap().set_len(256 << 20).unwrap();
                let device = LoopDevice::ext4(&image);
                (Mounted::ext4(&device.device, &data_dir), Some(device), None)
            }
        };
        Storage { fault, root, data: Some(data), device, failing, _dir: dir }
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Produces the fault.
    fn inject(&self) {
        match self.fault {
            Fault::FullDisk => {
                // Fill what is left with another file.
                let mut filler = std::fs::File::create(self.data_dir().join("filler")).unwrap();
                let chunk = vec![0u8; 1 << 20];
                while filler.write_all(&chunk).is_ok() {}
                let _ = filler.sync_all();
            }
            Fault::FailingDevice => {
                std::fs::File::create(self.root.join("trigger")).unwrap();
            }
            Fault::ReadOnly => {
                let device = self.device.as_ref().unwrap();
                let path = format!("/sys/fs/ext4/{}/trigger_fs_error", device.name());
                std::fs::write(path, "disk fault test\n").unwrap();
            }
        }
    }

    /// Removes the fault (the nodes are stopped): frees the space, or heals the device, checks
    /// the file system and mounts it again.
    fn remove(&mut self) {
        match self.fault {
            Fault::FullDisk => std::fs::remove_file(self.data_dir().join("filler")).unwrap(),
            Fault::FailingDevice | Fault::ReadOnly => {
                let _ = std::fs::remove_file(self.root.join("trigger"));
                drop(self.data.take());
                let device = self.device.as_ref().unwrap();
                device.fsck();
                self.data = Some(Mounted::ext4(&device.device, &self.data_dir()));
            }
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        drop(self.data.take());
        drop(self.device.take());
        drop(self.failing.take());
    }
}

/// Free loopback TCP ports for the nodes' metrics listeners.
fn free_tcp_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// `GET path` on a metrics listener; the response, or why none.
fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    Ok(response)
}

/// The value written under `key`.
fn value_of(key: &str) -> Bytes {
    let mut value = key.repeat(VALUE_BYTES / key.len() + 1).into_bytes();
    value.truncate(VALUE_BYTES);
    Bytes::from(value)
}

/// What the writers learned: writes acknowledged, and writes whose outcome is unknown.
#[derive(Default)]
struct Written {
    acknowledged: Vec<String>,
    unknown: Vec<String>,
}

/// Starts `WRITERS` writers (a session each) that write new keys until `stop`.
fn start_writers(
    connections: &Connections,
    stop: &Arc<AtomicBool>,
    written: &Arc<Mutex<Written>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..WRITERS)
        .map(|w| {
            let client = KvClient::new(connections.clone());
            let (stop, written) = (stop.clone(), written.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("w{w}-{i:06}");
                    i += 1;
                    match client.put(key.clone(), value_of(&key)).await {
                        Ok(()) => written.lock().unwrap().acknowledged.push(key),
                        Err(e) if e.outcome_unknown() => written.lock().unwrap().unknown.push(key),
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        })
        .collect()
}

/// The error lines of a node's log.
fn error_lines(log: &str) -> Vec<String> {
    log.lines().filter(|l| l.contains(" ERROR ")).map(str::to_owned).collect()
}

async fn disk_fault(fault: Fault, test: &str) {
    let _serial = SERIAL.lock().await;
    if let Err(why) = capable() {
        return cannot_run(test, &why);
    }
    let mut storage = Storage::new(fault);
    let ports = free_tcp_ports(3);
    let metrics: Vec<SocketAddr> =
        ports.iter().map(|&p| SocketAddr::from(([127, 0, 0, 1], p))).collect();
    let spec = ClusterSpec {
        nodes: 3,
        data_root: Some(storage.data_dir()),
        node_args: (1..=3)
            .map(|id: NodeId| {
                let addr = metrics[id as usize - 1].to_string();
                (id, vec!["--metrics-listen".into(), addr])
            })
            .collect(),
        ..ClusterSpec::default()
    };
    let mut cluster =
        ProcessCluster::start(Launcher::program(env!("CARGO_BIN_EXE_kv-node")), spec).unwrap();
    let options = ClientOptions { op_timeout: Duration::from_secs(3), ..ClientOptions::default() };
    let connections = cluster.connections(options).unwrap();
    let ids = cluster.ids();
    wait_for_leader(&connections, &ids, 3, PATIENCE).await.expect("a leader");

    // Writers, then the fault under them.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(Mutex::new(Written::default()));
    let writers = start_writers(&connections, &stop, &written);
    let deadline = Instant::now() + PATIENCE;
    while written.lock().unwrap().acknowledged.len() < 50 {
        assert!(Instant::now() < deadline, "the cluster took no writes before the fault");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    storage.inject();
    let acknowledged_at_fault = written.lock().unwrap().acknowledged.len();

    // A majority of the nodes stop on the fault; the cluster then acknowledges nothing.
    let deadline = Instant::now() + PATIENCE;
    let failed = loop {
        let mut failed = Vec::new();
        for (id, answer) in connections.statuses_of(&ids).await {
            let fault = answer.ok().and_then(|s| s.health).and_then(|h| h.fault);
            if let Some(fault) = fault {
                failed.push((id, fault));
            }
        }
        if failed.len() >= 2 {
            break failed;
        }
        let logs: Vec<String> = ids.iter().map(|&id| read_log(&cluster.log_path(id))).collect();
        assert!(Instant::now() < deadline, "{fault:?}: only {failed:?} failed; logs:\n{logs:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let client = KvClient::new(connections.clone());
    assert!(client.put("after-the-fault", "x").await.is_err(), "a write was acknowledged");
    let (acknowledged, unknown) = {
        let written = written.lock().unwrap();
        (written.acknowledged.clone(), written.unknown.clone())
    };
    println!(
        "{fault:?}: {} writes acknowledged ({acknowledged_at_fault} before the fault), {} \
         unknown; stopped: {failed:?}",
        acknowledged.len(),
        unknown.len()
    );

    // Each stopped node names the cause in its status, its metrics and its log, once.
    let mut logged = Vec::new();
    for (id, cause) in &failed {
        let log = read_log(&cluster.log_path(*id));
        assert!(fault.causes().iter().any(|c| cause.contains(c)), "node {id}: {cause}\n{log}");
        let addr = metrics[*id as usize - 1];
        let health = http_get(addr, "/health/live").unwrap();
        assert!(health.starts_with("HTTP/1.1 503"), "node {id} still live: {health}");
        let scrape = http_get(addr, "/metrics").unwrap();
        let failed_metric = scrape
            .lines()
            .find(|l| l.starts_with("raft_node_failed{") && l.ends_with(" 1"))
            .unwrap_or_else(|| panic!("node {id}: no raft_node_failed 1 in\n{scrape}"));
        assert!(failed_metric.contains("kind="), "{failed_metric}");
        let lines = error_lines(&log);
        let named = lines.iter().any(|l| fault.causes().iter().any(|c| l.contains(c)));
        assert!(named, "node {id} did not log the cause: {lines:#?}");
        logged.push((*id, lines.len()));
    }
    // Clients keep trying: nothing more is logged about the fault.
    for _ in 0..3 {
        let _ = client.put("after-the-fault", "x").await;
    }
    for &(id, count) in &logged {
        let lines = error_lines(&read_log(&cluster.log_path(id)));
        assert_eq!(lines.len(), count, "node {id} logged the fault again: {lines:#?}");
        // The log store, the Raft node and kv-node each say it once.
        assert!(count <= 3, "node {id} logged the fault {count} times: {lines:#?}");
    }

    // The fault removed and the nodes restarted, every acknowledged write is there.
    cluster.stop_all(Duration::from_secs(10)).unwrap();
    storage.remove();
    for &id in &ids {
        cluster.spawn(id).unwrap();
    }
    wait_for_leader(&connections, &ids, 3, PATIENCE).await.expect("a leader after the restart");
    let reader = KvClient::new(connections.clone());
    for key in &acknowledged {
        let value = reader.get(key.clone()).await.unwrap();
        assert_eq!(value, Some(value_of(key)), "{fault:?}: acknowledged write {key} lost");
    }
    for key in &unknown {
        let value = reader.get(key.clone()).await.unwrap();
        assert!(value.is_none() || value == Some(value_of(key)), "{key}: {value:?}");
    }
    reader.put("after-the-repair", "y").await.unwrap();
    let _ = cluster.stop_all(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_acknowledging_and_loses_no_acknowledged_write() {
    disk_fault(Fault::FullDisk, "a_full_disk").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_device_stops_acknowledging_and_loses_no_acknowledged_write() {
    disk_fault(Fault::FailingDevice, "a_failing_device").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_remount_stops_acknowledging_and_loses_no_acknowledged_write() {
    disk_fault(Fault::ReadOnly, "a_read_only_remount").await;
}
