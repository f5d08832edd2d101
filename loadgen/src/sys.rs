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

/// CPU of the server under test: the process alone, or with `tree` the
/// sum over it and every descendant process (multi-process servers such
/// as Kamailio, whose work happens in forked children). Also returns how
/// many processes were summed.
pub fn server_cpu(pid: u32, tree: bool) -> Option<(Cpu, u32)> {
    let own = proc_cpu(pid)?;
    if !tree {
        return Some((own, 1));
    }
    let mut sum = own;
    let mut n = 1;
    for d in descendants(pid) {
        // A child may exit between the listing and the read: skip it.
        if let Some(c) = proc_cpu(d) {
            sum.user_s += c.user_s;
            sum.sys_s += c.sys_s;
            n += 1;
        }
    }
    Some((sum, n))
}

/// Every process below `pid` (children, grandchildren…), from the parent
/// pids in /proc/*/stat.
pub fn descendants(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut parent_of = Vec::new();
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // After the command: state(3) ppid(4) → index 1.
        let ppid = s
            .rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().nth(1))
            .and_then(|v| v.parse::<u32>().ok());
        if let Some(pp) = ppid {
            parent_of.push((p, pp));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(x) = frontier.pop() {
        for &(p, pp) in &parent_of {
            if pp == x && p != pid && !out.contains(&p) {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out
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
        // A child of ours is a descendant and is summed with --server-tree.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(descendants(pid).contains(&child.id()));
        let (_, n) = server_cpu(pid, true).unwrap();
        assert!(n >= 2);
        assert_eq!(server_cpu(pid, false).unwrap().1, 1);
        let _ = child.kill();
        let _ = child.wait();
    }
}
