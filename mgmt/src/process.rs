//! Process metrics of the data plane (`process_*`, the names every
//! Prometheus client library uses) read from `/proc/PID`. In-process that is
//! this process; attached, it is the pid recorded in the region header.

use std::path::PathBuf;

/// One reading.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: f64,
    pub virtual_bytes: f64,
    pub threads: f64,
    pub start_time_seconds: f64,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
}

fn sysconf(name: libc::c_int) -> Option<f64> {
    // SAFETY: sysconf only reads a configuration value.
    let v = unsafe { libc::sysconf(name) };
    (v > 0).then_some(v as f64)
}

fn boot_time_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok())
}

/// Parse `/proc/PID/stat` (fields after the parenthesised command name,
/// which may itself contain spaces and parentheses).
fn parse_stat(text: &str, ticks: f64, page: f64, boot: f64) -> Option<ProcessStats> {
    let rest = &text[text.rfind(')')? + 1..];
    // rest starts at field 3 (state); field N is index N - 3.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let utime = field(14)?;
    let stime = field(15)?;
    Some(ProcessStats {
        cpu_seconds: (utime + stime) / ticks,
        threads: field(20)?,
        start_time_seconds: boot + field(22)? / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * page,
        open_fds: None,
        max_fds: None,
    })
}

fn parse_max_fds(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        return Some(f64::INFINITY);
    }
    soft.parse().ok()
}

/// Read the metrics of `pid`; `None` if it is gone or unreadable.
pub(crate) fn read(pid: u32) -> Option<ProcessStats> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let ticks = sysconf(libc::_SC_CLK_TCK)?;
    let page = sysconf(libc::_SC_PAGESIZE)?;
    let boot = boot_time_seconds()?;
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    let mut s = parse_stat(&stat, ticks, page, boot)?;
    s.open_fds = std::fs::read_dir(dir.join("fd"))
        .ok()
        .map(|d| d.filter(|e| e.is_ok()).count() as f64);
    s.max_fds = std::fs::read_to_string(dir.join("limits"))
        .ok()
        .and_then(|l| parse_max_fds(&l));
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "4242 (rt edge) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 1000 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(line, 100.0, 4096.0, 1_000_000.0).unwrap();
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.threads, 7.0);
        assert_eq!(s.start_time_seconds, 1_000_010.0);
        assert_eq!(s.virtual_bytes, 104_857_600.0);
        assert_eq!(s.resident_bytes, 2560.0 * 4096.0);
        assert!(parse_stat("garbage", 100.0, 4096.0, 0.0).is_none());
    }

    #[test]
    fn parses_limits() {
        let l = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1048576              1048576              files\n";
        assert_eq!(parse_max_fds(l), Some(1_048_576.0));
        assert_eq!(
            parse_max_fds(
                "Max open files            unlimited            unlimited            files"
            ),
            Some(f64::INFINITY)
        );
    }

    #[test]
    fn reads_this_process() {
        let s = read(std::process::id()).expect("own /proc entry");
        assert!(s.resident_bytes > 0.0 && s.threads >= 1.0);
        assert!(s.open_fds.unwrap_or(0.0) >= 1.0);
    }
}
