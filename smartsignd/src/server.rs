//! The Unix socket: who is asking (SO_PEERCRED), one frame in, one out.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use smartsign_proto::{
    ErrorKind, FrameError, MAX_FRAME, PROTOCOL_VERSION, Request, RequestFrame, Response,
    ResponseFrame, read_frame, write_frame,
};

use crate::audit::{clip, sanitize};
use crate::service::{Link, Next, Service, Waiting};

/// Connections served at once from uids other than root; more are answered
/// "busy" and closed.
pub const MAX_USER_CONNECTIONS: usize = 48;
/// Connections served at once from one uid other than root, so that one
/// local user holding connections open cannot crowd out everybody's logins.
pub const MAX_PER_UID: usize = 4;
/// Connections served at once in all; root (sshd, sudo, login) always has
/// room beyond what other uids can take. A login waiting for its push
/// holds one, so this is also the bound on pushes waiting at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Each connection's thread: enough for the deepest request (SQLite, TLS
/// to the relay or the mail server), small enough for a thousand.
pub const THREAD_STACK: usize = 512 * 1024;
/// The whole exchange with one client, from accept to the last byte sent.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub enum BindError {
    AlreadyRunning(PathBuf),
    NotASocket(PathBuf),
    Io { path: PathBuf, source: io::Error },
}

impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BindError::AlreadyRunning(path) => {
                write!(
                    f,
                    "another smartsignd is already listening on {}",
                    path.display()
                )
            }
            BindError::NotASocket(path) => {
                write!(
                    f,
                    "{} exists and is not a socket; remove it or choose another path",
                    path.display()
                )
            }
            BindError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for BindError {}

/// Binds the socket, replacing a stale one left by a daemon that died.
/// Every local user may connect; what they may ask is decided per request.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let io = |source| BindError::Io {
        path: path.to_owned(),
        source,
    };
    // Directories made here must let every user reach the socket, whatever
    // the umask: each one is opened up to 0755 as it is made.
    let missing: Vec<&Path> = path
        .ancestors()
        .skip(1)
        .take_while(|dir| !dir.exists())
        .collect();
    for dir in missing.into_iter().rev() {
        std::fs::create_dir(dir).map_err(io)?;
        std::fs::set_permissions(dir, PermissionsExt::from_mode(0o755)).map_err(io)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(BindError::AlreadyRunning(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        Ok(_) => return Err(BindError::NotASocket(path.to_owned())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(io(err)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, PermissionsExt::from_mode(0o666)).map_err(io)?;
    Ok(listener)
}

/// Serves until the listener fails. Each connection gets its own thread,
/// within the limits above.
pub fn serve(listener: UnixListener, service: Arc<Service>) -> io::Error {
    let slots = Arc::new(Slots::default());
    let hall = match service
        .push
        .is_some()
        .then(|| Hall::start(Arc::clone(&service)))
    {
        Some(Ok(hall)) => Some(hall),
        Some(Err(err)) => return err,
        None => None,
    };
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(err) if is_transient(&err) => {
                crate::say!("accept: {err}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(err) => return err,
        };
        // Without the peer's uid nothing may be asked.
        let uid = match getsockopt(&stream, PeerCredentials) {
            Ok(cred) => cred.uid(),
            Err(err) => {
                crate::say!("cannot read the peer's credentials, dropping: {err}");
                continue;
            }
        };
        let Some(slot) = Slots::take(&slots, bucket(uid), Instant::now()) else {
            busy(stream, uid);
            continue;
        };
        let service = Arc::clone(&service);
        let hall = hall.clone();
        let spawned = std::thread::Builder::new()
            .name("client".into())
            .stack_size(THREAD_STACK)
            .spawn(move || serve_one(stream, uid, &service, slot, hall.as_deref()));
        if let Err(err) = spawned {
            crate::say!("cannot start a thread: {err}");
        }
    }
}

/// Uids with no account (the subordinate uids of user namespaces, which
/// one user may hold thousands of) share one bucket of slots.
const NO_ACCOUNT: u32 = u32::MAX;

/// Whose share a connection counts against: root, a known account, or the
/// common bucket of uids no account has.
fn bucket(uid: u32) -> u32 {
    if uid == 0 {
        return 0;
    }
    match nix::unistd::User::from_uid(uid.into()) {
        Ok(Some(_)) => uid,
        _ => NO_ACCOUNT,
    }
}

/// Connections one bucket other than root may open per [`RATE_WINDOW`].
pub const MAX_PER_WINDOW: u32 = 100;
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Counts the connections being served, in all and per bucket, and the
/// connections each bucket opened in the current window.
#[derive(Default)]
struct Slots {
    by_uid: Mutex<HashMap<u32, usize>>,
    opened: Mutex<HashMap<u32, (Instant, u32)>>,
}

/// One connection's place; given back when dropped.
struct Slot {
    slots: Arc<Slots>,
    uid: u32,
}

impl Slots {
    fn take(slots: &Arc<Slots>, uid: u32, now: Instant) -> Option<Slot> {
        if uid != 0 && !slots.within_rate(uid, now) {
            return None;
        }
        let mut by_uid = slots.by_uid.lock().unwrap_or_else(PoisonError::into_inner);
        let total: usize = by_uid.values().sum();
        let others: usize = by_uid
            .iter()
            .filter(|(u, _)| **u != 0)
            .map(|(_, n)| n)
            .sum();
        let mine = by_uid.get(&uid).copied().unwrap_or(0);
        let room = if uid == 0 {
            total < MAX_CONNECTIONS
        } else {
            total < MAX_CONNECTIONS && others < MAX_USER_CONNECTIONS && mine < MAX_PER_UID
        };
        if !room {
            return None;
        }
        *by_uid.entry(uid).or_default() += 1;
        Some(Slot {
            slots: Arc::clone(slots),
            uid,
        })
    }
}

impl Slots {
    /// Counts a connection against `uid`'s window; `false` once it is spent.
    fn within_rate(&self, uid: u32, now: Instant) -> bool {
        let mut opened = self.opened.lock().unwrap_or_else(PoisonError::into_inner);
        if opened.len() > 4096 {
            opened.retain(|_, (start, _)| now.duration_since(*start) < RATE_WINDOW);
        }
        let (start, count) = opened.entry(uid).or_insert((now, 0));
        if now.duration_since(*start) >= RATE_WINDOW {
            (*start, *count) = (now, 0);
        }
        *count += 1;
        *count <= MAX_PER_WINDOW
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut by_uid = self
            .slots
            .by_uid
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = by_uid.get_mut(&self.uid) {
            *count -= 1;
            if *count == 0 {
                by_uid.remove(&self.uid);
            }
        }
    }
}

/// Errors of accept(2) that concern one connection or a passing shortage.
fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EINTR
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
        )
    )
}

fn busy(mut stream: UnixStream, uid: u32) {
    // One line a second at most, however hard a client pushes.
    static LAST_LINE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if LAST_LINE.swap(second, std::sync::atomic::Ordering::Relaxed) != second {
        crate::say!("too many connections, turning some away (now from uid {uid})");
    }
    // Take in what the client already sent, without waiting for more:
    // closing on unread bytes would reset the connection before the answer.
    let mut scratch = vec![0u8; MAX_FRAME + 4];
    if stream.set_nonblocking(true).is_ok() {
        let _ = stream.read(&mut scratch);
        let _ = stream.set_nonblocking(false);
    }
    let deadline = Instant::now() + Duration::from_millis(200);
    let answer = Response::error(ErrorKind::Internal, "smartsignd is busy; try again");
    let _ = write_frame(
        &mut stream,
        &ResponseFrame {
            v: PROTOCOL_VERSION,
            response: answer,
        },
        deadline,
    );
}

/// Whether the client has closed its socket (POLLHUP), as opposed to only
/// its sending side (POLLRDHUP), after which it may still read an answer.
fn client_gone(stream: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;

    let mut fds = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: 0,
        revents: 0,
    };

    // SAFETY: one valid pollfd for a descriptor `stream` owns; no waiting.
    let ready = unsafe { libc::poll(&raw mut fds, 1, 0) };

    ready == 1 && fds.revents & libc::POLLHUP != 0
}

/// Serves one connection; `slot` is its place, given back when the
/// connection ends (a waiting push takes it along to the hall).
fn serve_one(mut stream: UnixStream, uid: u32, service: &Service, slot: Slot, hall: Option<&Hall>) {
    let deadline = Instant::now() + CLIENT_DEADLINE;

    let response = match read_frame::<RequestFrame>(&mut stream, deadline) {
        Ok(_) if client_gone(&stream) => {
            // It gave up waiting (its timeout passed while this daemon was
            // stopped or slow): acting now would spend its code, or count
            // a failure, for a login that has already ended.
            crate::say!("uid {uid} left before its request was handled; dropped");
            return;
        }
        Ok(frame) if matches!(frame.request, Request::PushStart { .. }) => {
            let mut link = Stream::new(stream);
            let summary = frame.request.to_string();
            run_guarded(uid, &summary, || match hall {
                Some(hall) => {
                    if let Some(waiting) = service.push_begin(uid, frame.request, &mut link) {
                        hall.admit(Held {
                            waiting,
                            link,
                            _slot: slot,
                        });
                    }
                }
                // No hall without [push]: the answer is a refusal.
                None => drop(service.push_begin(uid, frame.request, &mut link)),
            });
            return;
        }
        Ok(frame) => {
            let request = frame.request;
            let summary = request.to_string();
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                service.handle_while(uid, request, &|| !client_gone(&stream))
            })) {
                Ok(response) => response,
                Err(_) => {
                    let summary = sanitize(&summary);
                    crate::say!("internal error handling {summary} from uid {uid}");
                    Response::error(ErrorKind::Internal, "internal error; see the daemon's log")
                }
            }
        }
        Err(FrameError::Closed) => return,
        Err(FrameError::Timeout) => {
            crate::say!("uid {uid} sent no complete request in time");
            return;
        }
        Err(err) => {
            crate::say!(
                "bad request from uid {uid}: {}",
                clip(&sanitize(&err.to_string()))
            );
            let kind = match err {
                FrameError::UnsupportedVersion(_) => ErrorKind::UnsupportedVersion,
                _ => ErrorKind::BadRequest,
            };
            Response::error(kind, err.to_string())
        }
    };
    let frame = ResponseFrame {
        v: PROTOCOL_VERSION,
        response,
    };
    if let Err(err) = write_frame(&mut stream, &frame, deadline) {
        crate::say!("answering uid {uid}: {err}");
    }
}

/// A panic in one request ends that request's thread alone, with a line
/// in the log.
fn run_guarded(uid: u32, summary: &str, work: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).is_err() {
        let summary = sanitize(summary);
        crate::say!("internal error handling {summary} from uid {uid}");
    }
}

/// A push's connection, as the push sees it: requests are read as they
/// come, without waiting, so that one slow client holds up nobody.
struct Stream {
    socket: UnixStream,
    /// Bytes of a frame not complete yet.
    partial: Vec<u8>,
}

impl Stream {
    fn new(socket: UnixStream) -> Stream {
        Stream {
            socket,
            partial: Vec::new(),
        }
    }

    fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.socket.as_raw_fd()
    }
}

impl Link for Stream {
    fn next(&mut self) -> Next {
        if self.socket.set_nonblocking(true).is_err() {
            return Next::Gone;
        }
        let mut chunk = [0u8; 4096];
        loop {
            match self.socket.read(&mut chunk) {
                Ok(0) => return Next::Gone,
                Ok(n) => {
                    self.partial.extend_from_slice(&chunk[..n]);
                    if self.partial.len() > MAX_FRAME + 4 {
                        return Next::Gone;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Next::Gone,
            }
        }
        let Some(head) = self.partial.first_chunk::<4>() else {
            return Next::Quiet;
        };
        let len = u32::from_be_bytes(*head) as usize;
        if len > MAX_FRAME {
            return Next::Gone;
        }
        if self.partial.len() < 4 + len {
            return Next::Quiet;
        }
        let frame: Result<RequestFrame, _> = serde_json::from_slice(&self.partial[4..4 + len]);
        self.partial.drain(..4 + len);
        match frame {
            Ok(frame) if frame.v == PROTOCOL_VERSION => Next::Request(frame.request),
            _ => Next::Gone,
        }
    }

    fn send(&mut self, response: Response) -> bool {
        if self.socket.set_nonblocking(false).is_err() {
            return false;
        }
        let frame = ResponseFrame {
            v: PROTOCOL_VERSION,
            response,
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        write_frame(&mut self.socket, &frame, deadline).is_ok()
    }
}

/// A push waiting for its answer, with its connection and its place.
struct Held {
    waiting: Waiting,
    link: Stream,
    _slot: Slot,
}

/// One thread watches every waiting push: a thousand logins waiting for
/// their phones cost a thousand sockets, not a thousand threads.
struct Hall {
    arrivals: std::sync::mpsc::Sender<Held>,
    wake: UnixStream,
}

/// How often the hall looks at the clock when nothing happens (expiry,
/// the relay's state).
const HALL_TICK: Duration = Duration::from_millis(100);

impl Hall {
    fn start(service: Arc<Service>) -> io::Result<Arc<Hall>> {
        let (wake, woken) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        woken.set_nonblocking(true)?;
        if let Some(setup) = &service.push {
            setup.pushes.set_waker(wake.try_clone()?);
        }
        let (arrivals, arrived) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("push-hall".into())
            .spawn(move || run_hall(&service, &arrived, woken))?;
        Ok(Arc::new(Hall { arrivals, wake }))
    }

    fn admit(&self, held: Held) {
        use std::io::Write;
        if self.arrivals.send(held).is_ok() {
            let _ = (&self.wake).write(&[1]);
        }
    }
}

fn run_hall(service: &Service, arrived: &std::sync::mpsc::Receiver<Held>, mut woken: UnixStream) {
    use std::os::fd::AsRawFd;

    let mut held: Vec<Held> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    loop {
        held.extend(arrived.try_iter());
        fds.clear();
        fds.push(libc::pollfd {
            fd: woken.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        fds.extend(held.iter().map(|h| libc::pollfd {
            fd: h.link.fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        let timeout = HALL_TICK.as_millis() as libc::c_int;

        // SAFETY: `fds` is a live, correctly sized array of pollfd for
        // descriptors this thread's `held` and `woken` own.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };

        let mut scratch = [0u8; 256];
        while matches!(woken.read(&mut scratch), Ok(n) if n > 0) {}
        let mut ready = fds.iter().skip(1).map(|fd| fd.revents != 0);
        held.retain_mut(|h| {
            let readable = ready.next().unwrap_or(false);
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                h.waiting.step(service, &mut h.link, readable)
            }))
            .unwrap_or_else(|_| {
                crate::say!(
                    "internal error in push {}; its connection is closed",
                    h.waiting.id()
                );
                false
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_uid_cannot_take_every_slot_and_root_always_has_room() {
        let slots = Arc::new(Slots::default());
        let now = Instant::now();
        let take = |uid| Slots::take(&slots, uid, now);
        let mine: Vec<Slot> = (0..MAX_PER_UID).map(|_| take(1000).unwrap()).collect();
        assert!(take(1000).is_none());
        assert!(take(1001).is_some());

        let crowd: Vec<Slot> = (0..MAX_USER_CONNECTIONS)
            .filter_map(|i| take(2000 + i as u32))
            .collect();
        assert!(take(5000).is_none(), "other uids are capped in all");
        let root: Vec<Slot> = (0..10).map(|_| take(0).unwrap()).collect();

        drop(mine);
        assert!(take(1000).is_some(), "slots come back when dropped");
        drop(crowd);
        drop(root);
        assert!(slots.by_uid.lock().unwrap().is_empty());
    }

    #[test]
    fn each_uid_opens_a_bounded_number_per_window() {
        let slots = Arc::new(Slots::default());
        let now = Instant::now();
        for _ in 0..MAX_PER_WINDOW {
            drop(Slots::take(&slots, 1000, now).unwrap());
        }
        assert!(Slots::take(&slots, 1000, now).is_none());
        assert!(
            Slots::take(&slots, 0, now).is_some(),
            "root is not rate limited"
        );
        assert!(Slots::take(&slots, 1001, now).is_some());
        assert!(
            Slots::take(&slots, 1000, now + RATE_WINDOW).is_some(),
            "a new window"
        );
    }

    #[test]
    fn uids_without_an_account_share_one_bucket() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(4_000_000_001), NO_ACCOUNT);
        assert_eq!(bucket(4_000_000_002), NO_ACCOUNT);
    }
}
