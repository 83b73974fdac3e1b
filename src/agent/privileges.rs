//! Least privilege for `flowtel run`: once the programs are loaded and attached, every thread
//! gives up the capabilities it no longer needs.
//!
//! Capabilities belong to threads, not to the process, and a thread inherits its creator's. So:
//! - the async runtime's threads drop everything as they start ([`drop_runtime_thread`]); they
//!   serve HTTP and send OTLP, which needs no privilege;
//! - the poll thread starts with the full set, loads, attaches and opens its outputs, then keeps
//!   only [`poll_thread_keeps`]: entering other network namespaces for the socket walk
//!   (`setns` needs CAP_SYS_ADMIN, opening another user's `/proc/PID/ns/net` needs
//!   CAP_SYS_PTRACE), and asking conntrack when NAT reversal is on (CAP_NET_ADMIN). Reading and
//!   draining the maps through the file descriptors it already holds needs none;
//! - the main thread drops everything once it has started the poll thread.
//!
//! Each drop empties the ambient and inheritable sets, lowers the bounding set (when the thread
//! may: that needs CAP_SETPCAP) and sets `no_new_privs`, so that no exec can win anything back.
use caps::{CapSet, Capability, CapsHashSet};

/// What the poll thread keeps after attaching: the namespace walk's two, and CAP_NET_ADMIN when
/// NAT reversal asks conntrack (ctnetlink checks it on every request).
pub fn poll_thread_keeps(nat_reversal: bool) -> Vec<Capability> {
    let mut keep = vec![Capability::CAP_SYS_ADMIN, Capability::CAP_SYS_PTRACE];
    if nat_reversal {
        keep.push(Capability::CAP_NET_ADMIN);
    }
    keep
}

#[derive(Debug, thiserror::Error)]
#[error("dropping capabilities ({step}): {source}")]
pub struct DropError {
    step: &'static str,
    #[source]
    source: caps::errors::CapsError,
}

/// Lowers the calling thread to `keep` (intersected with what it holds).
pub fn drop_to(keep: &[Capability]) -> Result<CapsHashSet, DropError> {
    let err = |step| move |source| DropError { step, source };
    let held = caps::read(None, CapSet::Permitted).map_err(err("reading the permitted set"))?;
    let kept: CapsHashSet = keep.iter().copied().filter(|c| held.contains(c)).collect();
    // the bounding set first: lowering it needs CAP_SETPCAP, which is about to go
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in caps::all().difference(&kept) {
            caps::drop(None, CapSet::Bounding, *cap).map_err(err("lowering the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(err("clearing the ambient set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(err("clearing the inheritable set"))?;
    // effective before permitted: the kernel refuses an effective set wider than the permitted
    caps::set(None, CapSet::Effective, &kept).map_err(err("lowering the effective set"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(err("lowering the permitted set"))?;
    set_no_new_privs();
    Ok(kept)
}

/// For the async runtime's `on_thread_start`: a runtime thread needs no capability. A failure
/// is logged, not fatal: the thread then runs with what it inherited.
pub fn drop_runtime_thread() {
    if let Err(e) = drop_to(&[]) {
        tracing::warn!(error = %e, "a runtime thread could not drop its capabilities");
    }
}

/// Names for a log line, in a stable order.
pub fn names(set: &CapsHashSet) -> String {
    let mut names: Vec<String> = set.iter().map(|c| c.to_string()).collect();
    names.sort();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

fn set_no_new_privs() {
    // SAFETY: prctl with integer arguments only; it affects the calling thread.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "PR_SET_NO_NEW_PRIVS failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs on a thread of its own: a drop must never reach the test harness's threads.
    #[test]
    fn a_thread_keeps_only_what_it_asks_for_and_cannot_regain_the_rest() {
        let outcome = std::thread::spawn(|| {
            let before = caps::read(None, CapSet::Permitted).expect("read");
            let kept = drop_to(&[Capability::CAP_SYS_PTRACE]).expect("drop");
            let effective = caps::read(None, CapSet::Effective).expect("read");
            let permitted = caps::read(None, CapSet::Permitted).expect("read");
            let regained = caps::raise(None, CapSet::Effective, Capability::CAP_BPF).is_ok();
            (before, kept, effective, permitted, regained)
        })
        .join()
        .expect("thread");
        let (before, kept, effective, permitted, regained) = outcome;
        let expected: CapsHashSet = [Capability::CAP_SYS_PTRACE]
            .into_iter()
            .filter(|c| before.contains(c))
            .collect();
        assert_eq!(kept, expected);
        assert_eq!(effective, expected);
        assert_eq!(permitted, expected);
        assert!(!regained, "a dropped capability cannot be raised again");
        // the harness thread is untouched
        assert_eq!(caps::read(None, CapSet::Permitted).expect("read"), before);
    }
}
