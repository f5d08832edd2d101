//! Process and socket set-up the reactors need: io_uring availability,
//! RLIMIT_NOFILE, SO_REUSEPORT listeners.

use std::io;
use std::net::SocketAddr;

/// Create and drop a small ring, so a kernel or sandbox without io_uring is
/// reported before anything else starts.
pub fn probe_io_uring() -> io::Result<()> {
    match io_uring::IoUring::new(8) {
        Ok(_) => Ok(()),
        Err(e) => {
            let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .ok()
                .map(|s| s.trim().to_string());
            match sysctl.as_deref() {
                Some("1") | Some("2") => Err(io::Error::new(
                    e.kind(),
                    format!(
                        "{e}; kernel.io_uring_disabled = {}",
                        sysctl.unwrap_or_default()
                    ),
                )),
                _ => Err(e),
            }
        }
    }
}

/// Raise the soft (and, when permitted, hard) open-file limit towards
/// `wanted`. Returns the soft limit now in force.
pub fn raise_nofile(wanted: u64) -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the live struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur >= wanted {
        return Ok(lim.rlim_cur);
    }
    let mut new = libc::rlimit {
        rlim_cur: wanted.min(lim.rlim_max.max(wanted)),
        rlim_max: lim.rlim_max.max(wanted),
    };
    // SAFETY: setrlimit reads the live struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        // Not privileged to raise the hard limit: go as far as it allows.
        new = libc::rlimit {
            rlim_cur: lim.rlim_max.min(wanted),
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(new.rlim_cur)
}

/// Fails with `AddrInUse` when something listens on `addr` already — even
/// another rtedge, whose SO_REUSEPORT group a new listener would silently
/// join (the kernel would then split connections between two processes
/// that do not share sessions). The probe binds without SO_REUSEPORT.
pub fn ensure_unused(addr: SocketAddr) -> io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() == 0 {
        return Ok(());
    }
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    // Connections of an earlier run in TIME_WAIT do not count.
    s.set_reuse_address(true)?;
    s.bind(&addr.into())
}

/// A listening TCP socket in the address's SO_REUSEPORT group.
pub fn reuseport_listener(addr: SocketAddr) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s)
}

/// The host's interface addresses (for wildcard listeners: any of them
/// reaches the listener). Empty when they cannot be listed.
pub fn interface_addrs() -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive
        // until freeifaddrs below.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family says how
            // large it is.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: AF_INET: a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(std::net::IpAddr::V4(std::net::Ipv4Addr::from(
                    u32::from_be(sin.sin_addr.s_addr),
                )));
            } else if family == libc::AF_INET6 {
                // SAFETY: AF_INET6: a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(std::net::IpAddr::V6(std::net::Ipv6Addr::from(
                    sin6.sin6_addr.s6_addr,
                )));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuseport_group_shares_a_port_but_not_with_strangers() {
        let a = reuseport_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = a.local_addr().unwrap().as_socket().unwrap();
        let _b = reuseport_listener(addr).unwrap();
        // A socket outside the group (no SO_REUSEPORT) is refused.
        assert!(std::net::TcpListener::bind(addr).is_err());
    }

    fn nofile() -> (u64, u64) {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the live struct we pass.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        (lim.rlim_cur, lim.rlim_max)
    }

    #[test]
    fn nofile_is_raised_as_far_as_the_hard_limit_allows() {
        let (_, hard) = nofile();
        // Start from a low soft limit (lowering is always allowed), so the
        // raise has something to do even where soft == hard already.
        let low = libc::rlimit {
            rlim_cur: hard.min(4096),
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the live struct we pass.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
        // Asking for more than the hard limit gets the hard limit (or more,
        // when privileged), never an error, and the call reports what is
        // now in force.
        let got = raise_nofile(hard.saturating_add(1024)).unwrap();
        let (soft, _) = nofile();
        assert_eq!(got, soft);
        assert!(
            soft >= hard.min(hard.saturating_add(1024)),
            "soft {soft} < hard {hard}"
        );
        // Asking for less than what is in force changes nothing.
        assert_eq!(raise_nofile(16).unwrap(), soft);
        assert_eq!(nofile().0, soft);
    }

    #[test]
    fn interface_addrs_include_loopback() {
        let a = super::interface_addrs();
        assert!(a.iter().any(|ip| ip.is_loopback()), "{a:?}");
    }
}
