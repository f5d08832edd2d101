//! Process facts: RLIMIT_NOFILE, getrusage, and /proc sampling of another
//! process (the server under test).

use crate::engine::Cpu;

/// Raise the soft RLIMIT_NOFILE towards `want` (up to the hard limit).
/// Returns the resulting soft limit.
pub fn raise_nofile(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        let target = r.rlim_max;
        if r.rlim_cur < target {
            let n = libc::rlimit {
                rlim_cur: target,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &n) == 0 {
                r.rlim_cur = target;
            }
        }
        if r.rlim_cur < want {
            eprintln!(
                "warning: RLIMIT_NOFILE is {} (hard {}), below the {want} descriptors this run needs",
                r.rlim_cur, r.rlim_max
            );
        }
        r.rlim_cur
    }
}

fn rusage() -> libc::rusage {
    // SAFETY: getrusage fills the zeroed struct.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    }
}

fn tv(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// CPU time of this process (all threads).
pub fn self_cpu() -> Cpu {
    let u = rusage();
    Cpu {
        user_s: tv(u.ru_utime),
        sys_s: tv(u.ru_stime),
    }
}

/// Peak RSS of this process (KiB).
pub fn self_max_rss_kb() -> u64 {
    rusage().ru_maxrss.max(0) as u64
}

/// Current RSS of this process (KiB).
pub fn self_rss_kb() -> u64 {
    proc_rss_kb(std::process::id()).unwrap_or(0)
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime+stime of a process from /proc/PID/stat (all its threads).
pub fn proc_cpu(pid: u32) -> Option<Cpu> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(3) ... utime(14) stime(15) → indices 11, 12.
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    let hz = clk_tck();
    Some(Cpu {
        user_s: ut / hz,
        sys_s: st / hz,
    })
}

/// VmRSS of a process (KiB).
pub fn proc_rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_proc() {
        let pid = std::process::id();
        assert!(proc_cpu(pid).is_some());
        assert!(proc_rss_kb(pid).unwrap() > 0);
        assert!(self_max_rss_kb() > 0);
        assert!(raise_nofile(16) >= 16);
    }
}
