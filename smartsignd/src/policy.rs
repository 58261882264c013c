//! Who needs SmartSign at a given login: exemptions by network and group,
//! and what happens to users without a phone, before and after the date
//! from which SmartSign is required. A pure function of the facts, so that
//! it can be tested with any clock.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// What `[policy] unenrolled` says for users without a confirmed phone
/// once skipping is over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unenrolled {
    /// Refused, with a message to ask the administrator.
    #[default]
    Deny,
    /// Left to the rest of the stack (the password alone).
    Allow,
}

/// The policy, resolved: group names to gids, the deadline to an instant.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Until this instant (Unix seconds) users without a phone may log in
    /// without one, and are told from when they may not.
    pub skip_until: Option<(i64, String)>,
    pub unenrolled: Unenrolled,
    pub require_groups: Vec<(String, u32)>,
    pub exempt_groups: Vec<(String, u32)>,
    pub trusted_networks: Vec<IpNet>,
    pub trust_local: bool,
    /// Whether users may turn SmartSign off for themselves.
    pub user_may_disable: bool,
    /// Whether a confirmed address alone enrolls an account.
    pub email_only: bool,
}

/// What is known about one login.
pub struct Facts<'a> {
    pub now: i64,
    pub rhost: Option<&'a str>,
    /// Every gid the user belongs to, primary and supplementary; `None`
    /// when the account could not be looked up, which exempts nobody.
    pub gids: Option<&'a [u32]>,
    pub enrolled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No second factor for this login; the reason goes to the audit line.
    Exempt(String),
    /// Not enrolled, still allowed: tell the user from when it is required.
    Grace { deadline: String },
    /// Not enrolled, allowed by `unenrolled = "allow"`.
    UnenrolledAllowed,
    /// Not enrolled, refused by `unenrolled = "deny"`.
    UnenrolledDenied,
    /// Ask for the second factor.
    Ask,
}

impl Policy {
    pub fn decide(&self, facts: &Facts<'_>) -> Decision {
        if let Some(why) = self.network_exemption(facts.rhost) {
            return Decision::Exempt(why);
        }
        // Groups that cannot be looked up (an unknown user, NSS down)
        // exempt nobody: the login goes on as if every rule required it.
        if let Some(gids) = facts.gids {
            let member = |(_, gid): &&(String, u32)| gids.contains(gid);
            if let Some((name, _)) = self.exempt_groups.iter().find(member) {
                return Decision::Exempt(format!("exempt group {name}"));
            }
            if !self.require_groups.is_empty() && !self.require_groups.iter().any(|g| member(&g)) {
                return Decision::Exempt("in none of the required groups".into());
            }
        }
        if facts.enrolled {
            return Decision::Ask;
        }
        match &self.skip_until {
            Some((deadline, text)) if facts.now < *deadline => Decision::Grace {
                deadline: text.clone(),
            },
            _ => match self.unenrolled {
                Unenrolled::Allow => Decision::UnenrolledAllowed,
                Unenrolled::Deny => Decision::UnenrolledDenied,
            },
        }
    }

    /// Until when an enrolled user may still skip SmartSign, if they may now.
    pub fn skip_allowed(&self, now: i64) -> Option<&str> {
        match &self.skip_until {
            Some((deadline, text)) if now < *deadline => Some(text),
            _ => None,
        }
    }

    /// A login from a trusted network, or a local one under `trust_local`.
    fn network_exemption(&self, rhost: Option<&str>) -> Option<String> {
        let Some(rhost) = rhost.filter(|r| !r.is_empty()) else {
            return self
                .trust_local
                .then(|| "local login (trust_local)".to_owned());
        };
        let address = parse_address(rhost)?;
        self.trusted_networks
            .iter()
            .find(|net| net.contains(&address))
            .map(|net| format!("trusted network {net}"))
    }
}

/// PAM_RHOST as an address: IPv4, IPv6 (a `%scope` dropped, `[brackets]`
/// allowed), IPv4-mapped IPv6 as the IPv4 it maps. A host name is no
/// address: it never matches a network.
pub fn parse_address(rhost: &str) -> Option<IpAddr> {
    let bare = rhost.trim_start_matches('[').trim_end_matches(']');
    let bare = bare
        .split_once('%')
        .map_or(bare, |(address, _scope)| address);
    match bare.parse::<IpAddr>().ok()? {
        IpAddr::V6(v6) => Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)),
        v4 => Some(v4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: i64 = 1_806_537_600; // 2027-04-01T00:00:00Z

    fn policy() -> Policy {
        Policy {
            skip_until: Some((DEADLINE, "1 April 2027".into())),
            unenrolled: Unenrolled::Deny,
            require_groups: vec![],
            exempt_groups: vec![("robots".into(), 900)],
            trusted_networks: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
            trust_local: false,
            user_may_disable: false,
            email_only: false,
        }
    }

    fn facts(
        now: i64,
        rhost: Option<&'static str>,
        gids: &'static [u32],
        enrolled: bool,
    ) -> Facts<'static> {
        Facts {
            now,
            rhost,
            gids: Some(gids),
            enrolled,
        }
    }

    #[test]
    fn the_deadline_is_exact() {
        let p = policy();
        let grace = Decision::Grace {
            deadline: "1 April 2027".into(),
        };
        assert_eq!(p.decide(&facts(DEADLINE - 1, None, &[], false)), grace);
        assert_eq!(
            p.decide(&facts(DEADLINE, None, &[], false)),
            Decision::UnenrolledDenied
        );
        let allow = Policy {
            unenrolled: Unenrolled::Allow,
            ..policy()
        };
        assert_eq!(
            allow.decide(&facts(DEADLINE, None, &[], false)),
            Decision::UnenrolledAllowed
        );
        // Enrolled users are asked, before and after.
        assert_eq!(
            p.decide(&facts(DEADLINE - 1, None, &[], true)),
            Decision::Ask
        );
        assert_eq!(
            p.decide(&facts(DEADLINE + 1, None, &[], true)),
            Decision::Ask
        );
        // No deadline at all: the unenrolled rule applies from the start.
        let none = Policy {
            skip_until: None,
            ..policy()
        };
        assert_eq!(
            none.decide(&facts(0, None, &[], false)),
            Decision::UnenrolledDenied
        );
    }

    #[test]
    fn networks() {
        let p = policy();
        let exempt = |rhost| {
            matches!(
                p.decide(&facts(0, Some(rhost), &[], true)),
                Decision::Exempt(_)
            )
        };
        for trusted in [
            "10.1.2.3",
            "fd00::1",
            "fd12:3456::9%eth0",
            "::ffff:10.9.9.9",
            "[fd00::2]",
        ] {
            assert!(exempt(trusted), "{trusted}");
        }
        for untrusted in [
            "192.0.2.7",
            "11.0.0.1",
            "fe80::1%eth0",
            "::ffff:192.0.2.1",
            "10.example.org",
            "10.1.2.3.nip.io",
            "",
            "not an address",
        ] {
            assert!(!exempt(untrusted), "{untrusted}");
        }
        // No PAM_RHOST is a local login: trusted only with trust_local.
        assert_eq!(p.decide(&facts(0, None, &[], true)), Decision::Ask);
        let local = Policy {
            trust_local: true,
            ..policy()
        };
        assert!(matches!(
            local.decide(&facts(0, None, &[], true)),
            Decision::Exempt(_)
        ));
        assert!(!matches!(
            local.decide(&facts(0, Some("192.0.2.7"), &[], true)),
            Decision::Exempt(_)
        ));
    }

    #[test]
    fn groups() {
        let p = policy();
        assert_eq!(
            p.decide(&facts(0, None, &[100, 900], true)),
            Decision::Exempt("exempt group robots".into())
        );
        let required = Policy {
            require_groups: vec![("admins".into(), 27)],
            ..policy()
        };
        assert_eq!(required.decide(&facts(0, None, &[27], true)), Decision::Ask);
        assert!(matches!(
            required.decide(&facts(0, None, &[100], true)),
            Decision::Exempt(_)
        ));
        // Exempt wins over required.
        assert!(matches!(
            required.decide(&facts(0, None, &[27, 900], true)),
            Decision::Exempt(_)
        ));
    }
}
