//! Rule reloads: a rules folder is compiled and its rule tests run before it
//! can go live, then swapped in whole; a folder with any error is refused and
//! the running rules stay.
//!
//! Maker–checker: with [`Approval::Required`] a reload only proposes. The
//! folder's compiled, tested ruleset (named by its content hash) waits, and
//! goes live when a second principal approves that version; the proposer
//! cannot approve their own, and the running set stays until then. Both
//! steps are audited. A pending proposal lives in memory: a restart drops it
//! (propose again).
//!
//! In the clustered mode nothing is swapped at once: a tested ruleset (or an
//! approved one) is staged, and `cluster` makes it live when every node
//! has loaded it, so no node answers with rules another has not loaded.
//!
//! Must not swap a ruleset that failed its tests, nor, under approval, one
//! its proposer approved.

use super::*;

/// Compiles the rules folder and runs its tests: the gate for every ruleset
/// that goes live.
pub fn load_checked(dir: &Path) -> Result<(Ruleset, Routing), Vec<String>> {
    let render = |d: Vec<Diagnostic>| d.iter().map(|d| d.to_string()).collect::<Vec<_>>();
    let ruleset = Ruleset::load_dir(dir).map_err(render)?;
    let routing = Routing::load_dir(dir).map_err(render)?;
    let tests = dir.join("tests");
    if tests.is_dir() {
        let results = ruletest::run_dir(&ruleset, &tests).map_err(render)?;
        let failed: Vec<String> = results
            .iter()
            .filter(|r| !r.passed())
            .map(|r| format!("{}: rule test failed: {}: {}", r.location, r.name, r.failures.join("; ")))
            .collect();
        if !failed.is_empty() {
            return Err(failed);
        }
    }
    Ok((ruleset, routing))
}

/// Whether a tested ruleset goes live at once or waits for a second analyst.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    /// A reload that compiles and passes its tests goes live.
    #[default]
    Automatic,
    /// A reload proposes; another principal approves.
    Required,
}

impl std::str::FromStr for Approval {
    type Err = String;
    fn from_str(s: &str) -> Result<Approval, String> {
        crate::model::parse_name("approval", s, "automatic or required")
    }
}

/// A tested ruleset waiting for its second pair of eyes.
pub struct Proposal {
    pub version: String,
    pub proposed_by: Caller,
    pub proposed_at: UnixSeconds,
    ruleset: Ruleset,
    routing: Routing,
}

/// Why an approval was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("no ruleset is waiting for approval (propose one first)")]
    NothingPending,
    #[error("version `{wanted}` is not the one waiting for approval (`{pending}`)")]
    OtherVersion { wanted: String, pending: String },
    #[error("`{0}` proposed this ruleset and cannot also approve it: a second analyst must")]
    OwnProposal(String),
    #[error("approval needs a known principal: the server trusts every caller (no TLS or tokens)")]
    Anonymous,
}

impl TransferGuard {
    /// Rules go live after a second analyst's approval from now on.
    pub fn with_approval(mut self, approval: Approval) -> Self {
        self.approval = approval;
        self
    }

    pub fn approval(&self) -> Approval {
        self.approval
    }

    /// Compiles and tests the folder and holds it for approval, replacing any
    /// earlier proposal. The running rules do not change.
    pub fn propose(&self, by: &Caller) -> Result<(String, UnixSeconds), Vec<String>> {
        let (ruleset, routing) = load_checked(&self.rules_dir)?;
        let version = ruleset.version.to_string();
        let proposed_at = self.now();
        tracing::info!(%version, %by, "ruleset proposed; waiting for a second analyst");
        self.audit(by, || AuditRecord::RulesProposed { at: proposed_at, version: version.clone() });
        *lock(&self.proposal) =
            Some(Proposal { version: version.clone(), proposed_by: by.clone(), proposed_at, ruleset, routing });
        Ok((version, proposed_at))
    }

    /// Makes the proposed `version` live, if `by` is not its proposer.
    pub fn approve(&self, version: &str, by: &Caller) -> Result<Reload, ApprovalError> {
        let mut pending = lock(&self.proposal);
        let checked = match pending.as_ref() {
            None => Err(ApprovalError::NothingPending),
            Some(p) if p.version != version => {
                Err(ApprovalError::OtherVersion { wanted: version.into(), pending: p.version.clone() })
            }
            Some(_) if !matches!(by, Caller::Known(_)) => Err(ApprovalError::Anonymous),
            Some(p) if p.proposed_by == *by => Err(ApprovalError::OwnProposal(by.to_string())),
            Some(p) => Ok(p.proposed_by.to_string()),
        };
        let proposed_by = match checked {
            Ok(p) => p,
            Err(e) => {
                self.audit(by, || AuditRecord::RulesApproved {
                    at: self.now(),
                    version: version.to_string(),
                    proposed_by: pending.as_ref().map(|p| p.proposed_by.to_string()).unwrap_or_default(),
                    approved: false,
                    why: e.to_string(),
                });
                return Err(e);
            }
        };
        let p = pending.take().expect("checked above");
        if self.cluster_ids.get().is_some() {
            tracing::info!(version = %p.version, %proposed_by, approved_by = %by, "ruleset approved; live once every node has loaded it");
            *lock(&self.staged) = Some((p.ruleset, p.routing));
        } else {
            self.ruleset.store(Arc::new(p.ruleset));
            self.routing.store(Arc::new(p.routing));
            self.metrics.set_ruleset(&p.version);
            tracing::info!(version = %p.version, %proposed_by, approved_by = %by, "ruleset approved and live");
        }
        self.audit(by, || AuditRecord::RulesApproved {
            at: self.now(),
            version: p.version.clone(),
            proposed_by,
            approved: true,
            why: String::new(),
        });
        let reload = Reload { reloaded: true, version: p.version, errors: Vec::new() };
        *lock(&self.last_reload) = Some((self.now(), reload.clone()));
        Ok(reload)
    }

    /// The clustered mode: the version loaded and waiting for the other nodes.
    pub fn staged_version(&self) -> Option<String> {
        lock(&self.staged).as_ref().map(|(r, _)| r.version.to_string())
    }

    /// The clustered mode: makes the staged `version` live (every node has
    /// loaded it). False when another version, or none, is staged.
    pub fn activate_staged(&self, version: &str) -> bool {
        let mut staged = lock(&self.staged);
        if staged.as_ref().is_none_or(|(r, _)| *r.version != *version) {
            return false;
        }
        let (ruleset, routing) = staged.take().expect("checked above");
        self.ruleset.store(Arc::new(ruleset));
        self.routing.store(Arc::new(routing));
        self.metrics.set_ruleset(version);
        tracing::info!(version, "every node has loaded the rules: live");
        self.audit(&Caller::Service, || AuditRecord::Ruleset {
            at: self.now(),
            version: version.to_string(),
            loaded: true,
            errors: 0,
        });
        let reload = Reload { reloaded: true, version: version.to_string(), errors: Vec::new() };
        *lock(&self.last_reload) = Some((self.now(), reload));
        true
    }

    /// The proposal waiting for approval: (version, proposer, when).
    pub fn pending_proposal(&self) -> Option<(String, String, UnixSeconds)> {
        lock(&self.proposal).as_ref().map(|p| (p.version.clone(), p.proposed_by.to_string(), p.proposed_at))
    }

    /// Recompiles and tests the rules folder; swaps it in only if all is
    /// well. Under [`Approval::Required`] it swaps nothing: it proposes.
    pub fn reload(&self, by: &Caller) -> Reload {
        let reload = self.reload_now(by);
        *lock(&self.last_reload) = Some((self.now(), reload.clone()));
        reload
    }

    fn reload_now(&self, by: &Caller) -> Reload {
        if self.approval == Approval::Required {
            let running = self.ruleset.load().version.to_string();
            return match self.propose(by) {
                Ok((version, _)) if version == running => Reload { reloaded: false, version: running, errors: Vec::new() },
                Ok((version, _)) => Reload {
                    reloaded: false,
                    version: running,
                    errors: vec![format!(
                        "approval required: version `{version}` is proposed and goes live when a second analyst approves it (rules approve {version})"
                    )],
                },
                Err(errors) => Reload { reloaded: false, version: running, errors },
            };
        }
        let started = std::time::Instant::now();
        let result = load_checked(&self.rules_dir);
        self.metrics.reload_seconds.observe(started.elapsed().as_secs_f64());
        match result {
            Ok((ruleset, routing)) if self.cluster_ids.get().is_some() => {
                let version = ruleset.version.to_string();
                let running = self.ruleset.load().version.to_string();
                if version == running {
                    *lock(&self.staged) = None;
                    return Reload { reloaded: false, version: running, errors: Vec::new() };
                }
                tracing::info!(%version, "rules loaded and staged: live once every node has loaded them");
                *lock(&self.staged) = Some((ruleset, routing));
                Reload {
                    reloaded: false,
                    version: running,
                    errors: vec![format!(
                        "clustered: version `{version}` is loaded here and goes live on every node once every node has loaded it"
                    )],
                }
            }
            Ok((ruleset, routing)) => {
                let version = ruleset.version.to_string();
                self.ruleset.store(Arc::new(ruleset));
                self.routing.store(Arc::new(routing));
                self.metrics.set_ruleset(&version);
                tracing::info!(%version, "rules reloaded");
                self.audit(by, || AuditRecord::Ruleset {
                    at: self.now(),
                    version: version.clone(),
                    loaded: true,
                    errors: 0,
                });
                Reload { reloaded: true, version, errors: Vec::new() }
            }
            Err(errors) => {
                self.metrics.reload_failures.inc();
                self.audit(by, || AuditRecord::Ruleset {
                    at: self.now(),
                    version: self.ruleset.load().version.to_string(),
                    loaded: false,
                    errors: errors.len(),
                });
                tracing::error!(errors = errors.len(), first = %errors.first().map_or("", |e| e.as_str()), "rules reload refused; the running ruleset stays");
                Reload { reloaded: false, version: self.ruleset.load().version.to_string(), errors }
            }
        }
    }
}
