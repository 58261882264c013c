//! Emergency codes by mail: registering an address, sending a login code,
//! and taking one back at the prompt.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lettre::Address;
use smartsign_proto::{DenyReason, ErrorKind, LoginContext, Response, Secret};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::{Refusal, Service};
use crate::audit::{AuditEvent, Method, Outcome};
use crate::mail::{self, CodeMail, MailError, MailSink, Purpose};
use crate::store::{CodePurpose, EmailCode};

/// Emailed codes are longer than app codes, which tells the two apart.
pub const DIGITS: usize = 8;

const HOUR: u64 = 3600;

impl Service {
    /// The masked address a login may ask a code for, if mail is set up.
    pub(super) fn email_offer(&self, user: &str) -> Result<Option<String>, Refusal> {
        if self.mailer.is_none() {
            return Ok(None);
        }
        Ok(self.store.email(user)?.map(|address| mail::mask(&address)))
    }

    /// The address waiting for its confirmation code, if any.
    pub(super) fn pending_address(&self, user: &str, now: u64) -> Result<Option<String>, Refusal> {
        let pending = self.store.email_code(user, CodePurpose::ConfirmAddress)?;
        Ok(pending.filter(|p| p.expires > now).map(|p| p.address))
    }

    pub(super) fn send_login_code(
        &self,
        peer_uid: u32,
        login: &LoginContext,
        gids: Option<&[u32]>,
    ) -> Result<Response, Refusal> {
        let outgoing = {
            let _one_at_a_time = self.account_lock(&login.user);
            if let Err(answer) = self.phones_to_ask(
                peer_uid,
                login,
                Method::EmailCode,
                super::Apply::Policy { gids },
            )? {
                return Ok(answer);
            }
            let Some(address) = self.store.email(&login.user)? else {
                return Err(mail_failed("no address is registered for this account"));
            };
            self.prepare_mail(peer_uid, login, CodePurpose::Login, &address)?
        };
        self.deliver(peer_uid, login, outgoing)
    }

    /// Mails the proof for a change to an account enrolled by its address
    /// alone (`smartsign email send-code`). It opens no login.
    pub(super) fn send_change_code(&self, peer_uid: u32, user: &str) -> Result<Response, Refusal> {
        let login = super::manage_login(user);
        let outgoing = {
            let _one_at_a_time = self.account_lock(user);
            if !self.email_only_enrolled(user)? {
                return Err(Refusal::quiet(
                    ErrorKind::Refused,
                    "this account's changes are proven with a code from one of its phones \
                     (mailed codes prove changes only for an account with an address alone)",
                ));
            }
            let Some(address) = self.store.email(user)? else {
                return Err(mail_failed("no address is registered for this account"));
            };
            self.prepare_mail(peer_uid, &login, CodePurpose::Change, &address)?
        };
        self.deliver(peer_uid, &login, outgoing)
    }

    /// The code mailed for a change: unused, in time, compared in constant
    /// time, and taken either way. `Ok(None)` when it is good.
    pub(super) fn take_change_code(
        &self,
        user: &str,
        code: &str,
        now: u64,
    ) -> Result<Option<DenyReason>, Refusal> {
        let reason = match self.store.email_code(user, CodePurpose::Change)? {
            Some(sent) if bool::from(sent.code.as_bytes().ct_eq(code.as_bytes())) => {
                if !self
                    .store
                    .take_email_code(user, CodePurpose::Change, code)?
                {
                    DenyReason::ReusedCode
                } else if sent.expires <= now {
                    DenyReason::ExpiredCode
                } else {
                    return Ok(None);
                }
            }
            _ => DenyReason::WrongCode,
        };
        Ok(Some(reason))
    }

    /// An 8-digit answer at the login prompt: the code last mailed, unused,
    /// in time, compared in constant time.
    pub(super) fn verify_email_code(
        &self,
        peer_uid: u32,
        login: &LoginContext,
        code: &str,
        now: u64,
    ) -> Result<Response, Refusal> {
        let user = &login.user;
        let reason = match self.store.email_code(user, CodePurpose::Login)? {
            Some(sent) if bool::from(sent.code.as_bytes().ct_eq(code.as_bytes())) => {
                // Taken in every case: an expired code is spent as well.
                let taken = self.store.take_email_code(user, CodePurpose::Login, code)?;
                if !taken {
                    DenyReason::ReusedCode
                } else if sent.expires <= now {
                    DenyReason::ExpiredCode
                } else {
                    if let Err(err) = self.store.clear_failures(user) {
                        crate::say!("clearing failures of {user}: {err}");
                    }
                    let to = mail::mask(&sent.address);
                    let phone = format!("email {to}");
                    self.audit_login(
                        login,
                        peer_uid,
                        Method::EmailCode,
                        Some(&phone),
                        Outcome::Allow,
                        "emailed code accepted",
                    );
                    return Ok(Response::Allow { phone });
                }
            }
            _ => DenyReason::WrongCode,
        };
        self.refuse_code(peer_uid, login, Method::EmailCode, reason, now)
    }

    pub(super) fn email_set(
        &self,
        peer_uid: u32,
        user: &str,
        address: &str,
        code: Option<&Secret>,
    ) -> Result<Response, Refusal> {
        let address = mail::check_address(address)
            .map_err(|why| Refusal::quiet(ErrorKind::BadRequest, why))?
            .to_string();
        let login = super::manage_login(user);
        let outgoing = {
            let _one_at_a_time = self.account_lock(user);
            if peer_uid == 0 {
                // An administrator's word for the address is enough; it
                // replaces any address waiting for confirmation too.
                self.store.set_email(user, &address, (self.clock)())?;
                let masked = mail::mask(&address);
                self.audit_manage(
                    peer_uid,
                    user,
                    None,
                    &format!("address set to {masked} by root"),
                );
                self.flush();
                return Ok(Response::Done);
            }
            // An address is a second way in: only beside a phone, and only
            // with a code from it, so that a password alone cannot add one.
            // With email_only an address enrolls the account by itself.
            if !self.policy.email_only && super::confirmed(self.store.phones(user)?).is_empty() {
                return Err(Refusal::quiet(
                    ErrorKind::Refused,
                    "enroll a phone first (smartsign phone add NAME); an address is a fallback beside it",
                ));
            }
            self.require_code(peer_uid, user, code)?;
            self.prepare_mail(peer_uid, &login, CodePurpose::ConfirmAddress, &address)?
        };
        self.deliver(peer_uid, &login, outgoing)
    }

    pub(super) fn email_confirm(
        &self,
        peer_uid: u32,
        user: &str,
        code: &Secret,
    ) -> Result<Response, Refusal> {
        let now = (self.clock)();
        let code = code.expose().trim();
        let Some(pending) = self.store.email_code(user, CodePurpose::ConfirmAddress)? else {
            return Err(Refusal::quiet(
                ErrorKind::NotFound,
                "no address is waiting for confirmation: run smartsign email set ADDRESS",
            ));
        };
        let right = bool::from(pending.code.as_bytes().ct_eq(code.as_bytes()));
        if !right || pending.expires <= now {
            let why = if right {
                "that code has expired: run smartsign email set again"
            } else {
                "that is not the code in the mail"
            };
            return Err(Refusal {
                kind: ErrorKind::WrongCode,
                message: why.into(),
                audit: Some((Outcome::Deny, "wrong code confirming an address".into())),
            });
        }
        if !self
            .store
            .take_email_code(user, CodePurpose::ConfirmAddress, code)?
        {
            return Err(Refusal::quiet(
                ErrorKind::WrongCode,
                "that code was used already",
            ));
        }
        self.store.set_email(user, &pending.address, now)?;
        self.audit_manage(
            peer_uid,
            user,
            None,
            &format!("address {} confirmed", mail::mask(&pending.address)),
        );
        self.flush();
        Ok(Response::Done)
    }

    pub(super) fn email_remove(
        &self,
        peer_uid: u32,
        user: &str,
        code: Option<&Secret>,
    ) -> Result<Response, Refusal> {
        if self.store.email(user)?.is_none() {
            return Err(Refusal::quiet(
                ErrorKind::NotFound,
                "no address is registered",
            ));
        }
        self.require_code(peer_uid, user, code)?;
        self.store.remove_email(user)?;
        self.audit_manage(peer_uid, user, None, "address removed");
        self.flush();
        Ok(Response::Done)
    }

    /// Makes a code and keeps it, within the hourly limit. Every attempt
    /// counts, sent or not: a mail server that delivers but answers late
    /// must not let mails through beyond the limit.
    fn prepare_mail(
        &self,
        peer_uid: u32,
        login: &LoginContext,
        purpose: CodePurpose,
        address: &str,
    ) -> Result<Outgoing, Refusal> {
        let (Some(mailer), Some(settings)) = (&self.mailer, &self.config.email) else {
            return Err(mail_failed("email codes are not set up on this host"));
        };
        let user = &login.user;
        let now = (self.clock)();
        if self.store.mails_since(user, now.saturating_sub(HOUR))? >= settings.max_per_hour {
            let why = format!("at most {} mails an hour", settings.max_per_hour);
            self.audit_mail(
                peer_uid,
                login,
                Outcome::Deny,
                &format!("not mailed: {why}"),
            );
            return Err(Refusal::quiet(ErrorKind::TooMany, why));
        }
        let to = mail::check_address(address).map_err(|why| mail_failed(&why))?;
        let code = mail::new_code().map_err(|err| mail_failed(&err.to_string()))?;
        let expires = now + settings.code_ttl.as_secs();
        let kept = EmailCode {
            code: code.clone(),
            address: address.to_owned(),
            expires,
        };
        self.store.put_email_code(user, purpose, &kept)?;
        self.store.record_mail(user, now)?;
        Ok(Outgoing {
            mailer: Arc::clone(mailer),
            deadline: settings.timeout,
            to,
            address: address.to_owned(),
            purpose,
            code,
            sent: now,
            expires,
        })
    }

    /// Hands the mail over within the `[email] timeout`, whatever the server
    /// does; a mail that fails takes its code back, since nobody has it.
    fn deliver(
        &self,
        peer_uid: u32,
        login: &LoginContext,
        outgoing: Outgoing,
    ) -> Result<Response, Refusal> {
        let masked = mail::mask(&outgoing.address);
        let (user, purpose, code) = (login.user.clone(), outgoing.purpose, outgoing.code.clone());
        let expires = outgoing.expires;
        let failure = match outgoing.send(&self.hostname, login) {
            Ok(()) => {
                self.audit_mail(
                    peer_uid,
                    login,
                    Outcome::Done,
                    &format!("code mailed to {masked}"),
                );
                return Ok(Response::EmailSent {
                    to: masked,
                    expires,
                });
            }
            Err(err) => err,
        };
        {
            let _one_at_a_time = self.account_lock(&user);
            let _ = self.store.take_email_code(&user, purpose, &code);
        }
        self.audit_mail(
            peer_uid,
            login,
            Outcome::Deny,
            &format!("not mailed: {failure}"),
        );
        // The server's words (addresses, host names) stay in the log.
        Err(mail_failed(
            "the mail could not be sent; the administrator can see why in the log",
        ))
    }

    fn audit_mail(&self, peer_uid: u32, login: &LoginContext, result: Outcome, reason: &str) {
        self.audit(AuditEvent {
            user: login.user.clone(),
            service: login.service.clone(),
            rhost: login.rhost.clone(),
            tty: login.tty.clone(),
            method: Method::EmailCode,
            phone: None,
            result,
            reason: reason.to_owned(),
            peer_uid: Some(peer_uid),
        });
    }
}

/// A mail ready to go, with what the account's lock is not needed for.
struct Outgoing {
    mailer: Arc<dyn MailSink>,
    deadline: Duration,
    to: Address,
    address: String,
    purpose: CodePurpose,
    code: Zeroizing<String>,
    sent: u64,
    expires: u64,
}

/// Mails being handed over at once; more are refused rather than queued,
/// so that a stuck mail server cannot pile up threads.
const MAX_MAILS_IN_FLIGHT: usize = 16;
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

impl Outgoing {
    fn send(self, host: &str, login: &LoginContext) -> Result<(), MailError> {
        if IN_FLIGHT.fetch_add(1, Ordering::SeqCst) >= MAX_MAILS_IN_FLIGHT {
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            return Err(MailError(
                "too many mails in flight; the mail server is not keeping up".into(),
            ));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let deadline = self.deadline;
        let (host, service, rhost) = (host.to_owned(), login.service.clone(), login.rhost.clone());
        let user = login.user.clone();
        let spawned = std::thread::Builder::new()
            .name("mail".into())
            .spawn(move || {
                let purpose = match self.purpose {
                    CodePurpose::Login => Purpose::Login {
                        service: &service,
                        rhost: rhost.as_deref(),
                    },
                    CodePurpose::ConfirmAddress => Purpose::ConfirmAddress,
                    CodePurpose::Change => Purpose::Change,
                };
                let mail = CodeMail {
                    user: &user,
                    host: &host,
                    code: &self.code,
                    purpose,
                    sent: self.sent,
                    expires: self.expires,
                };
                let _ = tx.send(self.mailer.send(&self.to, &mail));
                IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(err) = spawned {
            IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
            return Err(MailError(format!("cannot start a thread: {err}")));
        }
        match rx.recv_timeout(deadline) {
            Ok(result) => result,
            Err(_) => Err(MailError(format!(
                "the mail was not handed over within {deadline:?}"
            ))),
        }
    }
}

fn mail_failed(why: &str) -> Refusal {
    Refusal::quiet(ErrorKind::MailFailed, why)
}
