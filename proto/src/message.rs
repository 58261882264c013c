//! Requests and responses. Secrets travel as [`Secret`], which never prints.

use serde::{Deserialize, Serialize};

use crate::Secret;

/// The version this build speaks. A frame of any other version is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// What the PAM module knows about a login, taken from the PAM items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginContext {
    pub user: String,
    pub service: String,
    #[serde(default)]
    pub rhost: Option<String>,
    #[serde(default)]
    pub tty: Option<String>,
}

/// One call to smartsignd. `user: None` means the caller's own account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// A login has reached the module: which second factor, if any, applies?
    Begin {
        login: LoginContext,
    },
    /// The user chose to skip SmartSign at the login prompt, which the
    /// policy allows until `skip_until`.
    SkipNow {
        login: LoginContext,
    },
    /// The user chose to get a code by email at the login prompt.
    SendEmailCode {
        login: LoginContext,
    },
    /// The user typed a code at the login prompt: from the app or an email.
    VerifyCode {
        login: LoginContext,
        code: Secret,
    },
    /// Sends an approval request to the account's phones. The request lives
    /// as long as this connection: `PushWait` or `PushCancel` follow on it,
    /// and a connection that closes first withdraws the request.
    PushStart {
        login: LoginContext,
    },
    /// The user pressed Enter: wait for the phone's answer, within the
    /// request's time. Only after `PushStart`, on the same connection.
    PushWait,
    /// The user answered otherwise (a code, an email): withdraw the request.
    /// Only after `PushStart`, on the same connection.
    PushCancel,
    /// Sends a test notification to one of the account's phones.
    PhoneTest {
        user: Option<String>,
        name: String,
    },
    Status {
        user: Option<String>,
    },
    /// Create a pending phone with a fresh secret; replaces a pending one of
    /// that name. A caller other than root whose account already has a
    /// phone proves it with a current `code` from one of them.
    PhoneAdd {
        user: Option<String>,
        name: String,
        #[serde(default)]
        code: Option<Secret>,
    },
    /// Confirm a pending phone with the code its app shows now.
    PhoneConfirm {
        user: Option<String>,
        name: String,
        code: Secret,
    },
    PhoneList {
        user: Option<String>,
    },
    /// Remove a phone; `code` as for `PhoneAdd`.
    PhoneRemove {
        user: Option<String>,
        name: String,
        #[serde(default)]
        code: Option<Secret>,
    },
    /// Register an address: mails it a code that `EmailConfirm` takes back.
    /// Root sets it at once. `code` as for `PhoneAdd`.
    EmailSet {
        user: Option<String>,
        address: String,
        #[serde(default)]
        code: Option<Secret>,
    },
    EmailConfirm {
        user: Option<String>,
        code: Secret,
    },
    /// Mails a code that proves a change to an account enrolled by its
    /// address alone (`email_only`); it opens no login.
    EmailChangeCode {
        user: Option<String>,
    },
    /// `code` as for `PhoneAdd`.
    EmailRemove {
        user: Option<String>,
        #[serde(default)]
        code: Option<Secret>,
    },
    /// A new set of backup codes, replacing any earlier one. `code` as for
    /// `PhoneAdd`.
    BackupCodes {
        user: Option<String>,
        #[serde(default)]
        code: Option<Secret>,
    },
    /// Turn SmartSign off for the account (root, or the user where the
    /// policy allows it, with a code as for `PhoneAdd`).
    Disable {
        user: Option<String>,
        #[serde(default)]
        code: Option<Secret>,
    },
    Enable {
        user: Option<String>,
    },
    /// Which rules apply to the account, and why (root only).
    Explain {
        user: String,
    },
    /// Remove phones, address, backup codes and lockout (root only).
    Reset {
        user: String,
    },
    /// Lift a lockout and forget counted failures (root only).
    Unlock {
        user: String,
    },
}

impl Request {
    /// The account the request is about, if it names one.
    pub fn target_user(&self) -> Option<&str> {
        match self {
            Request::Begin { login }
            | Request::SkipNow { login }
            | Request::SendEmailCode { login }
            | Request::VerifyCode { login, .. }
            | Request::PushStart { login } => Some(&login.user),
            Request::PushWait | Request::PushCancel => None,
            Request::Status { user }
            | Request::PhoneAdd { user, .. }
            | Request::PhoneConfirm { user, .. }
            | Request::PhoneList { user }
            | Request::PhoneRemove { user, .. }
            | Request::PhoneTest { user, .. }
            | Request::EmailSet { user, .. }
            | Request::EmailConfirm { user, .. }
            | Request::EmailRemove { user, .. }
            | Request::EmailChangeCode { user }
            | Request::BackupCodes { user, .. }
            | Request::Disable { user, .. }
            | Request::Enable { user } => user.as_deref(),
            Request::Unlock { user } | Request::Reset { user } | Request::Explain { user } => {
                Some(user)
            }
        }
    }

    /// The operation's wire name, for logs.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Begin { .. } => "begin",
            Request::SkipNow { .. } => "skip_now",
            Request::SendEmailCode { .. } => "send_email_code",
            Request::VerifyCode { .. } => "verify_code",
            Request::PushStart { .. } => "push_start",
            Request::PushWait => "push_wait",
            Request::PushCancel => "push_cancel",
            Request::PhoneTest { .. } => "phone_test",
            Request::Status { .. } => "status",
            Request::PhoneAdd { .. } => "phone_add",
            Request::PhoneConfirm { .. } => "phone_confirm",
            Request::PhoneList { .. } => "phone_list",
            Request::PhoneRemove { .. } => "phone_remove",
            Request::EmailSet { .. } => "email_set",
            Request::EmailConfirm { .. } => "email_confirm",
            Request::EmailRemove { .. } => "email_remove",
            Request::EmailChangeCode { .. } => "email_change_code",
            Request::BackupCodes { .. } => "backup_codes",
            Request::Disable { .. } => "disable",
            Request::Enable { .. } => "enable",
            Request::Reset { .. } => "reset",
            Request::Explain { .. } => "explain",
            Request::Unlock { .. } => "unlock",
        }
    }
}

/// A one-line summary for logs; codes never appear in it.
impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "op={}", self.op())?;
        if let Some(user) = self.target_user() {
            write!(f, " user={user:?}")?;
        }
        match self {
            Request::Begin { login }
            | Request::SkipNow { login }
            | Request::SendEmailCode { login }
            | Request::VerifyCode { login, .. }
            | Request::PushStart { login } => {
                write!(f, " service={:?}", login.service)?;
            }
            Request::PhoneAdd { name, .. }
            | Request::PhoneConfirm { name, .. }
            | Request::PhoneRemove { name, .. }
            | Request::PhoneTest { name, .. } => write!(f, " phone={name:?}")?,
            Request::PushWait
            | Request::PushCancel
            | Request::Status { .. }
            | Request::PhoneList { .. }
            | Request::EmailSet { .. }
            | Request::EmailConfirm { .. }
            | Request::EmailRemove { .. }
            | Request::EmailChangeCode { .. }
            | Request::BackupCodes { .. }
            | Request::Disable { .. }
            | Request::Enable { .. }
            | Request::Reset { .. }
            | Request::Explain { .. }
            | Request::Unlock { .. } => {}
        }
        Ok(())
    }
}

/// Why a code was not accepted at login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    WrongCode,
    ReusedCode,
    MalformedCode,
    /// An emailed code past its time.
    ExpiredCode,
    /// No phone, and the policy requires one.
    NotEnrolled,
    /// The user asked to skip after the deadline.
    SkipOver,
    /// A decoy number was tapped on the phone.
    WrongNumber,
    /// The phone gave no answer within the push's time.
    NoAnswer,
    /// The push request was withdrawn or ended before its answer came.
    PushEnded,
}

impl DenyReason {
    /// The words for the audit log and for the user.
    pub fn describe(self) -> &'static str {
        match self {
            DenyReason::WrongCode => "wrong code",
            DenyReason::ReusedCode => "code already used",
            DenyReason::MalformedCode => "that is not a code",
            DenyReason::ExpiredCode => "that emailed code has expired",
            DenyReason::SkipOver => "skipping SmartSign is no longer allowed",
            DenyReason::WrongNumber => "the wrong number was tapped on the phone",
            DenyReason::NoAnswer => "no answer from the phone in time",
            DenyReason::PushEnded => "the push request has ended",
            DenyReason::NotEnrolled => {
                "no phone is enrolled for this account, and this host requires one; \
                 ask your administrator"
            }
        }
    }
}

/// Why a request failed. The CLI maps each kind to its own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The caller may not act on that account.
    Refused,
    NotFound,
    AlreadyExists,
    WrongCode,
    /// The account has a phone: the change needs a current code from one.
    CodeRequired,
    /// No mail could be sent (no address, no [email] settings, the server
    /// refused or did not answer).
    MailFailed,
    /// Too many mails in the last hour, or too many pushes.
    TooMany,
    /// No push could be sent (not set up, or the relay refused or did not
    /// answer).
    PushFailed,
    /// The request itself is unusable: bad name, bad field, bad frame.
    BadRequest,
    UnsupportedVersion,
    /// The daemon failed (store unreadable, and so on); see its log.
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhoneInfo {
    pub name: String,
    /// Only confirmed phones count at login.
    pub confirmed: bool,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds of the last login with this phone's code or tap.
    pub last_used: Option<u64>,
    /// Set up for push: it has a topic the ntfy app follows.
    #[serde(default)]
    pub push: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountStatus {
    pub user: String,
    pub phones: Vec<PhoneInfo>,
    /// Failed codes within the lockout window.
    pub recent_failures: u32,
    pub max_failures: u32,
    /// Unix seconds until which logins are refused, if locked out.
    pub locked_until: Option<u64>,
    /// The confirmed address emergency codes go to.
    #[serde(default)]
    pub email: Option<String>,
    /// An address waiting for its confirmation code.
    #[serde(default)]
    pub email_pending: Option<String>,
    /// Unused backup codes.
    #[serde(default)]
    pub backup_codes_left: u32,
    /// Turned off: "by root" or "by the user".
    #[serde(default)]
    pub disabled: Option<String>,
}

/// Shown once, to the enrolling user: the only time the secret leaves the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewPhone {
    pub name: String,
    pub secret: Secret,
    pub otpauth_uri: Secret,
    /// The ntfy subscription (server URL and topic) for push, when the
    /// daemon has `[push]`. Whoever reads it can approve logins.
    #[serde(default)]
    pub push_url: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// The user is enrolled: ask for a code. Lists the confirmed phones,
    /// and the masked address when an emailed code may be asked for.
    Challenge {
        phones: Vec<String>,
        #[serde(default)]
        email: Option<String>,
        /// Set while the policy lets the user skip SmartSign: until when.
        #[serde(default)]
        skip_until: Option<String>,
        /// The phones can be asked to approve the login (`PushStart`).
        #[serde(default)]
        push: bool,
        /// Push without asking first (a greeter's service, for example).
        #[serde(default)]
        autopush: bool,
    },
    /// The approval request went out: the login shows `number`, which the
    /// phone must tap; the request ends at `expires` (Unix seconds).
    PushSent {
        number: u8,
        phones: Vec<String>,
        expires: u64,
    },
    /// A code is on its way to the (masked) address; good until `expires`.
    EmailSent {
        to: String,
        expires: u64,
    },
    /// No confirmed phone: SmartSign has nothing to ask.
    NotEnrolled,
    /// Policy lets this login through without a second factor (a trusted
    /// network, an exempt group, the grace period); `notice` is for the user.
    Skip {
        #[serde(default)]
        notice: Option<String>,
    },
    Allow {
        phone: String,
    },
    Deny {
        reason: DenyReason,
    },
    /// Too many failures; logins are refused until `until` (Unix seconds).
    LockedOut {
        until: u64,
    },
    Status(AccountStatus),
    PhoneCreated(NewPhone),
    Phones {
        phones: Vec<PhoneInfo>,
    },
    /// Lines that say which rules apply to an account.
    Explanation {
        lines: Vec<String>,
    },
    /// Shown once: the only time these codes leave the daemon.
    BackupCodes {
        codes: Vec<Secret>,
    },
    Done,
    Error {
        kind: ErrorKind,
        message: String,
    },
}

impl Response {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Response::Error {
            kind,
            message: message.into(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RequestFrame {
    pub v: u32,
    pub request: Request,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub v: u32,
    pub response: Response,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login() -> LoginContext {
        LoginContext {
            user: "alice".into(),
            service: "sshd".into(),
            rhost: Some("192.0.2.7".into()),
            tty: Some("ssh".into()),
        }
    }

    #[test]
    fn no_code_or_secret_in_display_or_debug() {
        let requests = [
            Request::VerifyCode {
                login: login(),
                code: "493817".into(),
            },
            Request::PhoneConfirm {
                user: None,
                name: "Pixel".into(),
                code: "493817".into(),
            },
            Request::PhoneAdd {
                user: None,
                name: "Pixel".into(),
                code: Some("493817".into()),
            },
        ];
        for request in &requests {
            assert!(!request.to_string().contains("493817"), "{request}");
            assert!(!format!("{request:?}").contains("493817"));
        }
        let created = Response::PhoneCreated(NewPhone {
            name: "Pixel".into(),
            secret: "JBSWY3DPEHPK3PXP".into(),
            otpauth_uri: "otpauth://totp/x?secret=JBSWY3DPEHPK3PXP".into(),
            push_url: Some("https://ntfy.sh/smartsign-0123".into()),
        });
        assert!(!format!("{created:?}").contains("JBSWY3DPEHPK3PXP"));
    }

    /// Frames of protocol version 1 as they travel. A module and a daemon of
    /// different builds must keep understanding these.
    #[test]
    fn version_1_frames_parse() {
        let begin = r#"{"v":1,"request":{"op":"begin","login":{"user":"alice","service":"sshd","rhost":"192.0.2.7","tty":"ssh"}}}"#;
        let frame: RequestFrame = serde_json::from_str(begin).unwrap();
        assert_eq!(frame.v, 1);
        assert_eq!(frame.request, Request::Begin { login: login() });

        let verify = r#"{"v":1,"request":{"op":"verify_code","login":{"user":"alice","service":"sshd"},"code":"123456"}}"#;
        let frame: RequestFrame = serde_json::from_str(verify).unwrap();
        match frame.request {
            Request::VerifyCode { login, code } => {
                assert_eq!(login.rhost, None);
                assert_eq!(code.expose(), "123456");
            }
            other => panic!("unexpected {other:?}"),
        }

        let add = r#"{"v":1,"request":{"op":"phone_add","user":null,"name":"Pixel 8"}}"#;
        let frame: RequestFrame = serde_json::from_str(add).unwrap();
        assert_eq!(
            frame.request,
            Request::PhoneAdd {
                user: None,
                name: "Pixel 8".into(),
                code: None
            }
        );

        let allow = r#"{"v":1,"response":{"result":"allow","phone":"Pixel 8"}}"#;
        let frame: ResponseFrame = serde_json::from_str(allow).unwrap();
        assert_eq!(
            frame.response,
            Response::Allow {
                phone: "Pixel 8".into()
            }
        );

        let locked = r#"{"v":1,"response":{"result":"locked_out","until":1800000000}}"#;
        let frame: ResponseFrame = serde_json::from_str(locked).unwrap();
        assert_eq!(
            frame.response,
            Response::LockedOut {
                until: 1_800_000_000
            }
        );

        // What a module and a daemon of different builds still understand:
        // the push fields added later have defaults.
        let old_challenge = r#"{"v":1,"response":{"result":"challenge","phones":["Pixel 8"]}}"#;
        let frame: ResponseFrame = serde_json::from_str(old_challenge).unwrap();
        assert_eq!(
            frame.response,
            Response::Challenge {
                phones: vec!["Pixel 8".into()],
                email: None,
                skip_until: None,
                push: false,
                autopush: false,
            }
        );
        let start =
            r#"{"v":1,"request":{"op":"push_start","login":{"user":"alice","service":"sshd"}}}"#;
        let frame: RequestFrame = serde_json::from_str(start).unwrap();
        assert!(matches!(frame.request, Request::PushStart { .. }));
        for (text, op) in [
            (r#"{"v":1,"request":{"op":"push_wait"}}"#, "push_wait"),
            (r#"{"v":1,"request":{"op":"push_cancel"}}"#, "push_cancel"),
        ] {
            let frame: RequestFrame = serde_json::from_str(text).unwrap();
            assert_eq!(frame.request.op(), op);
        }
        let sent = r#"{"v":1,"response":{"result":"push_sent","number":47,
            "phones":["Pixel 8"],"expires":1800000060}}"#;
        let frame: ResponseFrame = serde_json::from_str(sent).unwrap();
        assert_eq!(
            frame.response,
            Response::PushSent {
                number: 47,
                phones: vec!["Pixel 8".into()],
                expires: 1_800_000_060
            }
        );
        let phone = r#"{"name":"Pixel 8","confirmed":true,"created":1,"last_used":null}"#;
        let phone: PhoneInfo = serde_json::from_str(phone).unwrap();
        assert!(!phone.push);

        let deny = r#"{"v":1,"response":{"result":"deny","reason":"reused_code"}}"#;
        let frame: ResponseFrame = serde_json::from_str(deny).unwrap();
        assert_eq!(
            frame.response,
            Response::Deny {
                reason: DenyReason::ReusedCode
            }
        );
    }
}
