//! Start-up failures are reported in operator terms, not as crashes.

mod common;

use common::*;
use std::time::Duration;

/// A kernel or sandbox without io_uring (e.g. `kernel.io_uring_disabled`
/// or a seccomp policy): rtedge says so and exits non-zero. The test puts
/// the child under a seccomp filter that fails `io_uring_setup` with EPERM.
#[cfg(target_arch = "x86_64")]
#[test]
fn io_uring_unavailable_is_reported_clearly() {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    let cfg = ServerConfig::new().listen_ws();
    let file = cfg.dir.path().join("rtedge.toml");
    std::fs::write(&file, cfg.render()).unwrap();

    const SYS_IO_URING_SETUP: u32 = 425;
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO_EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
    let ld = |k| libc::sock_filter {
        code: 0x20,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k, jt, jf| libc::sock_filter {
        code: 0x15,
        jt,
        jf,
        k,
    };
    let ret = |k| libc::sock_filter {
        code: 0x06,
        jt: 0,
        jf: 0,
        k,
    };
    let filter = [
        ld(4), // seccomp_data.arch
        jeq(AUDIT_ARCH_X86_64, 0, 3),
        ld(0), // seccomp_data.nr
        jeq(SYS_IO_URING_SETUP, 0, 1),
        ret(RET_ERRNO_EPERM),
        ret(RET_ALLOW),
    ];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rtedge"));
    cmd.arg("run")
        .arg("--config")
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec only async-signal-safe calls (prctl) are
    // made, on memory (`filter`, `prog`) that the child's copy still holds.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    let out = wait_output(child, Duration::from_secs(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without io_uring: {err}");
    assert!(err.contains("io_uring is unavailable"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

fn wait_output(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let start = std::time::Instant::now();
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("rtedge did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn unreadable_tls_certificate_is_named() {
    let cfg = ServerConfig::new();
    let file = cfg.dir.path().join("rtedge.toml");
    let text = cfg.render().replacen(
        "[websocket]",
        "[[listen]]\ntransport = \"wss\"\naddress = \"127.0.0.1:0\"\ntls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n\n[websocket]",
        1,
    );
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rtedge"))
        .arg("run")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
}
