//! `cosigner-init`: PID 1 of the cosigner enclave image.
//!
//! The kernel of a Nitro Enclave unpacks the EIF's ramdisks and runs `/init`. AWS's own init
//! (`init/init.c` of aws-nitro-enclaves-sdk-bootstrap, shipped as `blobs/init` with
//! aws-nitro-enclaves-cli) starts a Docker image's command in a chroot; this one does only what
//! the cosigner enclave needs, in the same order, with no chroot and no shell:
//!
//! 1. block every signal (`main()`: `sigprocmask(SIG_BLOCK, all)`; children get an empty mask);
//! 2. mount `devtmpfs` on `/dev`, tolerating `EBUSY` (`init_dev()`);
//! 3. point stdin, stdout and stderr at `/dev/console` (`init_console()`);
//! 4. mount `/proc`, `/run`, `/tmp`, `/sys` and the `/dev/fd`, `/dev/std*` links (the `ops` table
//!    and `init_fs()`: same flags);
//! 5. load `/nsm.ko`, the Nitro Secure Module driver, with `finit_module(2)` and delete the file
//!    (`init_nsm_driver()`); without it there is no `/dev/nsm` and no attestation;
//! 6. tell the parent the enclave booted: connect to vsock CID 3 port 9000, send 0xB7, read 0xB7
//!    back (`enclave_ready()`; `nitro-cli run-enclave` waits for this heartbeat);
//! 7. start `/cosigner-enclave run --config /etc/cosigner/enclave.toml` with a fixed environment
//!    (`launch()`), in its own process group;
//! 8. reap every child (orphans are re-parented to PID 1) until that one exits, then reboot
//!    (`reap_until()`, `reboot(RB_AUTOBOOT)`), which ends the enclave.
//!
//! A failure before step 7 exits, as AWS's `die()` does: PID 1 exiting panics the kernel and the
//! enclave stops (visible on `nitro-cli console` in debug mode). There is no `unsafe` here: `nix`
//! wraps every system call.

use std::ffi::CStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, VsockAddr, connect, socket};
use nix::sys::wait::{WaitStatus, wait};
use nix::unistd::Pid;

/// The parent instance's vsock context id, as seen from every enclave.
const PARENT_CID: u32 = 3;
/// The port `nitro-cli run-enclave` listens on for the boot heartbeat.
const HEARTBEAT_PORT: u32 = 9000;
/// The heartbeat byte: sent, and expected back (AWS's `HEART_BEAT`).
const HEARTBEAT: u8 = 0xB7;
/// The NSM driver inside the ramdisk (AWS's `NSM_PATH`, made absolute).
const NSM_MODULE: &str = "/nsm.ko";
/// The service binary and its arguments.
const SERVICE: [&str; 4] = [
    "/cosigner-enclave",
    "run",
    "--config",
    "/etc/cosigner/enclave.toml",
];
/// The only environment the service gets (AWS's `DEFAULT_PATH_ENV`).
const SERVICE_ENV: [(&str, &str); 1] = [("PATH", "/sbin:/usr/sbin:/bin:/usr/bin")];
/// The console the kernel gives PID 1 (`console=ttyS0` on the Nitro kernel command line).
const CONSOLE: &str = "/dev/console";

/// One `mount(2)` call.
#[derive(Debug, Clone, Copy)]
struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NODEV_NOSUID_NOEXEC: MsFlags = MsFlags::MS_NODEV
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NOEXEC);

/// `/dev` first: the console lives there (`init_dev()`).
const DEV: Mount = Mount {
    source: "dev",
    target: "/dev",
    fstype: "devtmpfs",
    flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
    data: None,
};

/// The rest, in the order and with the flags of AWS's `ops` table (its `/dev/shm`, `/dev/pts` and
/// cgroup mounts are left out: the service needs none of them).
const MOUNTS: [Mount; 4] = [
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NODEV_NOSUID_NOEXEC,
        data: None,
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NODEV_NOSUID_NOEXEC,
        data: Some("mode=0755"),
    },
    Mount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NODEV_NOSUID_NOEXEC,
        data: None,
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NODEV_NOSUID_NOEXEC,
        data: None,
    },
];

/// `(link, target)`: the `/dev` links of AWS's `ops` table (they need `/proc`).
const SYMLINKS: [(&str, &str); 4] = [
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
];

fn log(message: impl std::fmt::Display) {
    eprintln!("cosigner-init: {message}");
}

fn do_mount(m: &Mount) -> nix::Result<()> {
    mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data)
}

/// Step 2: devtmpfs on `/dev`; `EBUSY` means the kernel mounted it already
/// (`CONFIG_DEVTMPFS_MOUNT`), which is fine.
fn mount_dev() -> Result<(), String> {
    match do_mount(&DEV) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(e) => Err(format!("mount {}: {e}", DEV.target)),
    }
}

/// Step 3: stdin, stdout and stderr on the console. Not fatal: without a console the service
/// still runs, it only cannot be watched.
fn open_console() {
    let result = File::options()
        .read(true)
        .write(true)
        .open(CONSOLE)
        .map_err(|e| e.to_string())
        .and_then(|console| {
            nix::unistd::dup2_stdin(&console)
                .and_then(|()| nix::unistd::dup2_stdout(&console))
                .and_then(|()| nix::unistd::dup2_stderr(&console))
                .map_err(|e| e.to_string())
        });
    if let Err(e) = result {
        log(format_args!("no console ({CONSOLE}: {e}); continuing"));
    }
}

/// Step 4.
fn mount_filesystems() -> Result<(), String> {
    for m in &MOUNTS {
        do_mount(m).map_err(|e| format!("mount {}: {e}", m.target))?;
    }
    for (link, target) in SYMLINKS {
        match std::os::unix::fs::symlink(target, link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("symlink {link}: {e}")),
        }
    }
    Ok(())
}

/// Step 5. A missing module is skipped, as AWS's init does (the service then fails to open the
/// NSM and says so); one the kernel already has (`EEXIST`) is fine.
fn load_nsm_driver() -> Result<(), String> {
    let module = match File::open(NSM_MODULE) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            log(format_args!(
                "{NSM_MODULE} absent: NSM driver not loaded, attestation will fail"
            ));
            return Ok(());
        }
        Err(e) => return Err(format!("open {NSM_MODULE}: {e}")),
    };
    let no_parameters: &CStr = c"";
    match nix::kmod::finit_module(&module, no_parameters, nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(format!("finit_module {NSM_MODULE}: {e}")),
    }
    drop(module);
    if let Err(e) = std::fs::remove_file(NSM_MODULE) {
        log(format_args!("could not delete {NSM_MODULE}: {e}"));
    }
    Ok(())
}

/// The heartbeat exchange on a connected stream: write 0xB7, read one byte, expect 0xB7.
fn heartbeat<S: Read + Write>(stream: &mut S) -> Result<(), String> {
    stream
        .write_all(&[HEARTBEAT])
        .map_err(|e| format!("write heartbeat: {e}"))?;
    let mut echo = [0u8; 1];
    stream
        .read_exact(&mut echo)
        .map_err(|e| format!("read heartbeat: {e}"))?;
    if echo != [HEARTBEAT] {
        return Err(format!(
            "received wrong heartbeat {:#04x}, expected {HEARTBEAT:#04x}",
            echo[0]
        ));
    }
    Ok(())
}

/// Step 6: vsock stream to the parent's heartbeat port.
fn signal_ready() -> Result<(), String> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("vsock socket: {e}"))?;
    let address = VsockAddr::new(PARENT_CID, HEARTBEAT_PORT);
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &address)
        .map_err(|e| format!("connect to vsock {PARENT_CID}:{HEARTBEAT_PORT}: {e}"))?;
    let mut stream = File::from(fd);
    heartbeat(&mut stream)
}

/// Step 7. `std` gives the child an empty signal mask and default dispositions before `exec`, so
/// the service does not inherit step 1's mask (AWS's `launch()` unblocks by hand).
fn service_command() -> Command {
    let [program, args @ ..] = SERVICE;
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(SERVICE_ENV)
        .current_dir("/")
        .process_group(0);
    command
}

/// The exit status AWS's `reap_until()` reports for the service: its code, or 128 + signal.
fn exit_status(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}

/// Step 8: wait for any child; orphans adopted by PID 1 are reaped too.
fn reap_until(service: Pid) -> i32 {
    loop {
        match wait() {
            Ok(status) if status.pid() == Some(service) => {
                if let Some(code) = exit_status(status) {
                    return code;
                }
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                log(format_args!("wait: {e}"));
                return 1;
            }
        }
    }
}

fn boot() -> Result<i32, String> {
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), None)
        .map_err(|e| format!("sigprocmask: {e}"))?;
    mount_dev()?;
    open_console();
    mount_filesystems()?;
    load_nsm_driver()?;
    signal_ready()?;
    let child = service_command()
        .spawn()
        .map_err(|e| format!("start {}: {e}", SERVICE[0]))?;
    let pid = i32::try_from(child.id()).map_err(|e| format!("child pid: {e}"))?;
    log(format_args!("started {} (pid {pid})", SERVICE[0]));
    let code = reap_until(Pid::from_raw(pid));
    log(format_args!("{} exited with status {code}", SERVICE[0]));
    Ok(code)
}

fn main() -> ExitCode {
    if std::process::id() != 1 {
        log("must run as PID 1 inside the enclave image; refusing to mount or reboot here");
        return ExitCode::from(2);
    }
    match boot() {
        Ok(_) => {
            // Power the enclave off, as AWS's init does once its command exits.
            let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
            log(format_args!("reboot: {e}"));
            ExitCode::FAILURE
        }
        Err(e) => {
            log(format_args!("fatal: {e}"));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn heartbeat_constants_are_nitros() {
        assert_eq!(HEARTBEAT, 0xB7);
        assert_eq!(PARENT_CID, 3);
        assert_eq!(HEARTBEAT_PORT, 9000);
    }

    /// [`heartbeat`] to a parent that reads one byte and answers `answer` of it: what
    /// `heartbeat` returned, and the byte the parent read.
    fn heartbeat_to(answer: fn(u8) -> u8) -> (Result<(), String>, u8) {
        let (mut ours, mut parent) = UnixStream::pair().unwrap();
        let peer = std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            parent.read_exact(&mut byte).unwrap();
            parent.write_all(&[answer(byte[0])]).unwrap();
            byte[0]
        });
        let result = heartbeat(&mut ours);
        (result, peer.join().unwrap())
    }

    #[test]
    fn heartbeat_sends_b7_and_accepts_the_echo() {
        let (result, sent) = heartbeat_to(|byte| byte);
        result.unwrap();
        assert_eq!(sent, 0xB7);
    }

    #[test]
    fn heartbeat_refuses_a_wrong_echo_and_a_closed_peer() {
        let err = heartbeat_to(|_| 0x00).0.unwrap_err();
        assert!(err.contains("wrong heartbeat 0x00"), "{err}");

        let (mut ours, parent) = UnixStream::pair().unwrap();
        drop(parent);
        assert!(heartbeat(&mut ours).is_err());
    }

    #[test]
    fn mount_table_mirrors_aws_init() {
        assert_eq!(DEV.fstype, "devtmpfs");
        assert_eq!(DEV.flags, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC);
        let targets: Vec<&str> = MOUNTS.iter().map(|m| m.target).collect();
        assert_eq!(targets, ["/proc", "/run", "/tmp", "/sys"]);
        for m in &MOUNTS {
            assert_eq!(
                m.flags,
                MsFlags::MS_NODEV | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                "{}",
                m.target
            );
        }
        let fstypes: Vec<&str> = MOUNTS.iter().map(|m| m.fstype).collect();
        assert_eq!(fstypes, ["proc", "tmpfs", "tmpfs", "sysfs"]);
        assert_eq!(MOUNTS[1].data, Some("mode=0755"));
        // The /dev links point into /proc, which is mounted by then.
        for (link, target) in SYMLINKS {
            assert!(link.starts_with("/dev/"), "{link}");
            assert!(target.starts_with("/proc/self/fd"), "{target}");
        }
    }

    #[test]
    fn the_service_is_the_enclave_with_the_baked_config() {
        let command = service_command();
        assert_eq!(command.get_program(), "/cosigner-enclave");
        let args: Vec<_> = command.get_args().collect();
        assert_eq!(args, ["run", "--config", "/etc/cosigner/enclave.toml"]);
        let envs: Vec<_> = command.get_envs().collect();
        assert_eq!(
            envs,
            [(
                std::ffi::OsStr::new("PATH"),
                Some(std::ffi::OsStr::new("/sbin:/usr/sbin:/bin:/usr/bin"))
            )]
        );
        assert_eq!(NSM_MODULE, "/nsm.ko");
    }

    #[test]
    fn exit_status_is_code_or_128_plus_signal() {
        let pid = Pid::from_raw(42);
        assert_eq!(exit_status(WaitStatus::Exited(pid, 3)), Some(3));
        assert_eq!(
            exit_status(WaitStatus::Signaled(
                pid,
                nix::sys::signal::Signal::SIGKILL,
                false
            )),
            Some(137)
        );
        assert_eq!(exit_status(WaitStatus::StillAlive), None);
    }

    /// Step 1 blocks every signal in init; the service must not inherit that mask.
    #[test]
    fn children_start_with_no_blocked_signal() {
        let output = std::thread::spawn(|| {
            // sigprocmask is per thread here: this blocks only in this test's thread.
            sigprocmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), None).unwrap();
            let mut blocked = SigSet::empty();
            sigprocmask(SigmaskHow::SIG_BLOCK, None, Some(&mut blocked)).unwrap();
            assert!(blocked.contains(nix::sys::signal::Signal::SIGTERM));
            Command::new("/bin/sh")
                .args(["-c", "grep '^SigBlk:' /proc/self/status"])
                .process_group(0)
                .output()
                .unwrap()
        })
        .join()
        .unwrap();
        let line = String::from_utf8(output.stdout).unwrap();
        assert_eq!(line.trim(), "SigBlk:\t0000000000000000", "{line}");
    }
}
