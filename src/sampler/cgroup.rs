//! Finding the cgroup-v2 directory to attach to, wherever this host mounts the hierarchy.
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::SamplerError;

/// The attach point and what the walk needs to filter on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupTarget {
    pub path: PathBuf,
    /// Kernfs id of the directory (its inode number); 0 when it is the hierarchy's root, which
    /// needs no filter.
    pub id: u64,
    /// Depth below the root of the hierarchy.
    pub level: u32,
}

/// The cgroup2 mount points listed in a mountinfo text, in order.
pub fn cgroup2_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // "36 35 0:30 / /sys/fs/cgroup/unified rw,... shared:9 - cgroup2 cgroup2 rw"
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(unescape_mountinfo(mount_point)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The cgroup-v2 root: `/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on hybrid ones,
/// wherever mountinfo says it is.
pub fn detect_root(mountinfo: &str) -> Result<PathBuf, SamplerError> {
    let mounts = cgroup2_mounts(mountinfo);
    mounts
        .iter()
        .find(|m| m.as_path() == Path::new("/sys/fs/cgroup"))
        .or_else(|| mounts.first())
        .cloned()
        .ok_or(SamplerError::NoCgroup2)
}

/// Resolves the configured path (or the detected root) into an attach target.
pub fn resolve(configured: Option<&Path>) -> Result<CgroupTarget, SamplerError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| SamplerError::Io {
        what: "reading /proc/self/mountinfo".into(),
        source,
    })?;
    let mounts = cgroup2_mounts(&mountinfo);
    let path = match configured {
        Some(p) => p.to_path_buf(),
        None => detect_root(&mountinfo)?,
    };
    let meta = std::fs::metadata(&path).map_err(|_| SamplerError::CgroupPath { path: path.clone() })?;
    let root = mounts
        .iter()
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.components().count())
        .ok_or_else(|| SamplerError::CgroupPath { path: path.clone() })?;
    let level = path.components().count() - root.components().count();
    Ok(CgroupTarget {
        id: if level == 0 { 0 } else { meta.ino() },
        level: level as u32,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 0:23 / /sys rw,nosuid - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
";
    const UNIFIED: &str = "\
25 1 0:23 / /sys rw,nosuid - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
40 25 0:40 / /mnt/other\\040cg rw - cgroup2 cgroup2 rw
";

    #[test]
    fn hybrid_hosts_use_the_unified_mount() {
        assert_eq!(detect_root(HYBRID).ok(), Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn unified_hosts_prefer_sys_fs_cgroup() {
        assert_eq!(detect_root(UNIFIED).ok(), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_mounts(UNIFIED)[1], PathBuf::from("/mnt/other cg"));
    }

    #[test]
    fn no_cgroup2_is_an_error() {
        let v1_only = "32 30 0:28 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
        assert!(matches!(detect_root(v1_only), Err(SamplerError::NoCgroup2)));
    }
}
