//! smartsignd as a process: start-up checks, signals, hostile clients on
//! its socket. Needs root only where it adds a user (see tests/common).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// Both a start and `--check-config` on `config` exit 2 saying `words`.
fn refuses_to_start(config: &std::path::Path, words: &str) {
    for args in [&["--config"][..], &["--check-config", "--config"]] {
        let out = Command::new(SMARTSIGND)
            .args(args)
            .arg(config)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(words), "{args:?}: {err}");
    }
}

#[test]
fn a_bad_config_stops_the_start_with_file_line_and_key() {
    let dir = TempDir::new("badconfig");
    let config = dir.join("smartsign.toml");
    std::fs::write(
        &config,
        "state_dir = \"/tmp/x\"\n[lockout]\nmax_failure = 3\n",
    )
    .unwrap();
    refuses_to_start(
        &config,
        "smartsign.toml:3: key `max_failure`: unknown field",
    );
    let out = Command::new(SMARTSIGND)
        .args(["--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn one_daemon_per_socket_and_signals_behave() {
    let dir = TempDir::new("signals");
    let mut daemon = Daemon::start(&dir, "");
    let second = Command::new(SMARTSIGND)
        .arg("--config")
        .arg(&daemon.config)
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already listening"));

    daemon.signal(Signal::SIGHUP);
    wait_until("the SIGHUP line", Duration::from_secs(5), || {
        daemon.log().contains("SIGHUP ignored")
    });
    assert_eq!(
        daemon.cli(&["status", "--json"]).status.code(),
        Some(0),
        "still serving"
    );

    daemon.signal(Signal::SIGTERM);
    wait_until("the socket to go", Duration::from_secs(5), || {
        !daemon.socket.exists()
    });
    assert!(
        daemon.log().contains("stopping on SIGTERM"),
        "{}",
        daemon.log()
    );

    // A socket left by a daemon that was killed is taken over at the next start.
    daemon.restart();
    daemon.signal(Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(100));
    assert!(daemon.socket.exists());
    daemon.restart();
    assert_eq!(daemon.cli(&["status", "--json"]).status.code(), Some(0));
}

#[test]
fn a_file_at_the_socket_path_is_not_deleted() {
    let dir = TempDir::new("notasocket");
    let socket = dir.join("smartsignd.sock");
    std::fs::write(&socket, "precious").unwrap();
    let config = dir.join("smartsign.toml");
    let state = dir.join("state");
    std::fs::write(
        &config,
        format!("socket = {socket:?}\nstate_dir = {state:?}\n"),
    )
    .unwrap();
    let out = Command::new(SMARTSIGND)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"));
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "precious");
}

/// Raw bytes on the socket: each bad frame gets an error frame or a closed
/// connection, never a crash; the daemon keeps serving afterwards.
#[test]
fn garbage_on_the_socket_is_answered_and_survived() {
    let dir = TempDir::new("garbage");
    let daemon = Daemon::start(&dir, "");
    let send = |bytes: &[u8]| -> Vec<u8> {
        let mut stream = UnixStream::connect(&daemon.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let _ = stream.write_all(bytes);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        answer
    };
    let frame = |body: &[u8]| {
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(body);
        bytes
    };
    for (bytes, expect) in [
        (frame(b"not json"), "malformed"),
        (frame(br#"{"v":7,"request":{"op":"status"}}"#), "version 7"),
        (
            frame(br#"{"v":1,"request":{"op":"status","user":"a\u0000b"}}"#),
            "invalid user name",
        ),
        (
            frame(br#"{"v":1,"request":{"op":"begin","login":{"user":"../../x","service":"s"}}}"#),
            "invalid user name",
        ),
        (u32::MAX.to_be_bytes().to_vec(), "over the limit"),
        (vec![0, 0, 0, 50, b'{'], "in the middle of a frame"),
    ] {
        let answer = String::from_utf8_lossy(&send(&bytes)).into_owned();
        assert!(
            answer.contains("\"error\"") && answer.contains(expect),
            "{expect}: {answer}"
        );
    }
    // A client that closes without a word gets none.
    assert!(send(&[]).is_empty());
    assert_eq!(
        daemon.cli(&["status", "--json"]).status.code(),
        Some(0),
        "{}",
        daemon.log()
    );
}

/// A local user who opens connections and says nothing cannot starve the
/// logins that root's PAM applications ask for. Needs root for the user.
#[test]
fn a_user_hoarding_connections_does_not_block_root() {
    require_root();
    let dir = TempDir::new("hoard");
    let user = TestUser::new("sse2e-hoard");
    let daemon = Daemon::start(&dir, "");
    let uid = user.uid();
    let script = format!(
        "import socket, time\n\
         held = []\n\
         for _ in range(200):\n\
         \x20   s = socket.socket(socket.AF_UNIX); s.connect({:?}); held.append(s)\n\
         print('holding', flush=True)\n\
         time.sleep(8)\n",
        daemon.socket.display().to_string()
    );
    let mut hoarder = as_uid(uid, "/usr/bin/python3")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(hoarder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "holding");

    let started = std::time::Instant::now();
    let out = daemon.cli(&["--user", &user.name, "status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "root waited {:?}",
        started.elapsed()
    );
    assert!(
        daemon
            .log()
            .contains("too many connections, turning some away")
    );
    let _ = hoarder.kill();
    let _ = hoarder.wait();
}

/// A request whose client gave up while the daemon was stopped is dropped
/// when the daemon wakes: no "allow" for a login that already failed, and
/// the code is not spent. Needs root for the user.
#[test]
fn requests_abandoned_while_stopped_are_not_acted_on() {
    use smartsign_proto::{LoginContext, PROTOCOL_VERSION, Request, RequestFrame, write_frame};

    require_root();
    let dir = TempDir::new("abandoned");
    let user = TestUser::new("sse2e-abandon");
    let daemon = Daemon::start(&dir, "");
    let secret = daemon.enroll(&user.name, "Pixel");
    let code = oathtool(&secret, "now");
    let login = LoginContext {
        user: user.name.clone(),
        service: "sshd".into(),
        rhost: None,
        tty: None,
    };

    daemon.signal(Signal::SIGSTOP);
    let mut stream = UnixStream::connect(&daemon.socket).unwrap();
    let frame = RequestFrame {
        v: PROTOCOL_VERSION,
        request: Request::VerifyCode {
            login: login.clone(),
            code: code.as_str().into(),
        },
    };
    write_frame(
        &mut stream,
        &frame,
        std::time::Instant::now() + Duration::from_secs(2),
    )
    .unwrap();
    drop(stream);
    daemon.signal(Signal::SIGCONT);
    wait_until("the drop line", Duration::from_secs(5), || {
        daemon.log().contains("left before")
    });
    assert!(
        !daemon.audit().iter().any(|l| l.contains("result=allow")),
        "{}",
        daemon.log()
    );

    let client = smartsign_proto::Client::new(&daemon.socket, Duration::from_secs(5));
    let answer = client
        .call(Request::VerifyCode {
            login,
            code: code.as_str().into(),
        })
        .unwrap();
    assert_eq!(
        answer,
        smartsign_proto::Response::Allow {
            phone: "Pixel".into()
        }
    );
}

#[test]
fn an_smtp_password_others_can_read_stops_the_start() {
    let dir = TempDir::new("pwfile");
    let password = dir.join("smtp-password");
    std::fs::write(&password, "hunter2\n").unwrap();
    std::fs::set_permissions(
        &password,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let config = dir.join("smartsign.toml");
    std::fs::write(
        &config,
        format!(
            "socket = {:?}\nstate_dir = {:?}\n[email]\nfrom = \"s <s@example.org>\"\n\
             transport = \"smtp\"\nhost = \"127.0.0.1\"\nuser = \"s\"\npassword_file = {password:?}\n",
            dir.join("s.sock"),
            dir.join("state")
        ),
    )
    .unwrap();
    let out = Command::new(SMARTSIGND)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("everybody may read it (mode 644): chmod o= it"),
        "{err}"
    );
    assert!(!err.contains("hunter2"));
    assert!(!dir.join("s.sock").exists(), "nothing served");
    // --check-config says so too.
    let check = Command::new(SMARTSIGND)
        .args(["--check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&check.stderr).contains("everybody may read it"));
}

/// Under systemd (Type=notify) the daemon says READY=1 once it listens.
#[test]
fn readiness_is_told_to_systemd() {
    let dir = TempDir::new("notify");
    let notify = dir.join("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let config = dir.join("smartsign.toml");
    let socket = dir.join("s.sock");
    std::fs::write(
        &config,
        format!("socket = {socket:?}\nstate_dir = {:?}\n", dir.join("state")),
    )
    .unwrap();
    let mut child = Command::new(SMARTSIGND)
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let got = listener.recv(&mut buf);
    let listening = UnixStream::connect(&socket).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    let n = got.expect("a notification");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    assert!(listening, "ready means listening");
}

#[test]
fn a_group_that_does_not_exist_stops_the_start() {
    let dir = TempDir::new("nogroup");
    let config = dir.join("smartsign.toml");
    std::fs::write(
        &config,
        format!(
            "socket = {:?}\nstate_dir = {:?}\n[policy]\nexempt_groups = [\"no-such-group-x\"]\n",
            dir.join("s.sock"),
            dir.join("state")
        ),
    )
    .unwrap();
    refuses_to_start(
        &config,
        ":4: key `exempt_groups`: group \"no-such-group-x\" does not exist",
    );
}
