//! Rule reloads: a rules folder is compiled and its rule tests run before it
//! can go live, then swapped in whole; a folder with any error is refused and
//! the running rules stay.
//!
//! Must not swap a ruleset that failed its tests.

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

impl TransferGuard {
    /// Recompiles and tests the rules folder; swaps it in only if all is well.
    pub fn reload(&self) -> Reload {
        let started = std::time::Instant::now();
        let result = load_checked(&self.rules_dir);
        self.metrics.reload_seconds.observe(started.elapsed().as_secs_f64());
        match result {
            Ok((ruleset, routing)) => {
                let version = ruleset.version.to_string();
                self.ruleset.store(Arc::new(ruleset));
                self.routing.store(Arc::new(routing));
                self.metrics.set_ruleset(&version);
                tracing::info!(%version, "rules reloaded");
                self.audit(|| AuditRecord::Ruleset {
                    at: self.now(),
                    version: version.clone(),
                    loaded: true,
                    errors: 0,
                });
                Reload { reloaded: true, version, errors: Vec::new() }
            }
            Err(errors) => {
                self.metrics.reload_failures.inc();
                self.audit(|| AuditRecord::Ruleset {
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
