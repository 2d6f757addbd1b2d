//! Restarts VMs do not notice. `yolo-store mount` is a supervisor: it
//! mounts, answers the kernel's one INIT, and keeps the `/dev/fuse`
//! connection open for the life of the mount, while server processes (the
//! same binary, `--serve-control FD`) serve it one after another. A server
//! that dies is replaced; on SIGHUP (`mount --upgrade`) the binary now at
//! the supervisor's path replaces the running one. Why this shape:
//! `docs/design.md`, *Restarts VMs do not notice*.
//!
//! The hand-over, on a SOCK_SEQPACKET socket pair:
//! 1. the supervisor starts a server, which opens the store and its images
//!    (the slow part) while the old server, if any, still serves;
//! 2. the server sends `R` (ready);
//! 3. the supervisor makes sure the old server is dead (SIGKILL for an
//!    upgrade), asks the kernel to queue again every request a dead server
//!    had read and not answered (`FUSE_NOTIFY_RESEND`), and sends `G` with
//!    the connection, the inode log and the INIT's protocol version;
//! 4. the server serves until the mount goes away, then exits 0.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use fuser::{KernelConfig, Request};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::inodes::Inodes;
use super::session::{fuse_config, set_bdi_read_ahead, MountOptions};
use super::{configure_init, Backend, ImagesFs, Passthrough};

/// What the status file says about the serving process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerProcess {
    pub server_pid: u32,
    pub supervisor_pid: u32,
    /// Servers started because the one before died.
    pub server_restarts: u32,
    /// Servers started by `mount --upgrade` (SIGHUP).
    pub server_upgrades: u32,
}

impl ServerProcess {
    /// `body` (the status JSON) with the process fields added.
    pub fn add_to_status(&self, body: Vec<u8>) -> Vec<u8> {
        let Ok(serde_json::Value::Object(mut map)) = serde_json::from_slice(&body) else {
            return body;
        };
        for (key, value) in [
            ("server_pid", self.server_pid),
            ("supervisor_pid", self.supervisor_pid),
            ("server_restarts", self.server_restarts),
            ("server_upgrades", self.server_upgrades),
        ] {
            map.insert(key.into(), value.into());
        }
        serde_json::to_vec_pretty(&map).unwrap_or(body)
    }
}

/// The `G` message: protocol version, generation, restarts, upgrades,
/// supervisor pid (u32 LE each), with the connection and the inode log as
/// SCM_RIGHTS.
const GO_LEN: usize = 1 + 7 * 4;
const READY: u8 = b'R';
/// The hand-over protocol's version, sent with `R`: an upgrade to a binary
/// that speaks another one is refused while the old server still serves.
const PROTOCOL: u8 = 2;
const GO: u8 = b'G';
/// FUSE_NOTIFY_RESEND in the kernel's `enum fuse_notify_code` (7.40).
const FUSE_NOTIFY_RESEND: i32 = 7;
/// A server that fails this many times in a row before serving (a store
/// that no longer opens) is not started again: the mount is taken down.
const MAX_FAILED_STARTS: u32 = 10;

/// Asks the kernel to queue again every request that was read from the
/// connection and not answered: those of a server that died. Without it
/// they would wait forever.
fn resend(fuse: BorrowedFd) -> io::Result<()> {
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&16u32.to_ne_bytes());
    header[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    // SAFETY: `fuse` is an open descriptor and `header` a readable buffer.
    let n = unsafe { libc::write(fuse.as_raw_fd(), header.as_ptr().cast(), header.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The filesystem of the supervisor's own session: it only answers INIT,
/// then never reads the connection.
struct InitOnly {
    max_readahead: u32,
    /// Whether to ask for FUSE passthrough; set to whether it was granted.
    passthrough: Arc<AtomicBool>,
}

impl fuser::Filesystem for InitOnly {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let wanted = self.passthrough.load(Ordering::Relaxed);
        let granted = configure_init(config, self.max_readahead, wanted) == Passthrough::Granted;
        self.passthrough.store(granted, Ordering::Relaxed);
        Ok(())
    }
}

/// A server process and the supervisor's end of its control socket.
struct Server {
    child: Child,
    control: OwnedFd,
}

impl Server {
    /// Starts `exe ARGS --serve-control FD` and waits until it has opened
    /// what it serves. None if it could not be started or exited first
    /// (said on standard error).
    fn start(exe: &Path, args: &[OsString]) -> Option<Server> {
        match Self::try_start(exe, args) {
            Ok(server) => server,
            Err(e) => {
                eprintln!("yolo-store: {e:#}");
                None
            }
        }
    }

    fn try_start(exe: &Path, args: &[OsString]) -> anyhow::Result<Option<Server>> {
        let (ours, theirs) = socket_pair()?;
        let fd = theirs.as_raw_fd();
        let mut command = Command::new(exe);
        command
            .args(args)
            .arg("--serve-control")
            .arg(fd.to_string())
            // Out of the terminal's process group: Ctrl-C reaches the
            // supervisor, which unmounts; the server ends with the mount.
            .process_group(0);
        // SAFETY: fcntl is async-signal-safe; `fd` is open in the child.
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        drop(theirs);
        match recv_with_fds(ours.as_fd(), 2, 0) {
            Ok((ready, _)) if ready == [READY, PROTOCOL] => {
                return Ok(Some(Server {
                    child,
                    control: ours,
                }))
            }
            Ok((ready, _)) if ready.first() == Some(&READY) => eprintln!(
                "yolo-store: {} speaks hand-over protocol {:?}, not {PROTOCOL}",
                exe.display(),
                ready.get(1)
            ),
            _ => {}
        }
        let _ = child.kill();
        let _ = child.wait();
        Ok(None)
    }

    /// Hands the connection over; a server that died since it was ready
    /// is reaped and None returned.
    fn go(mut self, fuse: BorrowedFd, log: &File, go: &Go) -> Option<Server> {
        let sent = send_with_fds(
            self.control.as_fd(),
            &go.encode(),
            &[fuse.as_raw_fd(), log.as_raw_fd()],
        );
        if let Err(e) = sent {
            eprintln!(
                "yolo-store: handing the mount to server {}: {e}",
                self.child.id()
            );
            let _ = self.child.kill();
            let _ = self.child.wait();
            return None;
        }
        Some(self)
    }
}

/// What the supervisor tells a server at `G`.
#[derive(Debug, PartialEq, Eq)]
struct Go {
    proto: (u32, u32),
    generation: u32,
    restarts: u32,
    upgrades: u32,
    supervisor_pid: u32,
    /// 1 if the kernel granted FUSE passthrough at INIT.
    passthrough: u32,
}

impl Go {
    fn encode(&self) -> [u8; GO_LEN] {
        let mut out = [0u8; GO_LEN];
        out[0] = GO;
        let fields = [
            self.proto.0,
            self.proto.1,
            self.generation,
            self.restarts,
            self.upgrades,
            self.supervisor_pid,
            self.passthrough,
        ];
        for (i, v) in fields.into_iter().enumerate() {
            out[1 + 4 * i..5 + 4 * i].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Go> {
        if bytes.len() != GO_LEN || bytes[0] != GO {
            return None;
        }
        let field = |i: usize| {
            let mut v = [0u8; 4];
            v.copy_from_slice(&bytes[1 + 4 * i..5 + 4 * i]);
            u32::from_le_bytes(v)
        };
        Some(Go {
            proto: (field(0), field(1)),
            generation: field(2),
            restarts: field(3),
            upgrades: field(4),
            supervisor_pid: field(5),
            passthrough: field(6),
        })
    }
}

/// Mounts at `mountpoint` and keeps the mount served by server processes
/// (this binary again, with the arguments this one got) until a signal or
/// an external unmount. The first server is ready before anything is
/// mounted, so a store or images directory it refuses mounts nothing.
pub fn supervise(mountpoint: &Path, opts: &MountOptions) -> anyhow::Result<()> {
    // The path, not /proc/self/exe: an upgrade runs the binary now there.
    let exe: PathBuf = std::env::current_exe().context("finding this program's path")?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP, SIGCHLD]).context("installing signal handlers")?;
    let log = inode_log()?;
    let Some(server) = Server::start(&exe, &args) else {
        anyhow::bail!("the server process failed before serving (its error is above)");
    };
    let passthrough = Arc::new(AtomicBool::new(opts.passthrough));
    let fs = InitOnly {
        max_readahead: opts.read_ahead_kb * 1024,
        passthrough: passthrough.clone(),
    };
    let mut session = fuser::Session::new(fs, mountpoint, &fuse_config(opts))
        .with_context(|| format!("mounting on {}", mountpoint.display()))?;
    let proto = session
        .proto_version()
        .context("the kernel's INIT set no protocol version")?;
    let mut go = Go {
        proto,
        generation: 0,
        restarts: 0,
        upgrades: 0,
        supervisor_pid: std::process::id(),
        passthrough: u32::from(passthrough.load(Ordering::Relaxed)),
    };
    let fuse = session.as_fd().try_clone_to_owned()?;
    let Some(mut server) = server.go(fuse.as_fd(), &log, &go) else {
        anyhow::bail!("the server process died before it was handed the mount");
    };
    // Only now: its stat of the mountpoint is a FUSE request, which needs
    // a server.
    if let Err(e) = set_bdi_read_ahead(mountpoint, opts.read_ahead_kb) {
        eprintln!("yolo-store: note: could not raise the mount's read_ahead_kb: {e}");
    }
    eprintln!(
        "yolo-store: mounted on {} (Ctrl-C or umount to stop); server pid {}",
        mountpoint.display(),
        server.child.id()
    );
    let restart = |go: &mut Go, reason: &str| -> Option<Server> {
        let since = Instant::now();
        for attempt in 0..MAX_FAILED_STARTS {
            go.generation += 1;
            if let Some(next) = Server::start(&exe, &args) {
                if let Err(e) = resend(fuse.as_fd()) {
                    eprintln!("yolo-store: FUSE_NOTIFY_RESEND failed: {e}");
                }
                let Some(next) = next.go(fuse.as_fd(), &log, go) else {
                    continue;
                };
                eprintln!(
                    "yolo-store: server pid {} took over ({reason}) {} ms after the last one died",
                    next.child.id(),
                    since.elapsed().as_millis()
                );
                return Some(next);
            }
            // Backs off so that a store that does not open is not hammered.
            std::thread::sleep(Duration::from_millis(100 << attempt.min(4)));
        }
        None
    };
    for signal in signals.forever() {
        match signal {
            SIGCHLD => {
                let Some(status) = server.child.try_wait()? else {
                    continue; // an old server reaped elsewhere
                };
                if status.success() {
                    // The server saw the mount go away (umount).
                    return Ok(());
                }
                eprintln!("yolo-store: server process {}", describe(status));
                go.restarts += 1;
                match restart(&mut go, "restart") {
                    Some(next) => server = next,
                    None => return Err(give_up(&mut session)),
                }
            }
            SIGHUP => {
                // The new server opens everything while the old one serves;
                // only then is the old one stopped. SIGKILL, not a drain:
                // whatever it had read goes back to the kernel's queue, the
                // path every crash takes too.
                let Some(next) = Server::start(&exe, &args) else {
                    eprintln!("yolo-store: upgrade: the new server failed to start; the old one keeps serving");
                    continue;
                };
                let since = Instant::now();
                let _ = server.child.kill();
                let _ = server.child.wait();
                go.upgrades += 1;
                go.generation += 1;
                if let Err(e) = resend(fuse.as_fd()) {
                    eprintln!("yolo-store: FUSE_NOTIFY_RESEND failed: {e}");
                }
                let pause = since.elapsed();
                match next.go(fuse.as_fd(), &log, &go) {
                    Some(next) => {
                        eprintln!(
                            "yolo-store: server pid {} took over (upgrade), {:.1} ms with no server",
                            next.child.id(),
                            pause.as_micros() as f64 / 1000.0
                        );
                        server = next;
                    }
                    // The new server died after it was ready: as a crash.
                    None => match restart(&mut go, "restart after an upgrade") {
                        Some(next) => server = next,
                        None => return Err(give_up(&mut session)),
                    },
                }
            }
            _ => {
                // SIGINT, SIGTERM: unmount; the server sees the mount go
                // away and exits.
                session.unmount().context("unmounting")?;
                let _ = server.child.wait();
                return Ok(());
            }
        }
    }
    Ok(())
}

/// No server can be started: unmount rather than leave VMs waiting on a
/// mount nobody will serve (with files open, the unmount fails, and the
/// connection ends with this process: reads fail with ENOTCONN).
fn give_up(session: &mut fuser::Session<InitOnly>) -> anyhow::Error {
    let _ = session.unmount();
    anyhow::anyhow!("{MAX_FAILED_STARTS} server processes in a row failed to start; unmounted")
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(signal) => format!("was killed by signal {signal}"),
        None => format!("exited with {status}"),
    }
}

/// Runs a server under a supervisor: `backend` is open and ready; tells
/// the supervisor so, waits for the connection, and serves it until the
/// mount goes away.
pub fn serve_handed_over<B: Backend>(
    backend: Arc<B>,
    root: PathBuf,
    control: RawFd,
    opts: &MountOptions,
) -> anyhow::Result<()> {
    // SAFETY: the supervisor passed this descriptor for us alone.
    let control = unsafe { OwnedFd::from_raw_fd(control) };
    send_with_fds(control.as_fd(), &[READY, PROTOCOL], &[]).context("telling the supervisor")?;
    let (bytes, mut fds) =
        recv_with_fds(control.as_fd(), GO_LEN, 2).context("waiting for the supervisor")?;
    let go = Go::decode(&bytes).context("the supervisor closed the control socket")?;
    if fds.len() != 2 {
        anyhow::bail!("the supervisor sent {} descriptors, not 2", fds.len());
    }
    let log = File::from(fds.pop().context("inode log")?);
    let fuse = fds.pop().context("FUSE connection")?;
    // Read only now: the server before us wrote to it until it died.
    let inodes = Inodes::from_log(log).context("reading the inode log")?;
    let process = ServerProcess {
        server_pid: std::process::id(),
        supervisor_pid: go.supervisor_pid,
        server_restarts: go.restarts,
        server_upgrades: go.upgrades,
    };
    let mut fs = ImagesFs::resumed(
        backend,
        root,
        opts.read_ahead_kb * 1024,
        inodes,
        go.generation,
        Some(process),
    );
    // Only the first server passes files through: one that takes over does
    // not know which inodes an earlier one passed through or cached, and
    // the kernel fails an open that conflicts with those (docs/design.md,
    // FUSE passthrough and restarts).
    if go.passthrough == 1 && go.generation == 0 {
        fs.passthrough = Passthrough::Granted;
    }
    let mut config = fuse_config(opts);
    // One shared descriptor, not one cloned per thread: the kernel fails
    // the requests a cloned descriptor had read when it closes (when this
    // process dies), but keeps those of the shared one, whose file the
    // supervisor holds, for FUSE_NOTIFY_RESEND to queue again.
    config.clone_fd = false;
    let acl = config.acl;
    let session = fuser::Session::from_fd_initialized(fs, fuse, acl, config, go.proto);
    session.run().context("FUSE session")
}

/// The inode log every server of this mount appends to: in memory, held by
/// the supervisor, gone with the mount.
fn inode_log() -> anyhow::Result<File> {
    // SAFETY: a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"yolo-store-inodes".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("creating the inode log (memfd)");
    }
    // SAFETY: `fd` was just created and is ours.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid out-array of two.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just created and are ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends one message with `fds` attached (SCM_RIGHTS).
fn send_with_fds(sock: BorrowedFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds) as u32;
    // u64s, so the control buffer is aligned for cmsghdr.
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the buffer holds one header and `fds.len()` descriptors.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                fd_bytes as usize,
            );
        }
    }
    loop {
        // SAFETY: `msg` points at live buffers for the call's duration.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives one message of at most `len` bytes and up to `max_fds`
/// descriptors (close-on-exec). An empty message is the peer closing.
fn recv_with_fds(
    sock: BorrowedFd,
    len: usize,
    max_fds: usize,
) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut data = vec![0u8; len];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let fd_bytes = (max_fds * std::mem::size_of::<RawFd>()) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; zero is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: `msg` points at live buffers for the call's duration.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    data.truncate(n);
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` with well-formed headers, walked
    // with the CMSG macros; each SCM_RIGHTS descriptor is now ours.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..payload / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("descriptors were cut off"));
    }
    Ok((data, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_round_trips() {
        let go = Go {
            proto: (7, 45),
            generation: 3,
            restarts: 2,
            upgrades: 1,
            supervisor_pid: 4242,
            passthrough: 1,
        };
        assert_eq!(Go::decode(&go.encode()), Some(go));
        assert_eq!(Go::decode(&[]), None);
        assert_eq!(Go::decode(&[READY]), None);
    }

    #[test]
    fn descriptors_cross_the_socket() {
        use std::io::{Read, Seek, Write};
        let (a, b) = socket_pair().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"inode log").unwrap();
        send_with_fds(a.as_fd(), b"x", &[file.as_raw_fd()]).unwrap();
        let (data, mut fds) = recv_with_fds(b.as_fd(), 8, 2).unwrap();
        assert_eq!(data, b"x");
        assert_eq!(fds.len(), 1);
        let mut got = File::from(fds.pop().unwrap());
        got.rewind().unwrap();
        let mut text = String::new();
        got.read_to_string(&mut text).unwrap();
        assert_eq!(text, "inode log");
        drop(a);
        let (data, fds) = recv_with_fds(b.as_fd(), 8, 2).unwrap();
        assert!(data.is_empty() && fds.is_empty());
    }

    #[test]
    fn status_gains_the_process_fields() {
        let p = ServerProcess {
            server_pid: 10,
            supervisor_pid: 9,
            server_restarts: 3,
            server_upgrades: 1,
        };
        let body = p.add_to_status(br#"{"reads": 5}"#.to_vec());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["reads"], 5);
        assert_eq!(v["server_pid"], 10);
        assert_eq!(v["server_restarts"], 3);
        assert_eq!(v["server_upgrades"], 1);
        assert_eq!(v["supervisor_pid"], 9);
    }
}
