//! The Unix socket: who is asking (SO_PEERCRED), one frame in, one out.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use smartsign_proto::{
    ErrorKind, FrameError, PROTOCOL_VERSION, RequestFrame, Response, ResponseFrame, read_frame,
    write_frame,
};

use crate::service::Service;

/// Connections served at once; more are answered "busy" and closed.
pub const MAX_CONNECTIONS: usize = 64;
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
    if let Some(parent) = path.parent()
        && !parent.exists()
    {
        std::fs::create_dir_all(parent).map_err(io)?;
        std::fs::set_permissions(parent, PermissionsExt::from_mode(0o755)).map_err(io)?;
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
/// at most [`MAX_CONNECTIONS`] at once.
pub fn serve(listener: UnixListener, service: Arc<Service>) -> io::Error {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(err) if is_transient(&err) => {
                eprintln!("smartsignd: accept: {err}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(err) => return err,
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            busy(stream);
            continue;
        }
        let service = Arc::clone(&service);
        let active = Arc::clone(&active);
        let spawned = std::thread::Builder::new()
            .name("client".into())
            .spawn(move || {
                serve_one(stream, &service);
                active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(err) = spawned {
            eprintln!("smartsignd: cannot start a thread: {err}");
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

fn busy(mut stream: UnixStream) {
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

fn serve_one(mut stream: UnixStream, service: &Service) {
    let deadline = Instant::now() + CLIENT_DEADLINE;
    // Without the peer's uid nothing may be asked.
    let uid = match getsockopt(&stream, PeerCredentials) {
        Ok(cred) => cred.uid(),
        Err(err) => {
            eprintln!("smartsignd: cannot read the peer's credentials, dropping: {err}");
            return;
        }
    };

    let response = match read_frame::<RequestFrame>(&mut stream, deadline) {
        Ok(frame) => {
            let request = frame.request;
            let summary = request.to_string();
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                service.handle(uid, request)
            })) {
                Ok(response) => response,
                Err(_) => {
                    eprintln!("smartsignd: internal error handling {summary} from uid {uid}");
                    Response::error(ErrorKind::Internal, "internal error; see the daemon's log")
                }
            }
        }
        Err(FrameError::Closed) => return,
        Err(FrameError::Timeout) => {
            eprintln!("smartsignd: uid {uid} sent no complete request in time");
            return;
        }
        Err(err) => {
            eprintln!("smartsignd: bad request from uid {uid}: {err}");
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
        eprintln!("smartsignd: answering uid {uid}: {err}");
    }
}
