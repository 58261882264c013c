//! What smartsignd does with a request, once the peer's uid is known.
//!
//! Authorization is by uid alone: root may act for any account, any other
//! uid only for its own. Every refusal and every decision is audited.
//! Logins are here; account management is in `account`, email in `email`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use smartsign_proto::{DenyReason, ErrorKind, LoginContext, PhoneInfo, Request, Response, Secret};

use crate::audit::{AuditEvent, AuditSink, Method, Outcome};
use crate::backup;
use crate::config::Config;
use crate::mail::MailSink;
use crate::names;
use crate::policy::{Decision, Facts, Policy};
use crate::store::{PhoneRecord, Store, StoreError};
use crate::totp::{self, CodeMatch};

/// How many phones one account may hold, confirmed and pending.
pub const MAX_PHONES: usize = 20;

/// Account lookups, through NSS in production (so LDAP and SSSD users work).
pub trait Accounts: Send + Sync {
    fn uid_of(&self, user: &str) -> Option<u32>;
    fn name_of(&self, uid: u32) -> Option<String>;
    /// Every gid the user belongs to, primary and supplementary; `None`
    /// when the account or its groups cannot be looked up.
    fn gids_of(&self, user: &str) -> Option<Vec<u32>>;
}

/// NSS with a short memory: a login asks it several times, and LDAP, SSSD
/// or systemd-userdb may each take milliseconds, more for names they do not
/// know. An answer is reused for [`Nss::TTL`], so a change to an account or
/// its groups counts within that time.
#[derive(Default)]
pub struct Nss {
    cache: Mutex<NssCache>,
}

#[derive(Default)]
struct NssCache {
    uids: HashMap<String, (std::time::Instant, Option<u32>)>,
    names: HashMap<u32, (std::time::Instant, Option<String>)>,
    gids: HashMap<String, (std::time::Instant, Option<Vec<u32>>)>,
}

impl Nss {
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(10);
    /// Entries per table; a full table starts again empty.
    const MAX_ENTRIES: usize = 50_000;

    fn cached<K, V>(
        &self,
        table: impl Fn(&mut NssCache) -> &mut HashMap<K, (std::time::Instant, V)>,
        key: K,
        look_up: impl FnOnce() -> V,
    ) -> V
    where
        K: std::hash::Hash + Eq,
        V: Clone,
    {
        let now = std::time::Instant::now();
        {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((at, value)) = table(&mut cache).get(&key)
                && now.duration_since(*at) < Self::TTL
            {
                return value.clone();
            }
        }
        // Looked up without the lock: a slow directory delays one login.
        let value = look_up();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let entries = table(&mut cache);
        if entries.len() >= Self::MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key, (now, value.clone()));
        value
    }
}

impl Accounts for Nss {
    fn uid_of(&self, user: &str) -> Option<u32> {
        self.cached(
            |c| &mut c.uids,
            user.to_owned(),
            || {
                nix::unistd::User::from_name(user)
                    .ok()
                    .flatten()
                    .map(|u| u.uid.as_raw())
            },
        )
    }

    fn name_of(&self, uid: u32) -> Option<String> {
        self.cached(
            |c| &mut c.names,
            uid,
            || {
                nix::unistd::User::from_uid(uid.into())
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            },
        )
    }

    fn gids_of(&self, user: &str) -> Option<Vec<u32>> {
        self.cached(
            |c| &mut c.gids,
            user.to_owned(),
            || {
                let entry = nix::unistd::User::from_name(user).ok().flatten()?;
                let name = std::ffi::CString::new(user).ok()?;
                let gids = nix::unistd::getgrouplist(&name, entry.gid).ok()?;
                Some(gids.into_iter().map(|g| g.as_raw()).collect())
            },
        )
    }
}

pub type Clock = Box<dyn Fn() -> u64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Box::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

pub struct Service {
    pub config: Config,
    /// `[policy]`, resolved at start.
    pub policy: Policy,
    pub store: Box<dyn Store>,
    pub audit: Box<dyn AuditSink>,
    pub accounts: Box<dyn Accounts>,
    pub clock: Clock,
    /// For the account name in otpauth URIs (`alice@web-3`).
    pub hostname: String,
    /// Sends emergency codes; `None` without an `[email]` table.
    pub mailer: Option<Arc<dyn MailSink>>,
    /// Approval on the phone; `None` without a `[push]` table.
    pub push: Option<PushSetup>,
    /// Requests on one account run one at a time (striped by name).
    accounts_busy: [Mutex<()>; ACCOUNT_STRIPES],
    stripe_keys: std::collections::hash_map::RandomState,
}

const ACCOUNT_STRIPES: usize = 64;

/// Whether a check is for a login, which the policy may exempt (judged
/// with the user's groups), or for a proof of an account change, which it
/// may not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Apply<'a> {
    Policy { gids: Option<&'a [u32]> },
    EnrollmentOnly,
}

/// Which codes an answer may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codes {
    AppOrEmail,
    AppOnly,
}

/// A failed request: the answer, and what the audit line says.
struct Refusal {
    kind: ErrorKind,
    message: String,
    audit: Option<(Outcome, String)>,
}

impl Refusal {
    fn quiet(kind: ErrorKind, message: impl Into<String>) -> Self {
        Refusal {
            kind,
            message: message.into(),
            audit: None,
        }
    }
}

impl From<StoreError> for Refusal {
    fn from(err: StoreError) -> Self {
        crate::say!("{err}");
        Refusal {
            kind: ErrorKind::Internal,
            message: "the SmartSign store failed; see the daemon's log".into(),
            audit: Some((Outcome::Deny, format!("store error: {err}"))),
        }
    }
}

impl Service {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        policy: Policy,
        store: Box<dyn Store>,
        audit: Box<dyn AuditSink>,
        accounts: Box<dyn Accounts>,
        clock: Clock,
        hostname: String,
        mailer: Option<Arc<dyn MailSink>>,
    ) -> Service {
        Service {
            config,
            policy,
            store,
            audit,
            accounts,
            clock,
            hostname,
            mailer,
            push: None,
            accounts_busy: std::array::from_fn(|_| Mutex::new(())),
            stripe_keys: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Turns push on.
    pub fn with_push(mut self, push: PushSetup) -> Service {
        self.push = Some(push);
        self
    }

    pub fn handle(&self, peer_uid: u32, request: Request) -> Response {
        self.handle_while(peer_uid, request, &|| true)
    }

    /// Like [`Service::handle`]; `wanted` says whether the caller still
    /// waits for the answer. It is asked once the account's turn has come:
    /// a login that gave up meanwhile must not spend a code or count a
    /// failure.
    pub fn handle_while(
        &self,
        peer_uid: u32,
        request: Request,
        wanted: &dyn Fn() -> bool,
    ) -> Response {
        let login = match &request {
            Request::Begin { login }
            | Request::SkipNow { login }
            | Request::SendEmailCode { login }
            | Request::VerifyCode { login, .. }
            | Request::PushStart { login } => Some(login.clone()),
            _ => None,
        };
        let op = request.op();
        let (user, result) = match self.authorize(peer_uid, &request) {
            Ok(user) => (user.clone(), self.dispatch(peer_uid, user, request, wanted)),
            Err(refusal) => (
                request.target_user().unwrap_or("-").to_owned(),
                Err(refusal),
            ),
        };
        match result {
            Ok(response) => response,
            Err(refusal) => self.answer_refusal(peer_uid, user, login, op, refusal),
        }
    }

    /// A request refused before it reached the account (see `authorize`).
    fn refused(&self, peer_uid: u32, request: &Request, refusal: Refusal) -> Response {
        let login = match request {
            Request::Begin { login }
            | Request::SkipNow { login }
            | Request::SendEmailCode { login }
            | Request::VerifyCode { login, .. }
            | Request::PushStart { login } => Some(login.clone()),
            _ => None,
        };
        let user = request.target_user().unwrap_or("-").to_owned();
        self.answer_refusal(peer_uid, user, login, request.op(), refusal)
    }

    /// The error answer for a refusal, audited when it asks to be.
    fn answer_refusal(
        &self,
        peer_uid: u32,
        user: String,
        login: Option<LoginContext>,
        op: &str,
        refusal: Refusal,
    ) -> Response {
        if let Some((result, reason)) = refusal.audit {
            let method = match op {
                "push_start" => Method::Push,
                "send_email_code" => Method::EmailCode,
                _ if login.is_some() => Method::AppCode,
                _ => Method::Manage,
            };
            let login = login.unwrap_or_else(|| LoginContext {
                user: String::new(),
                service: "smartsign".into(),
                rhost: None,
                tty: None,
            });
            self.audit(AuditEvent {
                user,
                service: login.service,
                rhost: login.rhost,
                tty: login.tty,
                method,
                phone: None,
                result,
                reason: format!("{op}: {reason}"),
                peer_uid: Some(peer_uid),
            });
        }
        Response::Error {
            kind: refusal.kind,
            message: refusal.message,
        }
    }

    /// Carries out an authorized request on `user`, the account's canonical
    /// name. One request at a time per account: a check and the change it
    /// allows (the lockout and the failure it counts, the proof for a phone
    /// and adding it) cannot be split by a concurrent request.
    fn dispatch(
        &self,
        peer_uid: u32,
        user: String,
        request: Request,
        wanted: &dyn Fn() -> bool,
    ) -> Result<Response, Refusal> {
        let gone = || {
            crate::say!("uid {peer_uid} left before its turn on {user} came; dropped");
            Err(Refusal::quiet(ErrorKind::Internal, "the caller left"))
        };
        // These hold the account only while they read and write the store,
        // not while a mail server takes its time.
        if matches!(
            request,
            Request::SendEmailCode { .. }
                | Request::EmailSet { .. }
                | Request::EmailChangeCode { .. }
        ) && !wanted()
        {
            return gone();
        }
        let request = match request {
            Request::SendEmailCode { login } => {
                let gids = self.login_gids(&login.user, &user);
                return self.send_login_code(
                    peer_uid,
                    &LoginContext { user, ..login },
                    gids.as_deref(),
                );
            }
            Request::EmailSet { address, code, .. } => {
                return self.email_set(peer_uid, &user, &address, code.as_ref());
            }
            Request::EmailChangeCode { .. } => return self.send_change_code(peer_uid, &user),
            other => other,
        };
        // Groups come from NSS, which may be slow: looked up before the
        // account is held.
        let gids = match &request {
            Request::Begin { login }
            | Request::SkipNow { login }
            | Request::VerifyCode { login, .. } => self.login_gids(&login.user, &user),
            _ => None,
        };
        let _one_at_a_time = self.account_lock(&user);
        if !wanted() {
            return gone();
        }
        match request {
            Request::Begin { login } => {
                self.begin(peer_uid, &LoginContext { user, ..login }, gids.as_deref())
            }
            Request::SkipNow { login } => {
                self.skip_now(peer_uid, &LoginContext { user, ..login }, gids.as_deref())
            }
            // Both went their own way above.
            Request::SendEmailCode { .. }
            | Request::EmailSet { .. }
            | Request::EmailChangeCode { .. } => Err(Refusal::quiet(
                ErrorKind::Internal,
                "mail requests are not served here",
            )),
            Request::VerifyCode { login, code } => self.verify(
                peer_uid,
                &LoginContext { user, ..login },
                &code,
                gids.as_deref(),
            ),
            Request::Status { .. } => self.status(&user),
            Request::PhoneAdd { name, code, .. } => {
                self.phone_add(peer_uid, &user, &name, code.as_ref())
            }
            Request::PhoneConfirm { name, code, .. } => {
                self.phone_confirm(peer_uid, &user, &name, &code)
            }
            Request::PhoneList { .. } => self.phone_list(&user),
            Request::PhoneRemove { name, code, .. } => {
                self.phone_remove(peer_uid, &user, &name, code.as_ref())
            }
            Request::EmailConfirm { code, .. } => self.email_confirm(peer_uid, &user, &code),
            Request::EmailRemove { code, .. } => self.email_remove(peer_uid, &user, code.as_ref()),
            Request::BackupCodes { code, .. } => self.backup_codes(peer_uid, &user, code.as_ref()),
            Request::Disable { code, .. } => self.disable(peer_uid, &user, code.as_ref()),
            Request::Enable { .. } => self.enable(peer_uid, &user),
            Request::Reset { .. } => self.reset(peer_uid, &user),
            Request::Explain { .. } => self.explain(&user),
            Request::Unlock { .. } => self.unlock(peer_uid, &user),
            Request::PhoneTest { name, .. } => {
                drop(_one_at_a_time);
                self.phone_test(peer_uid, &user, &name)
            }
            Request::PushStart { .. } | Request::PushWait | Request::PushCancel => {
                Err(Refusal::quiet(
                    ErrorKind::BadRequest,
                    "push requests are served on a connection of their own",
                ))
            }
        }
    }

    /// The account the request acts on, if this peer may act on it.
    fn authorize(&self, peer_uid: u32, request: &Request) -> Result<String, Refusal> {
        let user = match request.target_user() {
            Some(user) => user.to_owned(),
            None => self.accounts.name_of(peer_uid).ok_or_else(|| {
                Refusal::quiet(
                    ErrorKind::NotFound,
                    format!("uid {peer_uid} has no user name"),
                )
            })?,
        };
        if let Err(why) = names::check_user(&user) {
            return Err(Refusal {
                kind: ErrorKind::BadRequest,
                message: format!("invalid user name: {why}"),
                audit: Some((Outcome::Refused, format!("invalid user name: {why}"))),
            });
        }
        let is_login = matches!(
            request,
            Request::Begin { .. }
                | Request::SkipNow { .. }
                | Request::SendEmailCode { .. }
                | Request::VerifyCode { .. }
                | Request::PushStart { .. }
        );
        if let Request::Begin { login }
        | Request::SkipNow { login }
        | Request::SendEmailCode { login }
        | Request::VerifyCode { login, .. }
        | Request::PushStart { login } = request
        {
            check_login_fields(login)?;
        }

        // One account, one enrollment, whatever name it was reached by: an
        // alias sharing the uid, or "Alice" and "alice@example.org" for
        // "alice" under SSSD, all become the first name NSS gives that uid.
        let target_uid = self.accounts.uid_of(&user);
        let user = target_uid
            .and_then(|uid| self.accounts.name_of(uid))
            .unwrap_or(user);
        let root_only = matches!(
            request,
            Request::Unlock { .. } | Request::Reset { .. } | Request::Explain { .. }
        );
        if root_only && peer_uid != 0 {
            // Otherwise a lockout would be one command away from lifting itself.
            return Err(Refusal {
                kind: ErrorKind::Refused,
                message: format!("only root may {} an account", request.op()),
                audit: Some((
                    Outcome::Refused,
                    format!("{} asked by a user", request.op()),
                )),
            });
        }
        if peer_uid == 0 {
            // Root may name any account; managing one needs it to exist.
            if target_uid.is_none() && !is_login {
                return Err(Refusal::quiet(
                    ErrorKind::NotFound,
                    format!("no such user: {user}"),
                ));
            }
            return Ok(user);
        }
        if target_uid == Some(peer_uid) {
            return Ok(user);
        }
        Err(Refusal {
            kind: ErrorKind::Refused,
            message: format!(
                "{} may only act on its own account, not on {user}",
                self.describe_uid(peer_uid)
            ),
            audit: Some((Outcome::Refused, "not the caller's own account".into())),
        })
    }

    fn account_lock(&self, user: &str) -> std::sync::MutexGuard<'_, ()> {
        use std::hash::BuildHasher;

        // Keyed at random per daemon, so no user can pick a name that
        // shares another account's stripe.
        let hash = self.stripe_keys.hash_one(user);
        let stripe = &self.accounts_busy[hash as usize % ACCOUNT_STRIPES];
        stripe.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The groups of the name that logged in and of the account's first
    /// name together: an alias may be listed in groups of its own.
    /// `None` when neither can be looked up.
    fn login_gids(&self, typed: &str, canonical: &str) -> Option<Vec<u32>> {
        let mut gids = self.accounts.gids_of(canonical);
        if typed != canonical
            && let Some(more) = self.accounts.gids_of(typed)
        {
            let all = gids.get_or_insert_with(Vec::new);
            all.extend(more);
            all.sort_unstable();
            all.dedup();
        }
        gids
    }

    fn describe_uid(&self, uid: u32) -> String {
        match self.accounts.name_of(uid) {
            Some(name) => format!("uid {uid} ({name})"),
            None => format!("uid {uid}"),
        }
    }

    /// A change to an account that already has a phone, asked by its user
    /// rather than by root, needs a current code from one of its phones:
    /// a session and a password alone must not add or drop a second factor.
    /// The code is checked as at login: used once, counted, locked out.
    fn require_code(
        &self,
        peer_uid: u32,
        user: &str,
        code: Option<&Secret>,
    ) -> Result<(), Refusal> {
        if peer_uid == 0 {
            return Ok(());
        }
        if confirmed(self.store.phones(user)?).is_empty() {
            return self.require_emailed_code(peer_uid, user, code);
        }
        let Some(code) = code else {
            return Err(Refusal::quiet(
                ErrorKind::CodeRequired,
                "this change needs the current code from one of the account's enrolled phones",
            ));
        };
        let login = manage_login(user);
        // Only a phone proves a phone: an emailed code is a one-time
        // fallback, and whoever reads the mailbox must not gain a phone by it.
        match self.verify_codes(
            peer_uid,
            &login,
            code,
            Codes::AppOnly,
            Apply::EnrollmentOnly,
        )? {
            Response::Allow { .. } | Response::NotEnrolled => Ok(()),
            Response::LockedOut { until } => Err(locked_refusal(user, until)),
            Response::Deny { reason } => Err(Refusal::quiet(
                ErrorKind::WrongCode,
                format!("{} (from one of your enrolled phones)", reason.describe()),
            )),
            other => Err(Refusal::quiet(
                ErrorKind::Internal,
                format!("unexpected {other:?}"),
            )),
        }
    }

    /// With `email_only`, a confirmed address alone enrolls an account
    /// (when mail can be sent at all).
    fn email_only_enrolled(&self, user: &str) -> Result<bool, Refusal> {
        Ok(self.policy.email_only && self.mailer.is_some() && self.store.email(user)?.is_some())
    }

    /// For an account enrolled by its address alone, the proof of a change
    /// is a code mailed to it (`smartsign email send-code`); an account
    /// with neither needs none.
    fn require_emailed_code(
        &self,
        peer_uid: u32,
        user: &str,
        code: Option<&Secret>,
    ) -> Result<(), Refusal> {
        if !self.email_only_enrolled(user)? {
            return Ok(());
        }
        let Some(code) = code else {
            return Err(Refusal::quiet(
                ErrorKind::CodeRequired,
                "this change needs a code mailed to the account's address: \
                 get one with `smartsign email send-code`",
            ));
        };
        let now = (self.clock)();
        if let Some(until) = self.store.locked_until(user, now)? {
            return Err(locked_refusal(user, until));
        }
        let login = manage_login(user);
        // Only a code mailed for a change: a login code opens a login, and
        // the mail that carried it said so, not that it adds a phone.
        let Some(reason) = self.take_change_code(user, &normalize(code.expose()), now)? else {
            if let Err(err) = self.store.clear_failures(user) {
                crate::say!("clearing failures of {user}: {err}");
            }
            self.audit_manage(peer_uid, user, None, "change proven with a mailed code");
            return Ok(());
        };
        match self.refuse_code(peer_uid, &login, Method::EmailCode, reason, now)? {
            Response::LockedOut { until } => Err(locked_refusal(user, until)),
            _ => Err(Refusal::quiet(
                ErrorKind::WrongCode,
                format!("{} (the code mailed for this change)", reason.describe()),
            )),
        }
    }

    fn begin(
        &self,
        peer_uid: u32,
        login: &LoginContext,
        gids: Option<&[u32]>,
    ) -> Result<Response, Refusal> {
        match self.phones_to_ask(peer_uid, login, Method::None, Apply::Policy { gids })? {
            Ok(phones) => Ok(Response::Challenge {
                phones: phones.iter().map(|p| p.name.clone()).collect(),
                email: self.email_offer(&login.user)?,
                skip_until: self
                    .policy
                    .skip_allowed((self.clock)() as i64)
                    .map(str::to_owned),
                push: self.push.is_some() && phones.iter().any(|p| p.push_topic.is_some()),
                autopush: self
                    .push
                    .as_ref()
                    .is_some_and(|setup| setup.config.autopush.contains(&login.service)),
            }),
            Err(answer) => Ok(answer),
        }
    }

    /// An enrolled user skipping SmartSign at the prompt, while the policy
    /// still allows it.
    fn skip_now(
        &self,
        peer_uid: u32,
        login: &LoginContext,
        gids: Option<&[u32]>,
    ) -> Result<Response, Refusal> {
        let apply = Apply::Policy { gids };
        if let Err(answer) = self.phones_to_ask(peer_uid, login, Method::None, apply)? {
            return Ok(answer);
        }
        let now = (self.clock)() as i64;
        match self.policy.skip_allowed(now) {
            Some(deadline) => {
                let why = format!("skipped by the user; allowed until {deadline}");
                self.audit_login(login, peer_uid, Method::None, None, Outcome::Ignore, &why);
                Ok(Response::Skip { notice: None })
            }
            None => {
                let why = "asked to skip after the deadline";
                self.audit_login(login, peer_uid, Method::None, None, Outcome::Deny, why);
                Ok(Response::Deny {
                    reason: DenyReason::SkipOver,
                })
            }
        }
    }

    /// The confirmed phones a login may use, or the answer that ends it
    /// first (not enrolled, locked out), audited.
    fn phones_to_ask(
        &self,
        peer_uid: u32,
        login: &LoginContext,
        method: Method,
        policy: Apply<'_>,
    ) -> Result<Result<Vec<PhoneRecord>, Response>, Refusal> {
        let now = (self.clock)();
        let phones = confirmed(self.store.phones(&login.user)?);
        if let Apply::Policy { gids } = policy {
            let enrolled = !phones.is_empty() || self.email_only_enrolled(&login.user)?;
            let facts = Facts {
                now: now as i64,
                rhost: login.rhost.as_deref(),
                gids,
                enrolled,
            };
            let skip = |why: &str, answer: Response| {
                self.audit_login(login, peer_uid, Method::None, None, Outcome::Ignore, why);
                Ok(Err(answer))
            };
            // A user's own "disable" counts only while the policy allows it.
            if let Some(by_root) = self.store.disabled(&login.user)?
                && (by_root || self.policy.user_may_disable)
            {
                let by = if by_root { "root" } else { "the user" };
                let why = format!("SmartSign disabled for this account by {by}");
                self.audit_login(login, peer_uid, Method::None, None, Outcome::Ignore, &why);
                return Ok(Err(Response::Skip { notice: None }));
            }
            match self.policy.decide(&facts) {
                Decision::Ask => {}
                Decision::Exempt(why) => return skip(&why, Response::Skip { notice: None }),
                Decision::Grace { deadline } => {
                    let notice = format!(
                        "SmartSign becomes required on {deadline}; enroll with: smartsign phone add NAME"
                    );
                    let why = format!("not enrolled; allowed until {deadline}");
                    return skip(
                        &why,
                        Response::Skip {
                            notice: Some(notice),
                        },
                    );
                }
                Decision::UnenrolledAllowed => return skip("not enrolled", Response::NotEnrolled),
                Decision::UnenrolledDenied => {
                    let why = "not enrolled, and the policy requires SmartSign";
                    self.audit_login(login, peer_uid, Method::None, None, Outcome::Deny, why);
                    return Ok(Err(Response::Deny {
                        reason: DenyReason::NotEnrolled,
                    }));
                }
            }
        } else if phones.is_empty() {
            self.audit_login(
                login,
                peer_uid,
                method,
                None,
                Outcome::Ignore,
                "not enrolled",
            );
            return Ok(Err(Response::NotEnrolled));
        }
        if let Some(until) = self.store.locked_until(&login.user, now)? {
            self.audit_login(login, peer_uid, method, None, Outcome::Deny, "locked out");
            return Ok(Err(Response::LockedOut { until }));
        }
        Ok(Ok(phones))
    }

    /// A code typed at the login prompt: from the app, or (8 digits) emailed.
    fn verify(
        &self,
        peer_uid: u32,
        login: &LoginContext,
        code: &Secret,
        gids: Option<&[u32]>,
    ) -> Result<Response, Refusal> {
        self.verify_codes(
            peer_uid,
            login,
            code,
            Codes::AppOrEmail,
            Apply::Policy { gids },
        )
    }

    fn verify_codes(
        &self,
        peer_uid: u32,
        login: &LoginContext,
        code: &Secret,
        codes: Codes,
        policy: Apply<'_>,
    ) -> Result<Response, Refusal> {
        let now = (self.clock)();
        let phones = match self.phones_to_ask(peer_uid, login, Method::AppCode, policy)? {
            Ok(phones) => phones,
            Err(answer) => return Ok(answer),
        };

        let code = normalize(code.expose());
        if codes == Codes::AppOrEmail
            && let Some(backup) = backup::normalize(&code)
        {
            return self.verify_backup_code(peer_uid, login, &backup, now);
        }
        let emailed = code.len() == email::DIGITS && code.bytes().all(|b| b.is_ascii_digit());
        if emailed && codes == Codes::AppOrEmail {
            return self.verify_email_code(peer_uid, login, &code, now);
        }
        let reason = if code.len() != totp::DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
            DenyReason::MalformedCode
        } else {
            let skew = self.config.totp.skew;
            let mut reason = DenyReason::WrongCode;
            for phone in &phones {
                match totp::check(&phone.secret, &code, now, skew, phone.last_step) {
                    CodeMatch::Fresh(step) => {
                        if self.store.claim_step(phone.id, step, now)? {
                            if let Err(err) = self.store.clear_failures(&login.user) {
                                crate::say!("clearing failures of {}: {err}", login.user);
                            }
                            self.audit_login(
                                login,
                                peer_uid,
                                Method::AppCode,
                                Some(&phone.name),
                                Outcome::Allow,
                                "code accepted",
                            );
                            return Ok(Response::Allow {
                                phone: phone.name.clone(),
                            });
                        }
                        // Another login claimed this step between our read and write.
                        reason = DenyReason::ReusedCode;
                    }
                    CodeMatch::Used => reason = DenyReason::ReusedCode,
                    CodeMatch::NoMatch => {}
                }
            }
            reason
        };

        self.refuse_code(peer_uid, login, Method::AppCode, reason, now)
    }

    /// A code that does not let the login in. It is refused even when the
    /// failure cannot be counted (a full disk must not turn a wrong code
    /// into an answer the fail mode might let through).
    fn refuse_code(
        &self,
        peer_uid: u32,
        login: &LoginContext,
        method: Method,
        reason: DenyReason,
        now: u64,
    ) -> Result<Response, Refusal> {
        self.refuse_noting(peer_uid, login, method, reason, now, None, "")
    }

    /// [`Service::refuse_code`], with the phone and a note for the audit line.
    #[allow(clippy::too_many_arguments)]
    fn refuse_noting(
        &self,
        peer_uid: u32,
        login: &LoginContext,
        method: Method,
        reason: DenyReason,
        now: u64,
        phone: Option<&str>,
        note: &str,
    ) -> Result<Response, Refusal> {
        let lockout = &self.config.lockout;
        let counted =
            self.store
                .record_failure(&login.user, now, lockout.window, lockout.max_failures);
        let (answer, why) = match counted {
            Ok(Some(until)) => (
                Response::LockedOut { until },
                format!(
                    "{}; locked out after {} failures",
                    reason.describe(),
                    lockout.max_failures
                ),
            ),
            Ok(None) => (Response::Deny { reason }, reason.describe().to_owned()),
            Err(err) => {
                crate::say!("counting a failure for {}: {err}", login.user);
                (
                    Response::Deny { reason },
                    format!("{}; not counted: {err}", reason.describe()),
                )
            }
        };
        let why = if note.is_empty() {
            why
        } else {
            format!("{note}; {why}")
        };
        self.audit_login(login, peer_uid, method, phone, Outcome::Deny, &why);
        Ok(answer)
    }

    /// Writes a change to an account through to the main store file, so
    /// that a copy of that file alone holds every enrollment.
    fn flush(&self) {
        if let Err(err) = self.store.flush() {
            crate::say!("writing the store out: {err}");
        }
    }

    fn audit(&self, event: AuditEvent) {
        self.audit.record(&event);
    }

    fn audit_login(
        &self,
        login: &LoginContext,
        peer_uid: u32,
        method: Method,
        phone: Option<&str>,
        result: Outcome,
        reason: &str,
    ) {
        self.audit(AuditEvent {
            user: login.user.clone(),
            service: login.service.clone(),
            rhost: login.rhost.clone(),
            tty: login.tty.clone(),
            method,
            phone: phone.map(str::to_owned),
            result,
            reason: reason.to_owned(),
            peer_uid: Some(peer_uid),
        });
    }

    fn audit_manage(&self, peer_uid: u32, user: &str, phone: Option<&str>, reason: &str) {
        self.audit(AuditEvent {
            user: user.to_owned(),
            service: "smartsign".into(),
            rhost: None,
            tty: None,
            method: Method::Manage,
            phone: phone.map(str::to_owned),
            result: Outcome::Done,
            reason: reason.to_owned(),
            peer_uid: Some(peer_uid),
        });
    }
}

/// A change refused because the account is locked out.
fn locked_refusal(user: &str, until: u64) -> Refusal {
    Refusal::quiet(
        ErrorKind::Refused,
        format!(
            "{user} is locked out after too many wrong codes until {}",
            time(until)
        ),
    )
}

/// The context of a request from the smartsign command: an account change
/// (a proof checked as at login), not a login.
fn manage_login(user: &str) -> LoginContext {
    LoginContext {
        user: user.to_owned(),
        service: "smartsign".into(),
        rhost: None,
        tty: None,
    }
}

/// Unix seconds as `2026-12-03T15:20:00Z`.
fn time(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(unix)).to_string()
}

fn confirmed(phones: Vec<PhoneRecord>) -> Vec<PhoneRecord> {
    phones.into_iter().filter(|p| p.confirmed).collect()
}

fn phone_info(phone: &PhoneRecord) -> PhoneInfo {
    PhoneInfo {
        name: phone.name.clone(),
        confirmed: phone.confirmed,
        created: phone.created,
        last_used: phone.last_used,
        push: phone.push_topic.is_some(),
    }
}

/// Codes are often typed as `123 456`.
fn normalize(code: &str) -> zeroize::Zeroizing<String> {
    zeroize::Zeroizing::new(code.chars().filter(|c| *c != ' ').collect())
}

fn no_such_phone(name: &str) -> Refusal {
    Refusal::quiet(ErrorKind::NotFound, format!("no phone named {name:?}"))
}

fn check_phone_name(name: &str) -> Result<(), Refusal> {
    names::check_phone(name)
        .map_err(|why| Refusal::quiet(ErrorKind::BadRequest, format!("invalid phone name: {why}")))
}

/// Service, remote host and tty are free text from the PAM application;
/// bound them to what real ones look like, so that they fit an audit line.
fn check_login_fields(login: &LoginContext) -> Result<(), Refusal> {
    let fields = [
        ("service", Some(&login.service), 64),
        ("rhost", login.rhost.as_ref(), 255),
        ("tty", login.tty.as_ref(), 64),
    ];
    for (name, value, max) in fields {
        let Some(value) = value else { continue };
        if value.len() > max || value.chars().any(crate::audit::is_invisible) {
            let why = format!("{name} is over {max} bytes or holds control characters");
            return Err(Refusal {
                kind: ErrorKind::BadRequest,
                message: why.clone(),
                audit: Some((Outcome::Refused, why)),
            });
        }
    }
    Ok(())
}

mod account;
mod email;
mod push;

pub use push::{Link, Next, PushSetup, Waiting};
#[cfg(test)]
mod tests;
