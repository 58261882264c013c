//! The blocking client used by the PAM module and the smartsign command.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::frame::{FrameError, read_frame, write_frame};
use crate::{PROTOCOL_VERSION, Request, RequestFrame, Response, ResponseFrame};

#[derive(Debug)]
pub enum ClientError {
    /// Nothing listens on the socket: the daemon is not running.
    NotRunning {
        path: PathBuf,
        source: io::Error,
    },
    /// The socket exists but may not be opened by this user.
    Permission {
        path: PathBuf,
    },
    /// The process on the socket runs as an ordinary user, not as smartsignd.
    Untrusted {
        path: PathBuf,
        uid: u32,
    },
    /// The daemon did not answer in time.
    Timeout,
    Frame(FrameError),
    Io(io::Error),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::NotRunning { path, source } => {
                let why = if source.kind() == io::ErrorKind::NotFound {
                    "no socket there; check the socket path too"
                } else {
                    "nothing listens there"
                };
                write!(f, "smartsignd is not running ({}: {why})", path.display())
            }
            ClientError::Permission { path } => {
                write!(f, "permission denied on the socket {}", path.display())
            }
            ClientError::Untrusted { path, uid } => write!(
                f,
                "the socket {} belongs to a process of uid {uid}, not to smartsignd \
                 (root or a system user): not trusted",
                path.display()
            ),
            ClientError::Timeout => f.write_str("smartsignd did not answer in time"),
            ClientError::Frame(err) => write!(f, "bad answer from smartsignd: {err}"),
            ClientError::Io(err) => write!(f, "talking to smartsignd: {err}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// One request, one response, one deadline for both.
#[derive(Debug, Clone)]
pub struct Client {
    path: PathBuf,
    timeout: Duration,
    /// One more uid the daemon may run as, besides root and system users.
    also_trusted: Option<u32>,
}

/// The highest uid of a system user on Debian (SYS_UID_MAX): smartsignd runs
/// as root or as a system user, never as a uid a person logs in with.
pub const SYSTEM_UID_MAX: u32 = 999;

impl Client {
    pub fn new(path: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            path: path.into(),
            timeout,
            also_trusted: None,
        }
    }

    /// Also accepts a daemon running as `uid`, for tests run by a person.
    pub fn trusting(mut self, uid: u32) -> Self {
        self.also_trusted = Some(uid);
        self
    }

    pub fn call(&self, request: Request) -> Result<Response, ClientError> {
        self.open()?.call(request, self.timeout)
    }

    /// A connection for several requests in turn (a push and its answer).
    pub fn open(&self) -> Result<Session, ClientError> {
        let stream = connect(&self.path, self.timeout)?;

        // A socket path that a user could bind (a misconfigured socket=)
        // must not get a code or decide a login: check who answers first.
        let uid = peer_uid(&stream).map_err(ClientError::Io)?;
        if uid > SYSTEM_UID_MAX && Some(uid) != self.also_trusted {
            return Err(ClientError::Untrusted {
                path: self.path.clone(),
                uid,
            });
        }
        Ok(Session { stream })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// One connection to smartsignd, checked to be served by a trusted uid.
/// Dropping it closes the connection, which withdraws a push held on it.
#[derive(Debug)]
pub struct Session {
    stream: UnixStream,
}

impl Session {
    /// One request and its answer, both within `timeout`.
    pub fn call(&mut self, request: Request, timeout: Duration) -> Result<Response, ClientError> {
        let deadline = Instant::now() + timeout;
        let frame = RequestFrame {
            v: PROTOCOL_VERSION,
            request,
        };
        write_frame(&mut self.stream, &frame, deadline).map_err(frame_error)?;
        let answer: ResponseFrame = read_frame(&mut self.stream, deadline).map_err(frame_error)?;
        Ok(answer.response)
    }
}

fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    use std::os::fd::AsRawFd;

    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;

    // SAFETY: `cred` and `len` are valid for writes and sized for SO_PEERCRED.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };

    if rc == 0 {
        Ok(cred.uid)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn frame_error(err: FrameError) -> ClientError {
    match err {
        FrameError::Timeout => ClientError::Timeout,
        other => ClientError::Frame(other),
    }
}

/// Connects with a bound on the wait. A Unix stream connect blocks while the
/// listener's backlog is full (a stopped or swamped daemon); Linux bounds
/// that wait by the socket's send timeout, which std cannot set before
/// connecting, hence the raw socket.
fn connect(path: &Path, timeout: Duration) -> Result<UnixStream, ClientError> {
    // SAFETY: zeroed memory is a valid sockaddr_un (all fields are integers).
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(ClientError::Io(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unusable socket path {}", path.display()),
        )));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }

    // SAFETY: plain system call with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(ClientError::Io(io::Error::last_os_error()));
    }

    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    let stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    stream
        .set_write_timeout(Some(timeout))
        .map_err(ClientError::Io)?;
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;

    // SAFETY: `addr` is an initialised sockaddr_un and `len` is its size.
    let rc = unsafe { libc::connect(fd, (&raw const addr).cast(), len) };
    if rc == 0 {
        return Ok(stream);
    }
    let err = io::Error::last_os_error();
    Err(match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout,
        io::ErrorKind::PermissionDenied => ClientError::Permission {
            path: path.to_owned(),
        },
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
            path: path.to_owned(),
            source: err,
        },
        _ => ClientError::Io(err),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn own_uid() -> u32 {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() }
    }

    /// A daemon that answers every request with `Done`.
    fn answering_daemon(path: &Path) -> std::thread::JoinHandle<()> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let deadline = Instant::now() + Duration::from_secs(2);
                let _: Result<RequestFrame, _> = read_frame(&mut stream, deadline);
                let frame = ResponseFrame {
                    v: PROTOCOL_VERSION,
                    response: Response::Done,
                };
                let _ = write_frame(&mut stream, &frame, deadline);
            }
        })
    }

    #[test]
    fn a_daemon_of_an_ordinary_user_is_not_trusted() {
        let dir = temp_dir("untrusted");
        let path = socket_in(&dir);
        let daemon = answering_daemon(&path);
        let ours = own_uid();
        let client = Client::new(&path, Duration::from_secs(2));
        let result = client.call(Request::Status { user: None });
        if ours > SYSTEM_UID_MAX {
            assert!(matches!(result, Err(ClientError::Untrusted { uid, .. }) if uid == ours));
            // Unblock the accept.
            let _ = UnixStream::connect(&path);
        } else {
            assert_eq!(result.unwrap(), Response::Done);
        }
        daemon.join().unwrap();
    }

    fn socket_in(dir: &Path) -> PathBuf {
        dir.join("s.sock")
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("smartsign-proto-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn no_socket_means_not_running() {
        let dir = temp_dir("absent");
        let client = Client::new(socket_in(&dir), Duration::from_secs(1));
        let err = client.call(Request::Status { user: None }).unwrap_err();
        assert!(matches!(err, ClientError::NotRunning { .. }), "{err}");
    }

    #[test]
    fn a_daemon_that_never_answers_times_out() {
        let dir = temp_dir("silent");
        let path = socket_in(&dir);
        // Bound but never accepted: the connection waits in the backlog.
        let _listener = UnixListener::bind(&path).unwrap();
        let started = Instant::now();
        let err = Client::new(&path, Duration::from_millis(300))
            .trusting(own_uid())
            .call(Request::Status { user: None })
            .unwrap_err();
        assert!(matches!(err, ClientError::Timeout), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn a_full_backlog_times_out_instead_of_blocking() {
        let dir = temp_dir("backlog");
        let path = socket_in(&dir);
        let listener = UnixListener::bind(&path).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);

        // Linux lets listen() be called again to shrink the backlog.
        // SAFETY: `fd` is a listening socket owned by `listener`, alive here.
        let rc = unsafe { libc::listen(fd, 1) };

        assert_eq!(rc, 0);
        // Fill the backlog with connections nobody accepts.
        let mut held = Vec::new();
        for _ in 0..64 {
            match connect(&path, Duration::from_millis(50)) {
                Ok(stream) => held.push(stream),
                Err(ClientError::Timeout) => break,
                Err(other) => panic!("{other}"),
            }
        }
        let started = Instant::now();
        let err = connect(&path, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, ClientError::Timeout), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
