//! Account management through the smartsign command: status, phones,
//! backup codes, disabling, and root's reset, explain and unlock.

use smartsign_proto::{
    AccountStatus, DenyReason, ErrorKind, LoginContext, NewPhone, Response, Secret,
};

use super::{
    MAX_PHONES, Refusal, Service, check_phone_name, confirmed, no_such_phone, normalize,
    phone_info, time,
};
use crate::audit::{Method, Outcome};
use crate::backup;
use crate::store::{PhoneRecord, StoreError};
use crate::totp::{self, CodeMatch};

impl Service {
    pub(super) fn status(&self, user: &str) -> Result<Response, Refusal> {
        let now = (self.clock)();
        let lockout = &self.config.lockout;
        Ok(Response::Status(AccountStatus {
            user: user.to_owned(),
            phones: self.store.phones(user)?.iter().map(phone_info).collect(),
            recent_failures: self.store.recent_failures(user, now, lockout.window)?,
            max_failures: lockout.max_failures,
            locked_until: self.store.locked_until(user, now)?,
            email: self.store.email(user)?,
            email_pending: self.pending_address(user, now)?,
            backup_codes_left: self.store.backup_codes(user)?.len() as u32,
            disabled: self.store.disabled(user)?.map(|by_root| {
                if by_root {
                    "by root".to_owned()
                } else {
                    "by the user".to_owned()
                }
            }),
        }))
    }

    pub(super) fn phone_add(
        &self,
        peer_uid: u32,
        user: &str,
        name: &str,
        code: Option<&Secret>,
    ) -> Result<Response, Refusal> {
        check_phone_name(name)?;
        let phones = self.store.phones(user)?;
        if phones.iter().any(|p| p.name == name && p.confirmed) {
            return Err(Refusal::quiet(
                ErrorKind::AlreadyExists,
                format!("a phone named {name:?} is already enrolled; remove it first"),
            ));
        }
        if phones.len() >= MAX_PHONES && !phones.iter().any(|p| p.name == name) {
            return Err(Refusal::quiet(
                ErrorKind::BadRequest,
                format!("{user} already has {MAX_PHONES} phones; remove one first"),
            ));
        }

        self.require_code(peer_uid, user, code)?;

        let secret = totp::generate_secret().map_err(|err| {
            Refusal::quiet(
                ErrorKind::Internal,
                format!("no randomness from the OS: {err}"),
            )
        })?;
        let account = format!("{user}@{}", self.hostname);
        let uri = totp::otpauth_uri(&secret, &account)
            .ok_or_else(|| Refusal::quiet(ErrorKind::Internal, "cannot build the otpauth URI"))?;
        match self
            .store
            .put_pending_phone(user, name, &secret, (self.clock)())
        {
            Ok(()) => {}
            Err(StoreError::Exists) => {
                return Err(Refusal::quiet(
                    ErrorKind::AlreadyExists,
                    format!("{name:?} exists"),
                ));
            }
            Err(err) => return Err(err.into()),
        }
        // A topic only where push is on: a phone is never told of one it
        // did not get to follow.
        let push_url = match self.new_push_topic()? {
            Some((topic, url)) => {
                self.store.set_push_topic(user, name, &topic)?;
                Some(url)
            }
            None => None,
        };
        self.audit_manage(
            peer_uid,
            user,
            Some(name),
            "phone added, pending confirmation",
        );
        Ok(Response::PhoneCreated(NewPhone {
            name: name.to_owned(),
            secret: Secret::new(secret.to_string()),
            otpauth_uri: Secret::new(uri.to_string()),
            push_url: push_url.map(Secret::new),
        }))
    }

    pub(super) fn phone_confirm(
        &self,
        peer_uid: u32,
        user: &str,
        name: &str,
        code: &Secret,
    ) -> Result<Response, Refusal> {
        let (phones, index) = self.phone_named(user, name)?;
        let phone = &phones[index];
        if phone.confirmed {
            return Err(Refusal::quiet(
                ErrorKind::AlreadyExists,
                format!("{name:?} is already confirmed"),
            ));
        }
        let now = (self.clock)();
        // An account enrolled by its address alone: a phone left pending
        // from before the address enrolled it was added without proof.
        if peer_uid != 0
            && !phones.iter().any(|p| p.confirmed)
            && self.email_only_enrolled(user)?
            && self
                .store
                .email_since(user)?
                .is_some_and(|since| phone.created <= since)
        {
            self.store.remove_phone(user, name)?;
            let why = "pending phone dropped: added before the address enrolled the account, \
                       without proof";
            self.audit_manage(peer_uid, user, Some(name), why);
            return Err(Refusal::quiet(
                ErrorKind::Refused,
                format!(
                    "{name:?} was added before the account's address enrolled it, \
                     without proof; add it again"
                ),
            ));
        }
        let code = normalize(code.expose());
        match totp::check(&phone.secret, &code, now, self.config.totp.skew, 0) {
            CodeMatch::Fresh(step)
                if self.store.confirm_phone(phone.id, &phone.secret, step)? =>
            {
                // Phones left pending before the account's first confirmed
                // one were added without proof; once the account has a
                // second factor, they could add another without one.
                let first = !phones.iter().any(|p| p.confirmed);
                if first {
                    for stale in phones.iter().filter(|p| !p.confirmed && p.id != phone.id) {
                        self.store.remove_phone(user, &stale.name)?;
                        self.audit_manage(
                            peer_uid,
                            user,
                            Some(&stale.name),
                            "pending phone dropped: added before the first phone, without proof",
                        );
                    }
                }
                self.audit_manage(peer_uid, user, Some(name), "phone confirmed");
                self.flush();
                Ok(Response::Done)
            }
            _ => Err(Refusal {
                kind: ErrorKind::WrongCode,
                message: "that is not the code the app shows for this phone now".into(),
                audit: Some((
                    Outcome::Deny,
                    format!("wrong code confirming phone {name:?}"),
                )),
            }),
        }
    }

    /// The account's phones and the index of the one called `name`.
    pub(super) fn phone_named(
        &self,
        user: &str,
        name: &str,
    ) -> Result<(Vec<PhoneRecord>, usize), Refusal> {
        check_phone_name(name)?;
        let phones = self.store.phones(user)?;
        match phones.iter().position(|p| p.name == name) {
            Some(index) => Ok((phones, index)),
            None => Err(no_such_phone(name)),
        }
    }

    pub(super) fn phone_list(&self, user: &str) -> Result<Response, Refusal> {
        Ok(Response::Phones {
            phones: self.store.phones(user)?.iter().map(phone_info).collect(),
        })
    }

    pub(super) fn phone_remove(
        &self,
        peer_uid: u32,
        user: &str,
        name: &str,
        code: Option<&Secret>,
    ) -> Result<Response, Refusal> {
        let (phones, index) = self.phone_named(user, name)?;
        // A pending phone never counted at login; dropping one needs no proof.
        if phones[index].confirmed {
            self.require_code(peer_uid, user, code)?;
        }
        if !self.store.remove_phone(user, name)? {
            return Err(no_such_phone(name));
        }
        self.audit_manage(peer_uid, user, Some(name), "phone removed");
        self.flush();
        Ok(Response::Done)
    }

    /// A new set of backup codes, replacing the old. Like a phone, a new
    /// set needs a code from an enrolled phone when a user asks.
    pub(super) fn backup_codes(
        &self,
        peer_uid: u32,
        user: &str,
        code: Option<&Secret>,
    ) -> Result<Response, Refusal> {
        if confirmed(self.store.phones(user)?).is_empty() && !self.email_only_enrolled(user)? {
            return Err(Refusal::quiet(
                ErrorKind::Refused,
                "enroll a phone first (smartsign phone add NAME); backup codes stand in for it",
            ));
        }
        self.require_code(peer_uid, user, code)?;
        let codes = backup::new_codes().map_err(|why| Refusal::quiet(ErrorKind::Internal, why))?;
        let hashes = codes
            .iter()
            .map(|code| backup::hash(code))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| Refusal::quiet(ErrorKind::Internal, why))?;
        self.store.replace_backup_codes(user, &hashes)?;
        self.audit_manage(
            peer_uid,
            user,
            None,
            &format!("{} new backup codes", codes.len()),
        );
        self.flush();
        Ok(Response::BackupCodes {
            codes: codes.iter().map(|c| Secret::new(c.to_string())).collect(),
        })
    }

    /// An answer in the shape of a backup code: any unused one, once.
    pub(super) fn verify_backup_code(
        &self,
        peer_uid: u32,
        login: &LoginContext,
        code: &str,
        now: u64,
    ) -> Result<Response, Refusal> {
        for (id, hash) in self.store.backup_codes(&login.user)? {
            if backup::matches(code, &hash) && self.store.use_backup_code(id, now)? {
                if let Err(err) = self.store.clear_failures(&login.user) {
                    crate::say!("clearing failures of {}: {err}", login.user);
                }
                let left = self.store.backup_codes(&login.user)?.len();
                let why = format!("backup code accepted, {left} left");
                self.audit_login(
                    login,
                    peer_uid,
                    Method::BackupCode,
                    None,
                    Outcome::Allow,
                    &why,
                );
                return Ok(Response::Allow {
                    phone: "a backup code".into(),
                });
            }
        }
        self.refuse_code(
            peer_uid,
            login,
            Method::BackupCode,
            DenyReason::WrongCode,
            now,
        )
    }

    /// Turns SmartSign off for the account: root always, a user only where
    /// the policy allows it and with a code from an enrolled phone.
    pub(super) fn disable(
        &self,
        peer_uid: u32,
        user: &str,
        code: Option<&Secret>,
    ) -> Result<Response, Refusal> {
        if peer_uid != 0 {
            if !self.policy.user_may_disable {
                return Err(Refusal {
                    kind: ErrorKind::Refused,
                    message: "this host's policy does not let users turn SmartSign off".into(),
                    audit: Some((
                        Outcome::Refused,
                        "disable asked, not allowed by the policy".into(),
                    )),
                });
            }
            self.require_code(peer_uid, user, code)?;
        }
        self.store
            .set_disabled(user, Some(peer_uid == 0), (self.clock)())?;
        let by = if peer_uid == 0 { "root" } else { "the user" };
        self.audit_manage(peer_uid, user, None, &format!("SmartSign disabled by {by}"));
        self.flush();
        Ok(Response::Done)
    }

    pub(super) fn enable(&self, peer_uid: u32, user: &str) -> Result<Response, Refusal> {
        if self.store.disabled(user)? == Some(true) && peer_uid != 0 {
            return Err(Refusal::quiet(
                ErrorKind::Refused,
                "root turned SmartSign off for this account; ask root",
            ));
        }
        self.store.set_disabled(user, None, (self.clock)())?;
        self.audit_manage(peer_uid, user, None, "SmartSign enabled");
        self.flush();
        Ok(Response::Done)
    }

    /// Which rules apply to `user`, and why, for an administrator.
    pub(super) fn explain(&self, user: &str) -> Result<Response, Refusal> {
        let now = (self.clock)();
        let policy = &self.policy;
        let phones = confirmed(self.store.phones(user)?);
        let gids = self.accounts.gids_of(user);
        let mut lines = Vec::new();
        let names = |groups: &[(String, u32)]| {
            groups
                .iter()
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &gids {
            None => lines.push(format!(
                "{user}: NSS does not know this account; no group exempts it"
            )),
            Some(gids) => {
                let exempt: Vec<_> = policy
                    .exempt_groups
                    .iter()
                    .filter(|(_, g)| gids.contains(g))
                    .collect();
                if let Some((name, _)) = exempt.first() {
                    lines.push(format!(
                        "exempt: member of {name} (exempt_groups: {})",
                        names(&policy.exempt_groups)
                    ));
                }
                if !policy.require_groups.is_empty() {
                    let member = policy.require_groups.iter().any(|(_, g)| gids.contains(g));
                    lines.push(format!(
                        "{} of the required groups ({})",
                        if member {
                            "member of one"
                        } else {
                            "exempt: member of none"
                        },
                        names(&policy.require_groups)
                    ));
                }
            }
        }
        if let Some(by_root) = self.store.disabled(user)? {
            let counts = by_root || policy.user_may_disable;
            lines.push(format!(
                "turned off {}{}",
                if by_root { "by root" } else { "by the user" },
                if counts {
                    ": logins need no second factor"
                } else {
                    ", which the policy no longer allows: ignored"
                }
            ));
        }
        if !policy.trusted_networks.is_empty() {
            let nets: Vec<String> = policy
                .trusted_networks
                .iter()
                .map(ToString::to_string)
                .collect();
            lines.push(format!(
                "logins from {} need no second factor",
                nets.join(", ")
            ));
        }
        if policy.trust_local {
            lines.push("logins without a remote host need no second factor (trust_local)".into());
        }
        let by_address = phones.is_empty() && self.email_only_enrolled(user)?;
        match (phones.len(), policy.skip_allowed(now as i64)) {
            (0, _) if by_address => lines.push(
                "no phone, a confirmed address (email_only): a code is mailed at each login".into(),
            ),
            (0, Some(deadline)) => {
                lines.push(format!("no phone: may log in without one until {deadline}"))
            }
            (0, None) => lines.push(format!(
                "no phone: {} (unenrolled = {:?})",
                match policy.unenrolled {
                    crate::policy::Unenrolled::Deny => "refused",
                    crate::policy::Unenrolled::Allow => "let through on the rest of the stack",
                },
                policy.unenrolled
            )),
            (n, skip) => {
                let pushed = phones.iter().filter(|p| p.push_topic.is_some()).count();
                if self.push.is_some() && pushed > 0 {
                    lines.push(format!(
                        "{n} phone(s): a push to {pushed} of them, or a code"
                    ));
                } else {
                    lines.push(format!("{n} phone(s): asked for a code"));
                }
                if let Some(deadline) = skip {
                    lines.push(format!("may answer s to skip until {deadline}"));
                }
            }
        }
        if let Some(until) = self.store.locked_until(user, now)? {
            lines.push(format!("locked out until {}", time(until)));
        }
        Ok(Response::Explanation { lines })
    }

    pub(super) fn reset(&self, peer_uid: u32, user: &str) -> Result<Response, Refusal> {
        self.store.reset(user)?;
        self.audit_manage(
            peer_uid,
            user,
            None,
            "account reset by root: phones, address, codes removed",
        );
        self.flush();
        Ok(Response::Done)
    }

    pub(super) fn unlock(&self, peer_uid: u32, user: &str) -> Result<Response, Refusal> {
        self.store.unlock(user)?;
        self.audit_manage(peer_uid, user, None, "unlocked by root");
        self.flush();
        Ok(Response::Done)
    }
}
