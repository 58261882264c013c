use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use totp_rs::{Algorithm, Builder, Secret as TotpSecret};

use super::*;
use crate::audit::Memory;
use crate::mail::{CodeMail, MailError, MailSink};
use crate::policy::{Policy, Unenrolled};
use crate::store::SqliteStore;
use std::sync::Mutex;

const ALICE: u32 = 1000;
const BOB: u32 = 1001;
const START: u64 = 1_800_000_000;

/// Accounts in passwd order: `name_of` gives the first name of a uid.
struct Users(Vec<(&'static str, u32)>);

impl Accounts for Users {
    fn uid_of(&self, user: &str) -> Option<u32> {
        self.0.iter().find(|(n, _)| *n == user).map(|(_, u)| *u)
    }
    fn name_of(&self, uid: u32) -> Option<String> {
        self.0
            .iter()
            .find(|(_, u)| *u == uid)
            .map(|(n, _)| (*n).to_owned())
    }
    /// Alice is in group 900, bob and root in none; others are unknown.
    fn gids_of(&self, user: &str) -> Option<Vec<u32>> {
        match user {
            "alice" => Some(vec![ALICE, 900]),
            "alice-alias" => Some(vec![ALICE, 777]),
            "bob" | "root" => Some(vec![]),
            _ => None,
        }
    }
}

/// Mails "sent": (to, subject, body).
type Outbox = Arc<Mutex<Vec<(String, String, String)>>>;

struct SharedOutbox(Outbox);

impl MailSink for SharedOutbox {
    fn send(&self, to: &lettre::Address, mail: &CodeMail<'_>) -> Result<(), MailError> {
        if to.to_string().starts_with("slow@") {
            std::thread::sleep(std::time::Duration::from_secs(5));
        }
        if to.to_string().starts_with("down@") {
            return Err(MailError(
                "SMTP server mail.example.org:587: connection refused".into(),
            ));
        }
        self.0
            .lock()
            .unwrap()
            .push((to.to_string(), mail.subject(), mail.body()));
        Ok(())
    }
}

struct SharedAudit(Arc<Memory>);

impl AuditSink for SharedAudit {
    fn record(&self, event: &AuditEvent) {
        self.0.record(event);
    }
}

struct Fixture {
    outbox: Outbox,
    service: Arc<Service>,
    now: Arc<AtomicU64>,
    audit: Arc<Memory>,
    dir: std::path::PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir =
            std::env::temp_dir().join(format!("smartsignd-svc-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = Config::default();
        config.lockout.max_failures = 3;
        config.lockout.window = Duration::from_secs(60);
        let now = Arc::new(AtomicU64::new(START));
        let audit = Arc::new(Memory::default());
        let outbox = Arc::new(Mutex::new(Vec::new()));
        config.email = Some(
            Config::parse(
                "[email]\nfrom = \"SmartSign <ss@web-3>\"\ntransport = \"sendmail\"\n\
                 code_ttl = \"5m\"\nmax_per_hour = 3\ntimeout = \"1s\"\n",
                std::path::Path::new("test.toml"),
            )
            .unwrap()
            .email
            .unwrap(),
        );
        let clock_now = Arc::clone(&now);
        let service = Service::new(
            config,
            // The tests of the first login predate the policy: users without
            // a phone are let through, as `unenrolled = "allow"` says.
            Policy {
                unenrolled: Unenrolled::Allow,
                ..Policy::default()
            },
            Box::new(SqliteStore::open(&dir).unwrap()),
            Box::new(SharedAudit(Arc::clone(&audit))),
            // Like NSS: "Alice" and an alias resolve to alice's uid, whose
            // first name is "alice".
            Box::new(Users(vec![
                ("root", 0),
                ("alice", ALICE),
                ("bob", BOB),
                ("Alice", ALICE),
                ("alice-alias", ALICE),
            ])),
            Box::new(move || clock_now.load(Ordering::SeqCst)),
            "web-3".into(),
            Some(Arc::new(SharedOutbox(Arc::clone(&outbox)))),
        );
        Fixture {
            outbox,
            service: Arc::new(service),
            now,
            audit,
            dir,
        }
    }

    fn advance(&self, secs: u64) {
        self.now.fetch_add(secs, Ordering::SeqCst);
    }

    fn time(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn lines(&self) -> Vec<String> {
        self.audit.lines.lock().unwrap().clone()
    }

    fn last_line(&self) -> String {
        self.lines().last().cloned().unwrap_or_default()
    }

    /// Enrolls a confirmed phone as root and returns its secret.
    fn enroll(&self, user: &str, name: &str) -> String {
        let created = self.service.handle(
            0,
            Request::PhoneAdd {
                user: Some(user.into()),
                name: name.into(),
                code: None,
            },
        );
        let Response::PhoneCreated(phone) = created else {
            panic!("{created:?}")
        };
        let secret = phone.secret.expose().to_owned();
        // Confirm with the previous step's code so that the current one stays usable.
        let code = code_at(&secret, self.time() - 30);
        let confirmed = self.service.handle(
            0,
            Request::PhoneConfirm {
                user: Some(user.into()),
                name: name.into(),
                code: code.as_str().into(),
            },
        );
        assert_eq!(confirmed, Response::Done);
        secret
    }

    fn verify(&self, user: &str, code: &str) -> Response {
        self.service.handle(
            0,
            Request::VerifyCode {
                login: login(user),
                code: code.into(),
            },
        )
    }
}

/// Alice's logins with these codes, each on its own thread, all at once.
fn all_at_once(f: &Fixture, codes: Vec<String>) -> Vec<Response> {
    let threads: Vec<_> = codes
        .into_iter()
        .map(|code| {
            let service = Arc::clone(&f.service);
            std::thread::spawn(move || {
                let code = code.as_str().into();
                service.handle(
                    0,
                    Request::VerifyCode {
                        login: login("alice"),
                        code,
                    },
                )
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// The kind of an error answer, for short assertions.
fn kind(response: &Response) -> Option<ErrorKind> {
    match response {
        Response::Error { kind, .. } => Some(*kind),
        _ => None,
    }
}

fn login(user: &str) -> LoginContext {
    LoginContext {
        user: user.into(),
        service: "sshd".into(),
        rhost: Some("192.0.2.7".into()),
        tty: Some("ssh".into()),
    }
}

fn code_at(secret: &str, time: u64) -> String {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_secret(TotpSecret::try_from_base32(secret).unwrap())
        .build()
        .unwrap()
        .generate(time)
        .to_string()
}

#[test]
fn unenrolled_users_are_left_to_the_stack_and_audited() {
    let f = Fixture::new("unenrolled");
    assert_eq!(
        f.service.handle(
            0,
            Request::Begin {
                login: login("alice")
            }
        ),
        Response::NotEnrolled
    );
    assert_eq!(
        f.last_line(),
        "user=alice service=sshd rhost=192.0.2.7 tty=ssh method=none phone=- result=ignore \
         reason=\"not enrolled\" uid=0"
    );
    // A pending phone does not count.
    f.service.handle(
        ALICE,
        Request::PhoneAdd {
            user: None,
            name: "Pixel".into(),
            code: None,
        },
    );
    assert_eq!(
        f.service.handle(
            0,
            Request::Begin {
                login: login("alice")
            }
        ),
        Response::NotEnrolled
    );
}

#[test]
fn right_code_once_then_replay_refused() {
    let f = Fixture::new("replay");
    let secret = f.enroll("alice", "Pixel 8");
    assert_eq!(
        f.service.handle(
            0,
            Request::Begin {
                login: login("alice")
            }
        ),
        Response::Challenge {
            phones: vec!["Pixel 8".into()],
            email: None,
            skip_until: None,
            push: false,
            autopush: false,
        }
    );
    let code = code_at(&secret, f.time());
    assert_eq!(
        f.verify("alice", &code),
        Response::Allow {
            phone: "Pixel 8".into()
        }
    );
    assert!(
        f.last_line()
            .contains("method=app-code phone=\"Pixel 8\" result=allow")
    );

    assert_eq!(
        f.verify("alice", &code),
        Response::Deny {
            reason: DenyReason::ReusedCode
        }
    );
    assert!(f.last_line().contains("reason=\"code already used\""));
    // The previous step's code is older than the one used: refused too.
    let older = code_at(&secret, f.time() - 30);
    assert_eq!(
        f.verify("alice", &older),
        Response::Deny {
            reason: DenyReason::ReusedCode
        }
    );
    // The next step's code is still good, once.
    f.advance(30);
    let next = code_at(&secret, f.time());
    assert_eq!(
        f.verify("alice", &next),
        Response::Allow {
            phone: "Pixel 8".into()
        }
    );
    assert!(
        f.lines()
            .iter()
            .all(|l| !l.contains(&code) && !l.contains(&next) && !l.contains(&secret))
    );
}

#[test]
fn spaces_in_a_code_are_forgiven() {
    let f = Fixture::new("spaces");
    let secret = f.enroll("alice", "Pixel");
    let code = code_at(&secret, f.time());
    let spaced = format!("{} {}", &code[..3], &code[3..]);
    assert_eq!(
        f.verify("alice", &spaced),
        Response::Allow {
            phone: "Pixel".into()
        }
    );
}

#[test]
fn malformed_codes_are_refused_and_counted() {
    let f = Fixture::new("malformed");
    f.enroll("alice", "Pixel");
    for code in [
        "",
        "12345",
        "1234567",
        "12345a",
        "123\u{0}456",
        &"9".repeat(300),
    ] {
        let answer = f.verify("alice", code);
        assert!(
            matches!(
                answer,
                Response::Deny {
                    reason: DenyReason::MalformedCode
                } | Response::LockedOut { .. }
            ),
            "{code:?}: {answer:?}"
        );
    }
    assert!(
        f.lines()
            .iter()
            .any(|l| l.contains("reason=\"that is not a code\""))
    );
    assert!(
        f.lines()
            .iter()
            .any(|l| l.contains("locked out after 3 failures"))
    );
}

#[test]
fn lockout_refuses_even_the_right_code_until_the_window_passes() {
    let f = Fixture::new("lockout");
    let secret = f.enroll("alice", "Pixel");
    assert_eq!(
        f.verify("alice", "000000"),
        Response::Deny {
            reason: DenyReason::WrongCode
        }
    );
    assert_eq!(
        f.verify("alice", "000001"),
        Response::Deny {
            reason: DenyReason::WrongCode
        }
    );
    let locked = f.verify("alice", "000002");
    assert_eq!(
        locked,
        Response::LockedOut {
            until: f.time() + 60
        }
    );

    let right = code_at(&secret, f.time());
    assert_eq!(
        f.verify("alice", &right),
        Response::LockedOut {
            until: f.time() + 60
        }
    );
    assert_eq!(
        f.service.handle(
            0,
            Request::Begin {
                login: login("alice")
            }
        ),
        Response::LockedOut {
            until: f.time() + 60
        }
    );
    assert!(f.last_line().contains("result=deny reason=\"locked out\""));
    let Response::Status(status) = f.service.handle(ALICE, Request::Status { user: None }) else {
        panic!()
    };
    assert_eq!(status.locked_until, Some(f.time() + 60));

    // Bob is not affected.
    let bob = f.enroll("bob", "Pixel");
    assert_eq!(
        f.verify("bob", &code_at(&bob, f.time())),
        Response::Allow {
            phone: "Pixel".into()
        }
    );

    f.advance(60);
    let right = code_at(&secret, f.time());
    assert_eq!(
        f.verify("alice", &right),
        Response::Allow {
            phone: "Pixel".into()
        }
    );
}

#[test]
fn success_clears_earlier_failures() {
    let f = Fixture::new("clear");
    let secret = f.enroll("alice", "Pixel");
    f.verify("alice", "000000");
    f.verify("alice", "000001");
    assert_eq!(
        f.verify("alice", &code_at(&secret, f.time())),
        Response::Allow {
            phone: "Pixel".into()
        }
    );
    assert_eq!(
        f.verify("alice", "000002"),
        Response::Deny {
            reason: DenyReason::WrongCode
        }
    );
}

#[test]
fn any_of_several_phones_and_the_log_names_it() {
    let f = Fixture::new("two-phones");
    let _first = f.enroll("alice", "Pixel 8");
    let second = f.enroll("alice", "work iPhone");
    let code = code_at(&second, f.time());
    assert_eq!(
        f.verify("alice", &code),
        Response::Allow {
            phone: "work iPhone".into()
        }
    );
    assert!(f.last_line().contains("phone=\"work iPhone\" result=allow"));
}

#[test]
fn racing_logins_with_one_code_let_one_in() {
    let f = Fixture::new("race");
    let secret = f.enroll("alice", "Pixel");
    let code = code_at(&secret, f.time());
    let answers = all_at_once(&f, vec![code; 8]);
    let allowed = answers
        .iter()
        .filter(|a| matches!(a, Response::Allow { .. }))
        .count();
    assert_eq!(allowed, 1, "{answers:?}");
}

#[test]
fn users_act_only_on_themselves() {
    let f = Fixture::new("authz");
    f.enroll("bob", "Pixel");
    let refused = f.service.handle(
        ALICE,
        Request::PhoneList {
            user: Some("bob".into()),
        },
    );
    assert!(
        matches!(
            refused,
            Response::Error {
                kind: ErrorKind::Refused,
                ..
            }
        ),
        "{refused:?}"
    );
    assert!(f.last_line().contains("user=bob service=smartsign"));
    assert!(f.last_line().contains("result=refused"));
    assert!(f.last_line().contains("uid=1000"));

    for request in [
        Request::Begin {
            login: login("bob"),
        },
        Request::VerifyCode {
            login: login("bob"),
            code: "123456".into(),
        },
        Request::PhoneAdd {
            user: Some("bob".into()),
            name: "evil".into(),
            code: None,
        },
        Request::PhoneRemove {
            user: Some("bob".into()),
            name: "Pixel".into(),
            code: None,
        },
        Request::Status {
            user: Some("root".into()),
        },
        Request::PhoneList {
            user: Some("nobody-here".into()),
        },
    ] {
        let answer = f.service.handle(ALICE, request.clone());
        assert!(
            matches!(
                answer,
                Response::Error {
                    kind: ErrorKind::Refused,
                    ..
                }
            ),
            "{request}: {answer:?}"
        );
    }
    // Nothing of bob's changed.
    let Response::Phones { phones } = f.service.handle(BOB, Request::PhoneList { user: None })
    else {
        panic!()
    };
    assert_eq!(phones.len(), 1);
    // Alice on herself, by name or implicitly, is fine.
    assert!(matches!(
        f.service.handle(
            ALICE,
            Request::Status {
                user: Some("alice".into())
            }
        ),
        Response::Status(_)
    ));
    assert!(matches!(
        f.service.handle(ALICE, Request::Status { user: None }),
        Response::Status(_)
    ));
    // A uid with no account gets a clear error.
    let answer = f.service.handle(4242, Request::Status { user: None });
    assert_eq!(kind(&answer), Some(ErrorKind::NotFound));
}

#[test]
fn root_manages_existing_accounts_only() {
    let f = Fixture::new("root");
    let answer = f.service.handle(
        0,
        Request::PhoneAdd {
            user: Some("ghost".into()),
            name: "P".into(),
            code: None,
        },
    );
    assert!(
        matches!(
            answer,
            Response::Error {
                kind: ErrorKind::NotFound,
                ..
            }
        ),
        "{answer:?}"
    );
    // A login for an unknown account simply has nothing enrolled.
    assert_eq!(
        f.service.handle(
            0,
            Request::Begin {
                login: login("ghost")
            }
        ),
        Response::NotEnrolled
    );
}

#[test]
fn hostile_names_are_refused() {
    let f = Fixture::new("names");
    for user in ["../../etc/passwd", "a\nb", "", "a\0b", "-x"] {
        let answer = f.service.handle(0, Request::Begin { login: login(user) });
        assert!(
            matches!(
                answer,
                Response::Error {
                    kind: ErrorKind::BadRequest,
                    ..
                }
            ),
            "{user:?}"
        );
    }
    for name in ["", "a\nb", &"p".repeat(65)] {
        let answer = f.service.handle(
            ALICE,
            Request::PhoneAdd {
                user: None,
                name: name.into(),
                code: None,
            },
        );
        assert!(
            matches!(
                answer,
                Response::Error {
                    kind: ErrorKind::BadRequest,
                    ..
                }
            ),
            "{name:?}"
        );
    }
    let mut long = login("alice");
    long.rhost = Some("h".repeat(5000));
    let answer = f.service.handle(0, Request::Begin { login: long });
    assert_eq!(kind(&answer), Some(ErrorKind::BadRequest));
}

#[test]
fn enrollment_rules() {
    let f = Fixture::new("enroll");
    let Response::PhoneCreated(phone) = f.service.handle(
        ALICE,
        Request::PhoneAdd {
            user: None,
            name: "Pixel".into(),
            code: None,
        },
    ) else {
        panic!()
    };
    assert!(
        phone
            .otpauth_uri
            .expose()
            .starts_with("otpauth://totp/SmartSign:alice%40web-3?")
    );
    assert!(!f.lines().iter().any(|l| l.contains(phone.secret.expose())));

    let wrong = f.service.handle(
        ALICE,
        Request::PhoneConfirm {
            user: None,
            name: "Pixel".into(),
            code: "000000".into(),
        },
    );
    assert_eq!(kind(&wrong), Some(ErrorKind::WrongCode));
    let missing = f.service.handle(
        ALICE,
        Request::PhoneConfirm {
            user: None,
            name: "Nokia".into(),
            code: "000000".into(),
        },
    );
    assert_eq!(kind(&missing), Some(ErrorKind::NotFound));

    let code = code_at(phone.secret.expose(), f.time());
    let ok = f.service.handle(
        ALICE,
        Request::PhoneConfirm {
            user: None,
            name: "Pixel".into(),
            code: code.as_str().into(),
        },
    );
    assert_eq!(ok, Response::Done);
    // The code that confirmed the phone cannot then log in.
    assert_eq!(
        f.verify("alice", &code),
        Response::Deny {
            reason: DenyReason::ReusedCode
        }
    );

    let again = f.service.handle(
        ALICE,
        Request::PhoneAdd {
            user: None,
            name: "Pixel".into(),
            code: None,
        },
    );
    assert_eq!(kind(&again), Some(ErrorKind::AlreadyExists));
    // Removing a confirmed phone takes a fresh code from one.
    let secret = phone.secret.expose();
    f.advance(30);
    let remove = |code: Option<&str>| {
        f.service.handle(
            ALICE,
            Request::PhoneRemove {
                user: None,
                name: "Pixel".into(),
                code: code.map(Secret::from),
            },
        )
    };
    assert_eq!(kind(&remove(None)), Some(ErrorKind::CodeRequired));
    assert!(matches!(
        remove(Some("000000")),
        Response::Error {
            kind: ErrorKind::WrongCode,
            ..
        }
    ));
    assert_eq!(remove(Some(&code_at(secret, f.time()))), Response::Done);
    let gone = f.service.handle(
        ALICE,
        Request::PhoneRemove {
            user: None,
            name: "Pixel".into(),
            code: None,
        },
    );
    assert_eq!(kind(&gone), Some(ErrorKind::NotFound));
}

fn add_as(f: &Fixture, uid: u32, name: &str, code: Option<&str>) -> Response {
    f.service.handle(
        uid,
        Request::PhoneAdd {
            user: Some("alice".into()),
            name: name.into(),
            code: code.map(Secret::from),
        },
    )
}

/// A session and a password must not be enough to add a phone of one's
/// own next to the user's: the first phone is free, later ones need a code.
#[test]
fn a_second_phone_needs_a_code_from_the_first() {
    let f = Fixture::new("second");
    assert!(matches!(
        add_as(&f, ALICE, "first", None),
        Response::PhoneCreated(_)
    ));
    // A pending first phone does not yet demand proof.
    assert!(matches!(
        add_as(&f, ALICE, "other", None),
        Response::PhoneCreated(_)
    ));
    let secret = f.enroll("alice", "Pixel");

    let answer = add_as(&f, ALICE, "evil", None);
    assert!(
        matches!(
            answer,
            Response::Error {
                kind: ErrorKind::CodeRequired,
                ..
            }
        ),
        "{answer:?}"
    );
    let answer = add_as(&f, ALICE, "evil", Some("123456"));
    assert!(
        matches!(
            answer,
            Response::Error {
                kind: ErrorKind::WrongCode,
                ..
            }
        ),
        "{answer:?}"
    );
    assert!(f.last_line().contains("service=smartsign") && f.last_line().contains("result=deny"));

    let code = code_at(&secret, f.time());
    assert!(matches!(
        add_as(&f, ALICE, "Tablet", Some(&code)),
        Response::PhoneCreated(_)
    ));
    // The code is spent: it cannot also log in.
    assert_eq!(
        f.verify("alice", &code),
        Response::Deny {
            reason: DenyReason::ReusedCode
        }
    );
    // Root needs no code.
    assert!(matches!(
        add_as(&f, 0, "Laptop", None),
        Response::PhoneCreated(_)
    ));
}

#[test]
fn wrong_proofs_count_and_a_lockout_blocks_changes() {
    let f = Fixture::new("proof-lockout");
    let secret = f.enroll("alice", "Pixel");
    for _ in 0..2 {
        add_as(&f, ALICE, "evil", Some("000000"));
    }
    assert_eq!(
        f.verify("alice", "000000"),
        Response::LockedOut {
            until: f.time() + 60
        }
    );
    let code = code_at(&secret, f.time());
    let answer = add_as(&f, ALICE, "evil", Some(&code));
    assert!(
        matches!(
            answer,
            Response::Error {
                kind: ErrorKind::Refused,
                ..
            }
        ),
        "{answer:?}"
    );
    let remove = f.service.handle(
        ALICE,
        Request::PhoneRemove {
            user: None,
            name: "Pixel".into(),
            code: Some(code.as_str().into()),
        },
    );
    assert!(
        matches!(
            remove,
            Response::Error {
                kind: ErrorKind::Refused,
                ..
            }
        ),
        "{remove:?}"
    );
    let Response::Phones { phones } = f.service.handle(ALICE, Request::PhoneList { user: None })
    else {
        panic!()
    };
    assert_eq!(phones.len(), 1, "nothing changed while locked out");
}

#[test]
fn only_root_unlocks() {
    let f = Fixture::new("unlock");
    let secret = f.enroll("alice", "Pixel");
    for wrong in ["000000", "000001", "000002"] {
        f.verify("alice", wrong);
    }
    let until = f.time() + 60;
    let refused = f.service.handle(
        ALICE,
        Request::Unlock {
            user: "alice".into(),
        },
    );
    assert!(
        matches!(
            refused,
            Response::Error {
                kind: ErrorKind::Refused,
                ..
            }
        ),
        "{refused:?}"
    );
    assert!(f.last_line().contains("result=refused"));
    assert_eq!(
        f.verify("alice", &code_at(&secret, f.time())),
        Response::LockedOut { until }
    );

    assert_eq!(
        f.service.handle(
            0,
            Request::Unlock {
                user: "alice".into()
            }
        ),
        Response::Done
    );
    assert!(f.last_line().contains("reason=\"unlocked by root\""));
    assert_eq!(
        f.verify("alice", &code_at(&secret, f.time())),
        Response::Allow {
            phone: "Pixel".into()
        }
    );
}

/// The second factor belongs to the account, not to the name typed: other
/// names of the same uid find the same phones, lockout and used codes.
#[test]
fn every_name_of_an_account_meets_the_same_second_factor() {
    let f = Fixture::new("aliases");
    let secret = f.enroll("alice", "Pixel");
    for name in ["Alice", "alice-alias"] {
        assert_eq!(
            f.service.handle(0, Request::Begin { login: login(name) }),
            Response::Challenge {
                phones: vec!["Pixel".into()],
                email: None,
                skip_until: None,
                push: false,
                autopush: false,
            },
            "{name}"
        );
    }
    let code = code_at(&secret, f.time());
    assert_eq!(
        f.verify("alice-alias", &code),
        Response::Allow {
            phone: "Pixel".into()
        }
    );
    assert!(
        f.last_line().starts_with("user=alice "),
        "{}",
        f.last_line()
    );
    assert_eq!(
        f.verify("Alice", &code),
        Response::Deny {
            reason: DenyReason::ReusedCode
        }
    );
    for wrong in ["000000", "000001"] {
        f.verify("Alice", wrong);
    }
    assert!(matches!(
        f.verify("alice-alias", "000002"),
        Response::LockedOut { .. }
    ));
    assert!(matches!(
        f.verify("alice", &code),
        Response::LockedOut { .. }
    ));
}

/// Many wrong guesses at once still lock after `max_failures` of them.
#[test]
fn concurrent_wrong_codes_cannot_outrun_the_lockout() {
    let f = Fixture::new("guess-race");
    f.enroll("alice", "Pixel");
    let answers = all_at_once(&f, (0..32).map(|i| format!("{:06}", 100_000 + i)).collect());
    let judged = answers
        .iter()
        .filter(|a| matches!(a, Response::Deny { .. }))
        .count();
    assert_eq!(
        judged, 2,
        "only max_failures - 1 plain denials before the lock: {answers:?}"
    );
    let guesses = f
        .lines()
        .iter()
        .filter(|l| l.contains("reason=\"wrong code"))
        .count();
    assert_eq!(guesses, 3, "{:?}", f.lines());
}

/// A phone left pending while the account had none must not become a
/// second factor once the user has enrolled a real one: that pending phone
/// was added without any proof.
#[test]
fn phones_pending_from_before_the_first_enrollment_are_dropped() {
    let f = Fixture::new("stale-pending");
    let Response::PhoneCreated(evil) = add_as(&f, ALICE, "evil", None) else {
        panic!()
    };
    f.enroll("alice", "Pixel");
    let code = code_at(evil.secret.expose(), f.time());
    let confirm = f.service.handle(
        ALICE,
        Request::PhoneConfirm {
            user: None,
            name: "evil".into(),
            code: code.as_str().into(),
        },
    );
    assert!(
        matches!(
            confirm,
            Response::Error {
                kind: ErrorKind::NotFound,
                ..
            }
        ),
        "{confirm:?}"
    );
    assert!(
        f.lines()
            .iter()
            .any(|l| l.contains("pending phone dropped")),
        "{:?}",
        f.lines()
    );
    assert_eq!(
        f.verify("alice", &code),
        Response::Deny {
            reason: DenyReason::WrongCode
        }
    );
}

/// A wrong code stays a denial when the failure cannot be written down (a
/// full disk, a locked file): never an error that failmode=safe lets pass.
#[test]
fn a_wrong_code_is_denied_even_when_the_store_cannot_count_it() {
    let f = Fixture::new("store-busy");
    let secret = f.enroll("alice", "Pixel");
    let other = rusqlite::Connection::open(f.dir.join(SqliteStore::FILE)).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let answer = f.verify("alice", "000000");
    assert_eq!(
        answer,
        Response::Deny {
            reason: DenyReason::WrongCode
        }
    );
    assert!(f.last_line().contains("not counted"), "{}", f.last_line());
    other.execute_batch("ROLLBACK").unwrap();
    assert_eq!(
        f.verify("alice", &code_at(&secret, f.time())),
        Response::Allow {
            phone: "Pixel".into()
        }
    );
}

impl Fixture {
    /// The 8-digit code in the newest mail.
    fn mailed_code(&self) -> String {
        let outbox = self.outbox.lock().unwrap();
        let (_, _, body) = outbox.last().expect("a mail");
        let start = body.find("code is: ").unwrap() + "code is: ".len();
        body[start..start + 8].to_owned()
    }

    fn send_code(&self, user: &str) -> Response {
        self.service
            .handle(0, Request::SendEmailCode { login: login(user) })
    }
}

#[test]
fn an_emailed_code_logs_in_once() {
    let f = Fixture::new("email-login");
    f.enroll("alice", "Pixel");
    assert_eq!(
        f.service.handle(
            0,
            Request::EmailSet {
                user: Some("alice".into()),
                address: "alice@example.org".into(),
                code: None
            }
        ),
        Response::Done,
        "root sets an address at once"
    );
    assert_eq!(
        f.service.handle(
            0,
            Request::Begin {
                login: login("alice")
            }
        ),
        Response::Challenge {
            phones: vec!["Pixel".into()],
            email: Some("a****@example.org".into()),
            skip_until: None,
            push: false,
            autopush: false,
        }
    );
    assert_eq!(
        f.send_code("alice"),
        Response::EmailSent {
            to: "a****@example.org".into(),
            expires: f.time() + 300
        }
    );
    let (to, subject, body) = f.outbox.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (to.as_str(), subject.as_str()),
        ("alice@example.org", "SmartSign code for alice on web-3")
    );
    assert!(body.contains("from:     192.0.2.7"), "{body}");
    let code = f.mailed_code();
    assert!(f.lines().iter().all(|l| !l.contains(&code)));

    assert_eq!(
        f.verify("alice", &code),
        Response::Allow {
            phone: "email a****@example.org".into()
        }
    );
    assert!(
        f.last_line().contains("method=email-code"),
        "{}",
        f.last_line()
    );
    assert_eq!(
        f.verify("alice", &code),
        Response::Deny {
            reason: DenyReason::WrongCode
        }
    );
}

#[test]
fn emailed_codes_expire_are_replaced_and_are_limited() {
    let f = Fixture::new("email-rules");
    f.enroll("alice", "Pixel");
    f.service.handle(
        0,
        Request::EmailSet {
            user: Some("alice".into()),
            address: "alice@example.org".into(),
            code: None,
        },
    );

    f.send_code("alice");
    let old = f.mailed_code();
    f.send_code("alice");
    let new = f.mailed_code();
    if old != new {
        assert_eq!(
            f.verify("alice", &old),
            Response::Deny {
                reason: DenyReason::WrongCode
            },
            "replaced"
        );
    }
    f.advance(301);
    assert_eq!(
        f.verify("alice", &new),
        Response::Deny {
            reason: DenyReason::ExpiredCode
        }
    );

    // Three mails an hour; the fourth is refused, and so are the codes not sent.
    assert!(matches!(f.send_code("alice"), Response::EmailSent { .. }));
    let answer = f.send_code("alice");
    assert!(
        matches!(
            answer,
            Response::Error {
                kind: ErrorKind::TooMany,
                ..
            }
        ),
        "{answer:?}"
    );
    assert!(
        f.last_line()
            .contains("not mailed: at most 3 mails an hour"),
        "{}",
        f.last_line()
    );
    assert_eq!(f.outbox.lock().unwrap().len(), 3);
    f.advance(3600);
    assert!(matches!(f.send_code("alice"), Response::EmailSent { .. }));
}

#[test]
fn a_mail_that_cannot_be_sent_is_said_and_leaves_no_code() {
    let f = Fixture::new("email-down");
    let secret = f.enroll("alice", "Pixel");
    f.service.handle(
        0,
        Request::EmailSet {
            user: Some("alice".into()),
            address: "down@example.org".into(),
            code: None,
        },
    );
    let answer = f.send_code("alice");
    let Response::Error {
        kind: ErrorKind::MailFailed,
        message,
    } = answer
    else {
        panic!("{answer:?}")
    };
    assert!(message.contains("could not be sent"), "{message}");
    assert!(
        !message.contains("down@"),
        "the server's words stay in the log: {message}"
    );
    assert!(
        f.last_line().contains("connection refused"),
        "{}",
        f.last_line()
    );
    assert!(
        f.last_line()
            .contains("result=deny reason=\"not mailed: SMTP server"),
        "{}",
        f.last_line()
    );
    assert_eq!(
        f.verify("alice", &code_at(&secret, f.time())),
        Response::Allow {
            phone: "Pixel".into()
        }
    );
}

#[test]
fn users_confirm_their_address_with_the_mailed_code() {
    let f = Fixture::new("email-confirm");
    let set = |code: Option<&str>| {
        f.service.handle(
            ALICE,
            Request::EmailSet {
                user: None,
                address: "alice@example.org".into(),
                code: code.map(Secret::from),
            },
        )
    };
    // An address is a fallback beside a phone, never instead of one.
    assert_eq!(kind(&set(None)), Some(ErrorKind::Refused));
    let secret = f.enroll("alice", "Pixel");
    assert_eq!(kind(&set(None)), Some(ErrorKind::CodeRequired));
    let sent = set(Some(&code_at(&secret, f.time())));
    assert_eq!(
        sent,
        Response::EmailSent {
            to: "a****@example.org".into(),
            expires: f.time() + 300
        }
    );
    let Response::Status(status) = f.service.handle(ALICE, Request::Status { user: None }) else {
        panic!()
    };
    assert_eq!(
        (status.email, status.email_pending.as_deref()),
        (None, Some("alice@example.org"))
    );
    let confirm = |code: &str| {
        f.service.handle(
            ALICE,
            Request::EmailConfirm {
                user: None,
                code: code.into(),
            },
        )
    };
    assert!(matches!(
        confirm("00000000"),
        Response::Error {
            kind: ErrorKind::WrongCode,
            ..
        }
    ));
    assert_eq!(confirm(&f.mailed_code()), Response::Done);
    assert_eq!(
        f.service.store.email("alice").unwrap().as_deref(),
        Some("alice@example.org")
    );

    let remove = f.service.handle(
        ALICE,
        Request::EmailRemove {
            user: None,
            code: None,
        },
    );
    assert_eq!(kind(&remove), Some(ErrorKind::CodeRequired));
    for bad in ["not-an-address", "a@b.c\r\nBcc: x@y.z", ""] {
        let answer = f.service.handle(
            0,
            Request::EmailSet {
                user: Some("alice".into()),
                address: bad.into(),
                code: None,
            },
        );
        assert!(
            matches!(
                answer,
                Response::Error {
                    kind: ErrorKind::BadRequest,
                    ..
                }
            ),
            "{bad:?}"
        );
    }
}

/// Whoever reads the mailbox must not turn an emailed code into a phone:
/// proofs for account changes are app codes only.
#[test]
fn an_emailed_code_is_no_proof_for_changes() {
    let f = Fixture::new("email-proof");
    f.enroll("alice", "Pixel");
    f.service.handle(
        0,
        Request::EmailSet {
            user: Some("alice".into()),
            address: "alice@example.org".into(),
            code: None,
        },
    );
    f.send_code("alice");
    let mailed = f.mailed_code();
    let remove = f.service.handle(
        ALICE,
        Request::PhoneRemove {
            user: None,
            name: "Pixel".into(),
            code: Some(mailed.as_str().into()),
        },
    );
    assert!(
        matches!(
            remove,
            Response::Error {
                kind: ErrorKind::WrongCode,
                ..
            }
        ),
        "{remove:?}"
    );
    let add = add_as(&f, ALICE, "evil", Some(&mailed));
    assert!(
        matches!(
            add,
            Response::Error {
                kind: ErrorKind::WrongCode,
                ..
            }
        ),
        "{add:?}"
    );
    let Response::Phones { phones } = f.service.handle(ALICE, Request::PhoneList { user: None })
    else {
        panic!()
    };
    assert_eq!(phones.len(), 1);
}

/// A new address ends every code mailed before: to the old address, and
/// any other address waiting for confirmation.
#[test]
fn changing_the_address_ends_earlier_codes() {
    let f = Fixture::new("email-change");
    let secret = f.enroll("alice", "Pixel");
    let root_sets = |address: &str| {
        f.service.handle(
            0,
            Request::EmailSet {
                user: Some("alice".into()),
                address: address.into(),
                code: None,
            },
        )
    };
    root_sets("old@example.org");
    f.send_code("alice");
    let old_code = f.mailed_code();
    // Alice asks to move to another address, then root sets a third.
    let proof = code_at(&secret, f.time());
    f.service.handle(
        ALICE,
        Request::EmailSet {
            user: None,
            address: "pending@example.org".into(),
            code: Some(proof.as_str().into()),
        },
    );
    let pending_code = f.mailed_code();
    assert_eq!(root_sets("new@example.org"), Response::Done);
    assert_eq!(
        f.verify("alice", &old_code),
        Response::Deny {
            reason: DenyReason::WrongCode
        }
    );
    let confirm = f.service.handle(
        ALICE,
        Request::EmailConfirm {
            user: None,
            code: pending_code.as_str().into(),
        },
    );
    assert!(
        matches!(
            confirm,
            Response::Error {
                kind: ErrorKind::NotFound,
                ..
            }
        ),
        "{confirm:?}"
    );
    assert_eq!(
        f.service.store.email("alice").unwrap().as_deref(),
        Some("new@example.org")
    );
}

/// However slow the mail server, the request ends at `[email] timeout`,
/// and the account is not held meanwhile.
#[test]
fn a_slow_mail_server_is_cut_off_at_the_timeout() {
    let f = Fixture::new("email-slow");
    let secret = f.enroll("alice", "Pixel");
    f.service.handle(
        0,
        Request::EmailSet {
            user: Some("alice".into()),
            address: "slow@example.org".into(),
            code: None,
        },
    );
    let service = Arc::clone(&f.service);
    let started = std::time::Instant::now();
    let sending = std::thread::spawn(move || {
        service.handle(
            0,
            Request::SendEmailCode {
                login: login("alice"),
            },
        )
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    // Meanwhile the account answers at once.
    let quick = std::time::Instant::now();
    assert_eq!(
        f.verify("alice", &code_at(&secret, f.time())),
        Response::Allow {
            phone: "Pixel".into()
        }
    );
    assert!(
        quick.elapsed() < std::time::Duration::from_millis(500),
        "{:?}",
        quick.elapsed()
    );
    let answer = sending.join().unwrap();
    assert!(
        matches!(
            answer,
            Response::Error {
                kind: ErrorKind::MailFailed,
                ..
            }
        ),
        "{answer:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        f.lines()
            .iter()
            .any(|l| l.contains("not handed over within 1s")),
        "{:?}",
        f.lines()
    );
}

/// A login that gave up while it waited for its account's turn is dropped
/// when the turn comes: its code is not spent and nothing is counted.
#[test]
fn a_request_whose_caller_left_is_dropped() {
    let f = Fixture::new("caller-left");
    let secret = f.enroll("alice", "Pixel");
    let code = code_at(&secret, f.time());
    let request = Request::VerifyCode {
        login: login("alice"),
        code: code.as_str().into(),
    };
    let answer = f.service.handle_while(0, request.clone(), &|| false);
    assert!(
        matches!(
            answer,
            Response::Error {
                kind: ErrorKind::Internal,
                ..
            }
        ),
        "{answer:?}"
    );
    assert!(!f.lines().iter().any(|l| l.contains("result=allow")));
    assert_eq!(
        f.service.handle(0, request),
        Response::Allow {
            phone: "Pixel".into()
        }
    );
}

fn with_policy(name: &str, policy: Policy) -> Fixture {
    let mut f = Fixture::new(name);
    Arc::get_mut(&mut f.service).unwrap().policy = policy;
    f
}

#[test]
fn the_policy_decides_before_any_code_is_asked() {
    let deadline = (START + 100) as i64;
    let f = with_policy(
        "policy",
        Policy {
            skip_until: Some((deadline, "1 April 2027".into())),
            unenrolled: Unenrolled::Deny,
            exempt_groups: vec![("robots".into(), 900)],
            trusted_networks: vec!["10.0.0.0/8".parse().unwrap()],
            ..Policy::default()
        },
    );
    let begin = |user: &str, rhost: &str| {
        let mut login = login(user);
        login.rhost = Some(rhost.into());
        f.service.handle(0, Request::Begin { login })
    };
    // Before the deadline bob (no phone) is told and let through.
    let Response::Skip {
        notice: Some(notice),
    } = begin("bob", "192.0.2.7")
    else {
        panic!()
    };
    assert!(notice.contains("required on 1 April 2027"), "{notice}");
    assert!(
        f.last_line()
            .contains("result=ignore reason=\"not enrolled; allowed until 1 April 2027\"")
    );
    // From the deadline on he is refused, with the reason in the log.
    f.advance(100);
    assert_eq!(
        begin("bob", "192.0.2.7"),
        Response::Deny {
            reason: DenyReason::NotEnrolled
        }
    );
    assert!(
        f.last_line()
            .contains("result=deny reason=\"not enrolled, and the policy requires SmartSign\"")
    );
    // Trusted networks and exempt groups skip, and say why; never Allow.
    assert_eq!(begin("bob", "10.2.3.4"), Response::Skip { notice: None });
    assert!(
        f.last_line()
            .contains("reason=\"trusted network 10.0.0.0/8\""),
        "{}",
        f.last_line()
    );
    assert_eq!(begin("alice", "192.0.2.7"), Response::Skip { notice: None });
    assert!(f.last_line().contains("reason=\"exempt group robots\""));
    // The exemption is for logins, not for proofs of account changes.
    let secret = f.enroll("bob", "Pixel");
    let mut from_trusted = login("bob");
    from_trusted.rhost = Some("10.2.3.4".into());
    let verify = f.service.handle(
        0,
        Request::VerifyCode {
            login: from_trusted,
            code: "000000".into(),
        },
    );
    assert_eq!(verify, Response::Skip { notice: None });
    assert_eq!(
        begin("bob", "192.0.2.7"),
        Response::Challenge {
            phones: vec!["Pixel".into()],
            email: None,
            skip_until: None,
            push: false,
            autopush: false,
        }
    );
    assert_eq!(
        f.verify("bob", &code_at(&secret, f.time())),
        Response::Allow {
            phone: "Pixel".into()
        }
    );
}

#[test]
fn enrolled_users_may_skip_until_the_deadline_only() {
    let deadline = (START + 100) as i64;
    let f = with_policy(
        "skip-now",
        Policy {
            skip_until: Some((deadline, "1 April 2027".into())),
            ..Policy::default()
        },
    );
    f.enroll("alice", "Pixel");
    assert_eq!(
        f.service.handle(
            0,
            Request::Begin {
                login: login("alice")
            }
        ),
        Response::Challenge {
            phones: vec!["Pixel".into()],
            email: None,
            skip_until: Some("1 April 2027".into()),
            push: false,
            autopush: false,
        }
    );
    assert_eq!(
        f.service.handle(
            0,
            Request::SkipNow {
                login: login("alice")
            }
        ),
        Response::Skip { notice: None }
    );
    assert!(
        f.last_line()
            .contains("result=ignore reason=\"skipped by the user; allowed until 1 April 2027\"")
    );
    f.advance(100);
    assert_eq!(
        f.service.handle(
            0,
            Request::Begin {
                login: login("alice")
            }
        ),
        Response::Challenge {
            phones: vec!["Pixel".into()],
            email: None,
            skip_until: None,
            push: false,
            autopush: false,
        }
    );
    assert_eq!(
        f.service.handle(
            0,
            Request::SkipNow {
                login: login("alice")
            }
        ),
        Response::Deny {
            reason: DenyReason::SkipOver
        }
    );
    assert!(
        f.last_line()
            .contains("result=deny reason=\"asked to skip after the deadline\"")
    );
}

/// Groups count by the name that logged in as well as by the account's
/// first name: an alias listed in a required group is required.
#[test]
fn an_alias_in_a_required_group_is_asked() {
    let f = with_policy(
        "alias-groups",
        Policy {
            require_groups: vec![("aliasgroup".into(), 777)],
            ..Policy::default()
        },
    );
    f.enroll("alice", "Pixel");
    assert!(matches!(
        f.service.handle(
            0,
            Request::Begin {
                login: login("alice-alias")
            }
        ),
        Response::Challenge { .. }
    ));
    assert_eq!(
        f.service.handle(
            0,
            Request::Begin {
                login: login("alice")
            }
        ),
        Response::Skip { notice: None }
    );
}

#[test]
fn backup_codes_work_once_and_only_as_hashes() {
    let f = Fixture::new("backup");
    let refused = f.service.handle(
        0,
        Request::BackupCodes {
            user: Some("alice".into()),
            code: None,
        },
    );
    assert!(
        matches!(
            refused,
            Response::Error {
                kind: ErrorKind::Refused,
                ..
            }
        ),
        "a phone first"
    );
    let secret = f.enroll("alice", "Pixel");
    let needs = f.service.handle(
        ALICE,
        Request::BackupCodes {
            user: None,
            code: None,
        },
    );
    assert_eq!(kind(&needs), Some(ErrorKind::CodeRequired));
    let proof = code_at(&secret, f.time());
    let Response::BackupCodes { codes } = f.service.handle(
        ALICE,
        Request::BackupCodes {
            user: None,
            code: Some(proof.as_str().into()),
        },
    ) else {
        panic!()
    };
    assert_eq!(codes.len(), 10);
    let first = codes[0].expose().to_owned();
    assert!(f.lines().iter().all(|l| !l.contains(&first)));

    assert_eq!(
        f.verify("alice", &first.to_uppercase()),
        Response::Allow {
            phone: "a backup code".into()
        }
    );
    assert!(f.last_line().contains("method=backup-code") && f.last_line().contains("9 left"));
    assert_eq!(
        f.verify("alice", &first),
        Response::Deny {
            reason: DenyReason::WrongCode
        }
    );
    let Response::Status(status) = f.service.handle(ALICE, Request::Status { user: None }) else {
        panic!()
    };
    assert_eq!(status.backup_codes_left, 9);
    // A new set replaces the old one.
    let Response::BackupCodes { codes: newer } = f.service.handle(
        0,
        Request::BackupCodes {
            user: Some("alice".into()),
            code: None,
        },
    ) else {
        panic!()
    };
    assert_eq!(
        f.verify("alice", codes[1].expose()),
        Response::Deny {
            reason: DenyReason::WrongCode
        }
    );
    assert_eq!(
        f.verify("alice", newer[1].expose()),
        Response::Allow {
            phone: "a backup code".into()
        }
    );
    // A backup code is no proof for account changes.
    let add = add_as(&f, ALICE, "evil", Some(newer[2].expose()));
    assert!(
        matches!(
            add,
            Response::Error {
                kind: ErrorKind::WrongCode,
                ..
            }
        ),
        "{add:?}"
    );
}

#[test]
fn disabling_follows_the_policy() {
    let f = Fixture::new("disable");
    let secret = f.enroll("alice", "Pixel");
    // Forbidden by default, for users; the store is untouched.
    let refused = f.service.handle(
        ALICE,
        Request::Disable {
            user: None,
            code: None,
        },
    );
    assert!(
        matches!(
            refused,
            Response::Error {
                kind: ErrorKind::Refused,
                ..
            }
        ),
        "{refused:?}"
    );
    assert!(f.last_line().contains("not allowed by the policy"));

    let f = with_policy(
        "disable-allowed",
        Policy {
            user_may_disable: true,
            unenrolled: Unenrolled::Allow,
            ..Policy::default()
        },
    );
    let secret2 = f.enroll("alice", "Pixel");
    let needs = f.service.handle(
        ALICE,
        Request::Disable {
            user: None,
            code: None,
        },
    );
    assert_eq!(kind(&needs), Some(ErrorKind::CodeRequired));
    let proof = code_at(&secret2, f.time());
    assert_eq!(
        f.service.handle(
            ALICE,
            Request::Disable {
                user: None,
                code: Some(proof.as_str().into())
            }
        ),
        Response::Done
    );
    assert_eq!(
        f.service.handle(
            0,
            Request::Begin {
                login: login("alice")
            }
        ),
        Response::Skip { notice: None }
    );
    assert!(
        f.last_line()
            .contains("disabled for this account by the user"),
        "{}",
        f.last_line()
    );
    let Response::Status(status) = f.service.handle(ALICE, Request::Status { user: None }) else {
        panic!()
    };
    assert_eq!(status.disabled.as_deref(), Some("by the user"));
    assert_eq!(
        f.service.handle(ALICE, Request::Enable { user: None }),
        Response::Done
    );
    assert!(matches!(
        f.service.handle(
            0,
            Request::Begin {
                login: login("alice")
            }
        ),
        Response::Challenge { .. }
    ));
    drop(secret);
}

#[test]
fn a_users_disable_stops_counting_when_the_policy_forbids_it() {
    let mut f = with_policy(
        "disable-revoked",
        Policy {
            user_may_disable: true,
            ..Policy::default()
        },
    );
    let secret = f.enroll("alice", "Pixel");
    let proof = code_at(&secret, f.time());
    f.service.handle(
        ALICE,
        Request::Disable {
            user: None,
            code: Some(proof.as_str().into()),
        },
    );
    Arc::get_mut(&mut f.service)
        .unwrap()
        .policy
        .user_may_disable = false;
    assert!(matches!(
        f.service.handle(
            0,
            Request::Begin {
                login: login("alice")
            }
        ),
        Response::Challenge { .. }
    ));
    // Root's word stands whatever the policy, and only root takes it back.
    f.service.handle(
        0,
        Request::Disable {
            user: Some("alice".into()),
            code: None,
        },
    );
    assert_eq!(
        f.service.handle(
            0,
            Request::Begin {
                login: login("alice")
            }
        ),
        Response::Skip { notice: None }
    );
    let enable = f.service.handle(ALICE, Request::Enable { user: None });
    assert_eq!(kind(&enable), Some(ErrorKind::Refused));
}

#[test]
fn root_resets_an_account() {
    let f = Fixture::new("reset");
    f.enroll("alice", "Pixel");
    f.service.handle(
        0,
        Request::EmailSet {
            user: Some("alice".into()),
            address: "a@example.org".into(),
            code: None,
        },
    );
    f.service.handle(
        0,
        Request::BackupCodes {
            user: Some("alice".into()),
            code: None,
        },
    );
    let refused = f.service.handle(
        ALICE,
        Request::Reset {
            user: "alice".into(),
        },
    );
    assert_eq!(kind(&refused), Some(ErrorKind::Refused));
    assert_eq!(
        f.service.handle(
            0,
            Request::Reset {
                user: "alice".into()
            }
        ),
        Response::Done
    );
    let Response::Status(status) = f.service.handle(ALICE, Request::Status { user: None }) else {
        panic!()
    };
    assert!(status.phones.is_empty() && status.email.is_none() && status.backup_codes_left == 0);
    assert!(f.last_line().contains("account reset by root"));
}

#[test]
fn root_can_ask_which_rules_apply() {
    let deadline = (START + 100) as i64;
    let f = with_policy(
        "explain",
        Policy {
            skip_until: Some((deadline, "1 April 2027".into())),
            exempt_groups: vec![("robots".into(), 900)],
            trusted_networks: vec!["10.0.0.0/8".parse().unwrap()],
            ..Policy::default()
        },
    );
    let explain = |user: &str| {
        let Response::Explanation { lines } =
            f.service.handle(0, Request::Explain { user: user.into() })
        else {
            panic!()
        };
        lines.join("\n")
    };
    let alice = explain("alice");
    assert!(alice.contains("exempt: member of robots"), "{alice}");
    assert!(
        alice.contains("logins from 10.0.0.0/8 need no second factor"),
        "{alice}"
    );
    assert!(
        alice.contains("no phone: may log in without one until 1 April 2027"),
        "{alice}"
    );
    f.enroll("bob", "Pixel");
    let bob = explain("bob");
    assert!(
        bob.contains("1 phone(s): asked for a code") && bob.contains("may answer s to skip"),
        "{bob}"
    );
    let refused = f.service.handle(
        ALICE,
        Request::Explain {
            user: "alice".into(),
        },
    );
    assert_eq!(kind(&refused), Some(ErrorKind::Refused));
}

#[test]
fn an_address_alone_enrolls_only_where_the_policy_says_so() {
    let set_address = |f: &Fixture| {
        let set = f.service.handle(
            0,
            Request::EmailSet {
                user: Some("alice".into()),
                address: "alice@example.org".into(),
                code: None,
            },
        );
        assert_eq!(set, Response::Done);
    };
    let begin = |f: &Fixture| {
        f.service.handle(
            0,
            Request::Begin {
                login: login("alice"),
            },
        )
    };

    // Without email_only, the address is a fallback: no phone, not enrolled.
    let f = with_policy("email-only-off", Policy::default());
    set_address(&f);
    assert_eq!(
        begin(&f),
        Response::Deny {
            reason: DenyReason::NotEnrolled
        }
    );

    let f = with_policy(
        "email-only-on",
        Policy {
            email_only: true,
            ..Policy::default()
        },
    );
    set_address(&f);
    assert_eq!(
        begin(&f),
        Response::Challenge {
            phones: vec![],
            email: Some("a****@example.org".into()),
            skip_until: None,
            push: false,
            autopush: false,
        }
    );
    assert!(matches!(f.send_code("alice"), Response::EmailSent { .. }));
    let code = f.mailed_code();
    assert_eq!(
        f.verify("alice", "123456"),
        Response::Deny {
            reason: DenyReason::WrongCode
        }
    );
    assert!(matches!(f.verify("alice", &code), Response::Allow { .. }));

    // The mailbox is the account's factor: adding a phone needs a mailed code.
    let needs = add_as(&f, ALICE, "Pixel", None);
    assert_eq!(kind(&needs), Some(ErrorKind::CodeRequired), "{needs:?}");
    let wrong = add_as(&f, ALICE, "Pixel", Some("00000000"));
    assert_eq!(kind(&wrong), Some(ErrorKind::WrongCode), "{wrong:?}");
    // A login code is no proof for a change; a code mailed for one is.
    assert!(matches!(f.send_code("alice"), Response::EmailSent { .. }));
    let login_code = f.mailed_code();
    let refused = add_as(&f, ALICE, "Pixel", Some(&login_code));
    assert_eq!(kind(&refused), Some(ErrorKind::WrongCode), "{refused:?}");
    let sent = f
        .service
        .handle(ALICE, Request::EmailChangeCode { user: None });
    assert!(matches!(sent, Response::EmailSent { .. }), "{sent:?}");
    let (_, subject, body) = f.outbox.lock().unwrap().last().cloned().unwrap();
    assert!(subject.contains("for a change"), "{subject}");
    assert!(body.contains("It does not log anyone in"), "{body}");
    let code = f.mailed_code();
    let added = add_as(&f, ALICE, "Pixel", Some(&code));
    assert!(matches!(added, Response::PhoneCreated(_)), "{added:?}");

    // Without a way to send mail, an address enrolls nobody.
    let mut f = with_policy(
        "email-only-no-mail",
        Policy {
            email_only: true,
            ..Policy::default()
        },
    );
    set_address(&f);
    Arc::get_mut(&mut f.service).unwrap().mailer = None;
    assert_eq!(
        begin(&f),
        Response::Deny {
            reason: DenyReason::NotEnrolled
        }
    );
}

/// A phone left pending by the user before the address enrolled the
/// account would otherwise become a second factor without any proof.
#[test]
fn a_phone_planted_before_the_address_enrolled_the_account_is_dropped() {
    let f = with_policy(
        "email-only-planted",
        Policy {
            email_only: true,
            ..Policy::default()
        },
    );
    let planted = add_as(&f, ALICE, "sleeper", None);
    let Response::PhoneCreated(phone) = planted else {
        panic!("{planted:?}")
    };
    f.advance(60);
    let set = f.service.handle(
        0,
        Request::EmailSet {
            user: Some("alice".into()),
            address: "alice@example.org".into(),
            code: None,
        },
    );
    assert_eq!(set, Response::Done);
    f.advance(60);
    let code = code_at(phone.secret.expose(), f.time());
    let confirmed = f.service.handle(
        ALICE,
        Request::PhoneConfirm {
            user: None,
            name: "sleeper".into(),
            code: code.as_str().into(),
        },
    );
    assert_eq!(kind(&confirmed), Some(ErrorKind::Refused), "{confirmed:?}");
    assert!(
        f.last_line().contains("pending phone dropped"),
        "{}",
        f.last_line()
    );
    assert_eq!(
        f.verify("alice", &code),
        Response::Deny {
            reason: DenyReason::WrongCode
        }
    );
}
