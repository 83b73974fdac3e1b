//! Network namespaces to walk. `iter/tcp` sees only the namespace of the thread that opens the
//! iterator, while sock_ops sees every namespace under the cgroup: long-lived sockets in
//! containers stay current only if the walk enters each namespace in turn.
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::SamplerError;

const CAP_SYS_PTRACE: u32 = 19;

/// A namespace identity: the nsfs inode (with its device, for safety).
type NsId = (u64, u64);

/// Open handles on every network namespace that has a process or a bind mount in /run/netns.
#[derive(Debug, Default)]
pub struct Namespaces {
    own: Option<NsId>,
    foreign: HashMap<NsId, File>,
    /// Processes whose namespace could not be read at the last refresh (permission denied).
    pub unreadable: usize,
    warned: bool,
}

impl Namespaces {
    /// Rescans /proc and /run/netns: opens new namespaces, closes vanished ones (a held handle
    /// would keep a dead namespace alive).
    pub fn refresh(&mut self) {
        let own = ns_id(Path::new("/proc/thread-self/ns/net"));
        self.own = own;
        let mut seen: HashMap<NsId, std::path::PathBuf> = HashMap::new();
        let mut unreadable = 0;
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let name = entry.file_name();
                if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                let path = entry.path().join("ns/net");
                match std::fs::metadata(&path) {
                    Ok(meta) => {
                        seen.entry((meta.dev(), meta.ino())).or_insert(path);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => unreadable += 1,
                    // the process exited meanwhile
                    Err(_) => {}
                }
            }
        }
        self.unreadable = unreadable;
        if unreadable > 0 && !self.warned {
            self.warned = true;
            if super::preflight::has_capability(CAP_SYS_PTRACE) {
                // with CAP_SYS_PTRACE, only processes of another user namespace stay closed
                tracing::debug!(
                    processes = unreadable,
                    "network namespaces not readable even with CAP_SYS_PTRACE"
                );
            } else {
                tracing::warn!(
                    processes = unreadable,
                    "cannot enter the network namespace of some processes (permission denied): their \
                     long-lived sockets are counted at close only; grant CAP_SYS_PTRACE"
                );
            }
        }
        if let Ok(entries) = std::fs::read_dir("/run/netns") {
            for entry in entries.flatten() {
                let path = entry.path();
                if let Some(id) = ns_id(&path) {
                    seen.entry(id).or_insert(path);
                }
            }
        }
        if let Some(own) = own {
            seen.remove(&own);
        }
        self.foreign.retain(|id, _| seen.contains_key(id));
        for (id, path) in seen {
            if let std::collections::hash_map::Entry::Vacant(slot) = self.foreign.entry(id) {
                // a process may exit between the scan and the open: not an error
                if let Ok(file) = File::open(&path) {
                    slot.insert(file);
                }
            }
        }
    }

    /// Runs the iterator behind `link_fd` once in our namespace, then once in each foreign one
    /// from a short-lived thread (setns changes only the calling thread, which then exits).
    /// Returns how many namespaces were walked.
    pub fn walk_all(&self, link_fd: RawFd) -> Result<usize, SamplerError> {
        run_iterator(link_fd)?;
        if self.foreign.is_empty() {
            return Ok(1);
        }
        let fds: Vec<RawFd> = self.foreign.values().map(|f| f.as_raw_fd()).collect();
        let walked = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let mut walked = 0;
                    for fd in fds {
                        // SAFETY: setns on a valid nsfs fd owned by `self`, affecting only this
                        // thread, which ends when the scope does.
                        if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                            tracing::debug!(error = %std::io::Error::last_os_error(), "setns failed; namespace skipped");
                            continue;
                        }
                        match run_iterator(link_fd) {
                            Ok(()) => walked += 1,
                            Err(e) => tracing::debug!(error = %e, cause = ?std::error::Error::source(&e), "walk failed in a namespace"),
                        }
                    }
                    walked
                })
                .join()
        });
        Ok(1 + walked.unwrap_or(0))
    }
}

fn ns_id(path: &Path) -> Option<NsId> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Creates an iterator instance in the calling thread's namespace and reads it to the end: the
/// BPF program does its work as the read walks the sockets.
fn run_iterator(link_fd: RawFd) -> Result<(), SamplerError> {
    // SAFETY: plain syscall wrapper; the result is checked before use.
    let fd = unsafe { libbpf_rs::libbpf_sys::bpf_iter_create(link_fd) };
    if fd < 0 {
        return Err(SamplerError::Io {
            what: "creating the socket-walk iterator".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` was just returned by bpf_iter_create and is owned by nothing else.
    let mut iter = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut buf = [0u8; 256];
    loop {
        match iter.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(SamplerError::Io {
                    what: "reading the socket-walk iterator".into(),
                    source,
                })
            }
        }
    }
}
