//! The agent's own CPU time and resident memory, from /proc/self, for its self-metrics.

/// CPU seconds (user, system) and resident set size.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProcessStats {
    pub cpu_user_seconds: f64,
    pub cpu_system_seconds: f64,
    pub rss_bytes: u64,
}

/// Reads /proc/self/stat and /proc/self/statm; `None` where /proc is unreadable.
pub fn read() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    parse(&stat, &statm, u64::try_from(ticks).ok()?, u64::try_from(page).ok()?)
}

/// `stat`: fields after the parenthesised command name; utime and stime are the 12th and 13th
/// of those (14th and 15th overall). `statm`: the second field is resident pages.
fn parse(stat: &str, statm: &str, ticks_per_second: u64, page_size: u64) -> Option<ProcessStats> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let ticks = ticks_per_second.max(1) as f64;
    Some(ProcessStats {
        cpu_user_seconds: utime as f64 / ticks,
        cpu_system_seconds: stime as f64 / ticks,
        rss_bytes: resident * page_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_command_name() {
        let stat = "4242 (flow tel) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 75 0 0 20 0 3 0 100 1000 50";
        let statm = "12000 2500 800 100 0 3000 0";
        let s = parse(stat, statm, 100, 4096).expect("parses");
        assert_eq!(s.cpu_user_seconds, 2.5);
        assert_eq!(s.cpu_system_seconds, 0.75);
        assert_eq!(s.rss_bytes, 2500 * 4096);
        assert_eq!(parse("garbage", statm, 100, 4096), None);
    }

    #[test]
    fn reads_this_process() {
        let s = read().expect("/proc/self is readable");
        assert!(s.rss_bytes > 0);
    }
}
