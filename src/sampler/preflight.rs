//! Host checks that turn the usual failures into one-line errors naming the fix, before libbpf
//! gets to print a page of verifier output.
use std::path::Path;

use super::SamplerError;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

pub(super) fn check() -> Result<(), SamplerError> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(SamplerError::NoBtf);
    }
    let status = std::fs::read_to_string("/proc/thread-self/status").map_err(|source| SamplerError::Io {
        what: "reading /proc/thread-self/status".into(),
        source,
    })?;
    let effective = effective_caps(&status).unwrap_or(0);
    let missing = missing_caps(effective);
    if !missing.is_empty() {
        return Err(SamplerError::Permission {
            what: format!("missing {}", missing.join(", ")),
        });
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK, whose default (64 KiB to 8 MiB) is far
/// below what the pair maps take. libbpf asks for an unlimited limit there, which fails without
/// CAP_SYS_RESOURCE when the hard limit is finite; raising the soft limit to the hard one needs
/// no privilege. Returns the limit in force afterwards (bytes; None for unlimited).
pub(super) fn raise_memlock_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a plain struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) == 0 {
                limit = raised;
            }
        }
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Whether the calling thread holds capability `bit` now. Capabilities are per thread, and
/// the agent's threads hold different sets: /proc/self/status would show the main thread's.
pub(super) fn has_capability(bit: u32) -> bool {
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|s| effective_caps(&s))
        .is_some_and(|caps| caps & (1u64 << bit) != 0)
}

fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

fn missing_caps(effective: u64) -> Vec<&'static str> {
    // CAP_SYS_ADMIN: entering other network namespaces for the socket walk
    [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ]
    .into_iter()
    .filter(|(bit, _)| effective & (1u64 << bit) == 0)
    .map(|(_, name)| name)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_everything() {
        let status = "Name:\tflowtel\nCapEff:\t000001ffffffffff\n";
        assert_eq!(missing_caps(effective_caps(status).unwrap_or(0)), Vec::<&str>::new());
    }

    #[test]
    fn the_memlock_soft_limit_rises_to_the_hard_limit() {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit with valid pointers; lowering the soft limit needs no
        // privilege and raising it back to the hard limit is what the code under test does.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit), 0);
            let lowered = libc::rlimit {
                rlim_cur: 64 * 1024,
                rlim_max: limit.rlim_max,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_MEMLOCK, &lowered), 0);
        }
        let after = raise_memlock_limit();
        let expected = (limit.rlim_max != libc::RLIM_INFINITY).then_some(limit.rlim_max);
        assert_eq!(after, expected);
    }

    #[test]
    fn an_unprivileged_process_misses_all_four() {
        let status = "CapEff:\t0000000000000000\n";
        assert_eq!(
            missing_caps(effective_caps(status).unwrap_or(0)),
            vec!["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"]
        );
    }
}
