//! The smartsign command run by a real non-root uid (via setpriv) against a
//! real smartsignd: a user manages their own account and nobody else's.
//! Needs root to create the users (see tests/common).

mod common;

use std::process::Output;

use common::*;

fn as_user(user: &TestUser, daemon: &Daemon, args: &[&str]) -> Output {
    let uid = user.uid();
    as_uid(uid, SMARTSIGN)
        .args(["--socket"])
        .arg(&daemon.socket)
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_user_enrolls_their_own_phone_and_cannot_touch_anyone_else() {
    require_root();
    let dir = TempDir::new("cli");
    let alice = TestUser::new("sse2e-cli-a");
    let bob = TestUser::new("sse2e-cli-b");
    let daemon = Daemon::start(&dir, "");
    let bob_secret = daemon.enroll(&bob.name, "Pixel");

    // Alice adds and confirms a phone of her own.
    let out = as_user(&alice, &daemon, &["phone", "add", "Phone A", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = json["secret"].as_str().unwrap();
    let uri = json["otpauth_uri"].as_str().unwrap();
    assert!(
        uri.contains(&format!("SmartSign:{}%40", alice.name)),
        "{uri}"
    );
    let out = as_user(&alice, &daemon, &["phone", "confirm", "Phone A", "000000"]);
    assert_eq!(out.status.code(), Some(6), "wrong code: {}", text(&out));
    let out = as_user(
        &alice,
        &daemon,
        &["phone", "confirm", "Phone A", &oathtool(secret, "now")],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = as_user(&alice, &daemon, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["user"], alice.name.as_str());
    assert_eq!(status["phones"][0]["confirmed"], true);

    // A second phone needs a code from the first, from a script or at a prompt.
    let out = as_user(&alice, &daemon, &["phone", "add", "Phone B", "--json"]);
    assert_eq!(out.status.code(), Some(8), "{}", text(&out));
    assert!(text(&out).contains("--code"), "{}", text(&out));
    let next = oathtool(secret, "30 seconds");
    let out = as_user(
        &alice,
        &daemon,
        &["phone", "add", "Phone B", "--json", "--code", &next],
    );
    assert!(out.status.success(), "{}", text(&out));
    // A code can come on standard input ("-"), out of other users' sight in ps.
    let phone_b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let b_code = oathtool(phone_b["secret"].as_str().unwrap(), "now");
    let mut confirm = as_uid(alice.uid(), SMARTSIGN)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["phone", "confirm", "Phone B", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let code_line = format!("{b_code}\n");
    std::io::Write::write_all(&mut confirm.stdin.take().unwrap(), code_line.as_bytes()).unwrap();
    let out = confirm.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // Bob's account is out of her reach, whatever she asks; the daemon
    // refuses (exit 4) and logs it.
    for args in [
        &["--user", &bob.name, "status"][..],
        &["--user", &bob.name, "phone", "list"],
        &["--user", &bob.name, "phone", "add", "evil", "--json"],
        &["--user", &bob.name, "phone", "remove", "Pixel"],
        &["--user", "root", "status"],
    ] {
        let out = as_user(&alice, &daemon, args);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("may only act on its own account"),
            "{}",
            text(&out)
        );
    }
    let refused = daemon
        .audit()
        .into_iter()
        .filter(|l| l.contains("result=refused"))
        .count();
    assert_eq!(refused, 5, "{}", daemon.log());
    let out = daemon.cli(&["--user", &bob.name, "phone", "list", "--json"]);
    let phones: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        phones.as_array().unwrap().len(),
        1,
        "bob's phones are untouched"
    );
    assert!(!daemon.log().contains(&bob_secret));

    // Clear exit codes for the usual mistakes.
    let out = as_user(&alice, &daemon, &["phone", "remove", "Nokia"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let out = as_user(&alice, &daemon, &["phone", "add", "Phone A"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    let out = as_user(&alice, &daemon, &["phone", "add", "bad\tname", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    drop(daemon);
    let out = as_user(&alice, &daemon_gone(&dir), &["status"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("smartsignd is not running"),
        "{}",
        text(&out)
    );
}

/// A daemon handle whose process has been stopped, for its socket path.
fn daemon_gone(dir: &TempDir) -> Daemon {
    let mut daemon = Daemon::start(dir, "");
    daemon.stop();
    daemon
}

/// `smartsign phone add NAME` as a user types it: QR code and secret on the
/// terminal, then the app's code at the prompt (one wrong try first).
#[test]
fn interactive_enrollment_shows_the_qr_code_and_asks_for_the_code() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;

    require_root();
    let dir = TempDir::new("cli-tty");
    let user = TestUser::new("sse2e-cli-t");
    let daemon = Daemon::start(&dir, "");
    let uid = user.uid();
    let mut child = as_uid(uid, SMARTSIGN)
        .args(["--socket"])
        .arg(&daemon.socket)
        .args(["phone", "add", "My phone"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());

    let mut seen = String::new();
    let secret = loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "no secret shown:\n{seen}"
        );
        seen.push_str(&line);
        if let Some(grouped) = line.strip_prefix("Or type this secret into the app: ") {
            break grouped.split_whitespace().collect::<String>();
        }
    };
    assert!(
        seen.contains('█') || seen.contains('▀'),
        "no QR code:\n{seen}"
    );
    writeln!(stdin, "000000").unwrap();
    writeln!(stdin, "{}", oathtool(&secret, "now")).unwrap();
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{seen}{rest}");
    assert!(rest.contains("try again"), "{rest}");
    assert!(rest.contains("Phone \"My phone\" is enrolled"), "{rest}");

    let out = daemon.cli(&["--user", &user.name, "phone", "list", "--json"]);
    let phones: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(phones[0]["confirmed"], true, "{phones}");
}
