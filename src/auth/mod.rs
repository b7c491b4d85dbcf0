//! Who is calling and what they may do. A [`Principal`] comes from a client
//! certificate's SPIFFE id ([`Principal::from_spiffe`]) or a signed bearer
//! token ([`token`]); [`Method`] is every RPC with the roles the table in
//! docs/security.md allows; [`Principal::may_call`] is the one role check and
//! the `require_*` methods are the scope checks (bank, station, officer).
//!
//! Pure: knows no tonic, TLS or clock. The API edge (`api::identity`)
//! resolves the principal and calls these; the service records it in the
//! audit trail.

pub mod token;

use std::fmt;

/// What a caller is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A teller system of one bank: screens its transfers, follows them.
    Teller,
    /// Core banking of one bank: records customer events.
    System,
    /// A police officer of one station: the station's alerts, the watchlist.
    Officer,
    /// Writes and loads rules.
    Analyst,
    /// Operates the service: removes any watchlist entry, reads everything but alerts.
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Teller, Role::System, Role::Officer, Role::Analyst, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Teller => "teller",
            Role::System => "system",
            Role::Officer => "officer",
            Role::Analyst => "analyst",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether principals of this role belong to a bank or station (the
    /// first path segment after the role) as well as naming themselves.
    pub fn is_scoped(self) -> bool {
        matches!(self, Role::Teller | Role::System | Role::Officer)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    pub role: Role,
    /// The bank (teller, system) or police station (officer); empty for analysts and admins.
    pub scope: String,
    /// The teller, system, officer, analyst or admin id.
    pub subject: String,
}

/// Who made a call: a known principal, or anyone at all when the server runs
/// open (the embedded default: plaintext on loopback, every principal allowed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    Open,
    Known(Principal),
    /// The service itself (expiry, escalation, hot reload on a file change).
    Service,
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.role.is_scoped() {
            write!(f, "{}/{}/{}", self.role, self.scope, self.subject)
        } else {
            write!(f, "{}/{}", self.role, self.subject)
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Open => f.write_str("open"),
            Caller::Service => f.write_str("service"),
            Caller::Known(p) => p.fmt(f),
        }
    }
}

/// Why a caller could not be identified: UNAUTHENTICATED.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("no client certificate and no bearer token")]
    Missing,
    #[error("the client certificate has no URI SAN in the form spiffe://<trust-domain>/<role>/...")]
    NoSpiffeId,
    #[error("`{0}` is not a usable SPIFFE id: {1}")]
    BadSpiffeId(String, &'static str),
    #[error("`{id}` is from trust domain `{found}`; this server trusts `{expected}`")]
    ForeignTrustDomain { id: String, found: String, expected: String },
    #[error("the certificate cannot be read: {0}")]
    BadCertificate(String),
    #[error("bearer token refused: {0}")]
    Token(String),
}

/// Why an identified caller may not do something: PERMISSION_DENIED, naming
/// what was needed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{method} needs the role {needed}; the caller `{caller}` is {role}")]
    Role { method: &'static str, needed: String, caller: String, role: Role },
    #[error("{what} needs {needed} `{wanted}`; the caller `{caller}` is of {needed} `{has}`")]
    Scope { what: &'static str, needed: &'static str, wanted: String, has: String, caller: String },
    #[error("{field} must be the caller's own id `{own}`, not `{given}`")]
    NotSelf { field: &'static str, own: String, given: String },
}

impl Denied {
    /// A short label for the metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::Role { .. } => "role",
            Denied::Scope { .. } => "scope",
            Denied::NotSelf { .. } => "not_self",
        }
    }
}

fn segment_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Principal {
    pub fn new(role: Role, scope: &str, subject: &str) -> Principal {
        Principal { role, scope: scope.into(), subject: subject.into() }
    }

    /// `spiffe://<trust-domain>/<role>/<bank-or-station>/<id>` for tellers,
    /// systems and officers; `spiffe://<trust-domain>/<role>/<id>` for
    /// analysts and admins.
    pub fn from_spiffe(uri: &str, trust_domain: &str) -> Result<Principal, IdentityError> {
        let bad = |why| IdentityError::BadSpiffeId(uri.to_string(), why);
        let rest = uri.strip_prefix("spiffe://").ok_or_else(|| bad("it does not start with spiffe://"))?;
        let (domain, path) = rest.split_once('/').ok_or_else(|| bad("it has no path"))?;
        if !domain.eq_ignore_ascii_case(trust_domain) {
            return Err(IdentityError::ForeignTrustDomain {
                id: uri.to_string(),
                found: domain.to_string(),
                expected: trust_domain.to_string(),
            });
        }
        let parts: Vec<&str> = path.split('/').collect();
        let role =
            Role::parse(parts[0]).ok_or_else(|| bad("the role is not teller, system, officer, analyst or admin"))?;
        match (role.is_scoped(), &parts[1..]) {
            (true, [scope, subject]) | (true, [scope, subject, ..]) if segment_ok(scope) && segment_ok(subject) => {
                Ok(Principal::new(role, scope, subject))
            }
            (false, [subject]) | (false, [subject, ..]) if segment_ok(subject) => Ok(Principal::new(role, "", subject)),
            (true, _) => Err(bad("tellers, systems and officers need /<role>/<bank-or-station>/<id>")),
            (false, _) => Err(bad("analysts and admins need /<role>/<id>")),
        }
    }

    /// The role check: may this principal call `method` at all?
    pub fn may_call(&self, method: Method) -> Result<(), Denied> {
        self.has_role(method.name(), method.roles())
    }

    /// The role check for a page of the web board.
    pub fn may_see(&self, page: BoardPage) -> Result<(), Denied> {
        self.has_role(page.name(), page.roles())
    }

    fn has_role(&self, what: &'static str, allowed: &[Role]) -> Result<(), Denied> {
        if allowed.contains(&self.role) {
            return Ok(());
        }
        Err(Denied::Role {
            method: what,
            needed: allowed.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(" or "),
            caller: self.to_string(),
            role: self.role,
        })
    }

    fn scope_denied(&self, what: &'static str, needed: &'static str, wanted: &str) -> Denied {
        Denied::Scope { what, needed, wanted: wanted.into(), has: self.scope.clone(), caller: self.to_string() }
    }

    /// A teller or system may act only for its own bank.
    pub fn require_bank(&self, what: &'static str, bank_id: &str) -> Result<(), Denied> {
        match self.role {
            Role::Teller | Role::System if self.scope == bank_id => Ok(()),
            Role::Admin | Role::Analyst => Ok(()),
            _ => Err(self.scope_denied(what, "bank", bank_id)),
        }
    }

    /// An officer may act only for their own station.
    pub fn require_station(&self, what: &'static str, station_id: &str) -> Result<(), Denied> {
        match self.role {
            Role::Officer if self.scope == station_id => Ok(()),
            Role::Admin => Ok(()),
            _ => Err(self.scope_denied(what, "station", station_id)),
        }
    }

    /// An officer may act only as themself: `field` in the body must be their id.
    pub fn require_self(&self, field: &'static str, given: &str) -> Result<(), Denied> {
        if self.subject == given {
            return Ok(());
        }
        Err(Denied::NotSelf { field, own: self.subject.clone(), given: given.into() })
    }
}

macro_rules! methods {
    ($($variant:ident = $path:literal : [$($role:ident),*];)+) => {
        /// Every RPC, by its gRPC path, with the roles that may call it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Method { $($variant),+ }

        impl Method {
            pub const ALL: &'static [Method] = &[$(Method::$variant),+];

            /// `/transferguard.v1.Screening/Screen` → `Screen`.
            pub fn from_path(path: &str) -> Option<Method> {
                match path { $($path => Some(Method::$variant),)+ _ => None }
            }

            pub fn path(self) -> &'static str {
                match self { $(Method::$variant => $path),+ }
            }

            pub fn roles(self) -> &'static [Role] {
                match self { $(Method::$variant => &[$(Role::$role),*]),+ }
            }
        }
    };
}

// The role table (docs/security.md). Scope checks (own bank, own station,
// own officer id, issuing station) follow in the handlers.
methods! {
    Screen = "/transferguard.v1.Screening/Screen": [Teller];
    RecordEvent = "/transferguard.v1.Screening/RecordEvent": [System];
    GetTransfer = "/transferguard.v1.Screening/GetTransfer": [Teller, System];
    WatchTransfer = "/transferguard.v1.Screening/WatchTransfer": [Teller];
    WatchAlerts = "/transferguard.v1.Alerts/WatchAlerts": [Officer];
    ListAlerts = "/transferguard.v1.Alerts/ListAlerts": [Officer];
    ClaimAlert = "/transferguard.v1.Alerts/ClaimAlert": [Officer];
    ResolveAlert = "/transferguard.v1.Alerts/ResolveAlert": [Officer];
    UpsertEntry = "/transferguard.v1.Watchlist/UpsertEntry": [Officer];
    RemoveEntry = "/transferguard.v1.Watchlist/RemoveEntry": [Officer, Admin];
    ListEntries = "/transferguard.v1.Watchlist/ListEntries": [Officer, Analyst, Admin];
    GetRuleset = "/transferguard.v1.Rules/GetRuleset": [Teller, System, Officer, Analyst, Admin];
    ReloadRules = "/transferguard.v1.Rules/ReloadRules": [Analyst];
    DryRun = "/transferguard.v1.Rules/DryRun": [Analyst];
    ProposeRules = "/transferguard.v1.Rules/ProposeRules": [Analyst];
    ApproveRules = "/transferguard.v1.Rules/ApproveRules": [Analyst];
}

/// The web board's pages, with the roles that may see them (docs/board.md).
/// Acting on an alert from the board passes the RPC's own check too
/// (`ClaimAlert`, `ResolveAlert`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BoardPage {
    /// The live queue, an alert's page, claiming and resolving.
    Queue,
    /// The ruleset in force, hits per hour, alerts per station and day, reloads.
    Rules,
}

impl BoardPage {
    pub fn name(self) -> &'static str {
        match self {
            BoardPage::Queue => "board:queue",
            BoardPage::Rules => "board:rules",
        }
    }

    pub fn roles(self) -> &'static [Role] {
        match self {
            BoardPage::Queue => &[Role::Officer],
            BoardPage::Rules => &[Role::Analyst, Role::Admin],
        }
    }
}

impl Method {
    /// `Screen`, for messages and metrics.
    pub fn name(self) -> &'static str {
        self.path().rsplit('/').next().unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_name_role_scope_and_subject() {
        let td = "bank-police.example";
        let p = Principal::from_spiffe("spiffe://bank-police.example/officer/heshan-zhongshan-ps/officer-li", td);
        assert_eq!(p.unwrap(), Principal::new(Role::Officer, "heshan-zhongshan-ps", "officer-li"));
        let p = Principal::from_spiffe("spiffe://bank-police.example/analyst/zhang", td).unwrap();
        assert_eq!((p.role, p.scope.as_str(), p.subject.as_str()), (Role::Analyst, "", "zhang"));
        assert_eq!(p.to_string(), "analyst/zhang");
        let p = Principal::from_spiffe("spiffe://bank-police.example/teller/icbc/t-7", td).unwrap();
        assert_eq!(p.to_string(), "teller/icbc/t-7");

        for (id, expect) in [
            ("spiffe://other.example/officer/s/o", "trust domain `other.example`"),
            ("https://bank-police.example/officer/s/o", "spiffe://"),
            ("spiffe://bank-police.example", "no path"),
            ("spiffe://bank-police.example/teller/icbc", "/<role>/<bank-or-station>/<id>"),
            ("spiffe://bank-police.example/officer//o", "/<role>/<bank-or-station>/<id>"),
            ("spiffe://bank-police.example/superuser/x", "role is not"),
            ("spiffe://bank-police.example/admin/", "/<role>/<id>"),
            ("spiffe://bank-police.example/teller/ic bc/t", "/<role>/<bank-or-station>/<id>"),
        ] {
            let e = Principal::from_spiffe(id, td).unwrap_err().to_string();
            assert!(e.contains(expect), "{id}: {e}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_uri_is_parsed_or_refused_never_a_panic(uri in ".{0,80}") {
            let _ = Principal::from_spiffe(&uri, "td.example");
        }

        #[test]
        fn a_principal_survives_its_spiffe_id(
            role in proptest::sample::select(Role::ALL.to_vec()),
            scope in "[a-z0-9][a-z0-9._-]{0,20}",
            subject in "[A-Za-z0-9][A-Za-z0-9._-]{0,20}",
        ) {
            let p = Principal::new(role, if role.is_scoped() { &scope } else { "" }, &subject);
            let uri = format!("spiffe://td.example/{p}");
            proptest::prop_assert_eq!(Principal::from_spiffe(&uri, "td.example").unwrap(), p);
        }
    }

    #[test]
    fn every_method_has_a_path_and_at_least_one_role() {
        for m in Method::ALL {
            assert_eq!(Method::from_path(m.path()), Some(*m));
            assert!(!m.roles().is_empty(), "{m:?}");
        }
        assert_eq!(Method::from_path("/grpc.health.v1.Health/Check"), None);
    }

    #[test]
    fn denials_name_what_was_needed() {
        let teller = Principal::new(Role::Teller, "icbc", "t-7");
        let e = teller.may_call(Method::ResolveAlert).unwrap_err().to_string();
        assert!(e.contains("ResolveAlert needs the role officer"), "{e}");
        let e = teller.require_bank("Screen", "boc").unwrap_err().to_string();
        assert!(e.contains("bank `boc`") && e.contains("`icbc`"), "{e}");
        assert!(teller.require_bank("Screen", "icbc").is_ok());
        let officer = Principal::new(Role::Officer, "heshan-zhongshan-ps", "officer-li");
        assert!(officer.require_station("ClaimAlert", "heshan-zhongshan-ps").is_ok());
        assert!(officer.require_station("ClaimAlert", "jiangmen-ps").is_err());
        assert!(officer.require_self("officer_id", "officer-wang").unwrap_err().to_string().contains("officer-li"));
        let admin = Principal::new(Role::Admin, "", "ops");
        assert!(admin.require_station("RemoveEntry", "any").is_ok());
    }
}
