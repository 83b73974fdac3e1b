//! Cgroup IDs (what the kernel records for a socket's owner) back to cgroup paths. On cgroup v2
//! a cgroup's ID is its directory's inode number, so one walk of the hierarchy maps them all.
//! The walk is redone when an unknown ID turns up, at most once per [`RESCAN_EVERY`].
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const RESCAN_EVERY: Duration = Duration::from_secs(10);
/// Kubelet hierarchies are 5 to 7 levels deep under the root; the walk stops well below that.
const MAX_DEPTH: usize = 12;
/// Cgroups remembered at most (a node has a few thousand).
const MAX_CGROUPS: usize = 200_000;

#[derive(Debug)]
pub struct CgroupIds {
    root: PathBuf,
    paths: HashMap<u64, Arc<str>>,
    last_scan: Option<Instant>,
}

impl CgroupIds {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            paths: HashMap::new(),
            last_scan: None,
        }
    }

    /// The cgroup's path (`<root>/kubepods.slice/...`).
    pub fn path(&mut self, id: u64, now: Instant) -> Option<Arc<str>> {
        if let Some(p) = self.paths.get(&id) {
            return Some(Arc::clone(p));
        }
        if self.last_scan.is_some_and(|t| now.duration_since(t) < RESCAN_EVERY) {
            return None;
        }
        self.last_scan = Some(now);
        self.paths.clear();
        let root = self.root.clone();
        self.scan(&root, 0);
        self.paths.get(&id).cloned()
    }

    fn scan(&mut self, dir: &Path, depth: usize) {
        if depth > MAX_DEPTH || self.paths.len() >= MAX_CGROUPS {
            return;
        }
        if let Ok(meta) = std::fs::metadata(dir) {
            // the full path: the root may be a subtree (sampler.cgroup_path) or a host mount
            // (/host/sys/fs/cgroup), and the parser looks for the kubepods level anywhere
            self.paths
                .insert(meta.ino(), Arc::from(dir.display().to_string().as_str()));
        }
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                self.scan(&entry.path(), depth + 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_directory_inodes_and_new_ones_are_found_after_the_rescan_interval() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pod = dir.path().join("kubepods.slice/kubepods-pod1.slice");
        std::fs::create_dir_all(&pod).expect("dirs");
        let ino = |p: &Path| std::fs::metadata(p).expect("meta").ino();
        let mut ids = CgroupIds::new(dir.path().to_path_buf());
        let t0 = Instant::now();
        assert_eq!(ids.path(ino(&pod), t0).as_deref(), pod.to_str());
        let later = pod.join("cri-containerd-abc.scope");
        std::fs::create_dir(&later).expect("dir");
        assert_eq!(
            ids.path(ino(&later), t0 + Duration::from_secs(1)),
            None,
            "not rescanned yet"
        );
        assert_eq!(ids.path(ino(&later), t0 + RESCAN_EVERY).as_deref(), later.to_str());
    }
}
