//! The composition root: the one place that builds a running service from its
//! parts — the rules folder compiled and tested, the durable store (when asked
//! for) recovered into the state, the audit trail, the clock — in the one order
//! that is right. `serve`, the in-process bench and the test harness all build
//! through [`build`].
//!
//! Must not hold business logic (that is `service`) or serve anything (that is
//! `server`).

use crate::audit::AuditLog;
use crate::clock::{Clock, SystemClock};
use crate::service::TransferGuard;
use crate::store::{Durability, Store, StoreError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a service is built from.
#[derive(Debug, Clone)]
pub struct Setup {
    pub rules_dir: PathBuf,
    /// The audit trail (`audit.jsonl`) and, when durable, the store (`store/`).
    pub data_dir: PathBuf,
    pub durability: Durability,
    pub clock: Arc<dyn Clock>,
    /// How long resolved alerts and alert events are kept, in seconds.
    pub alert_retention_secs: i64,
    /// Whether a new ruleset needs a second analyst's approval.
    pub approval: crate::service::Approval,
}

impl Setup {
    /// Real time; `durability` as given.
    pub fn new(rules_dir: impl Into<PathBuf>, data_dir: impl Into<PathBuf>, durability: Durability) -> Setup {
        Setup {
            rules_dir: rules_dir.into(),
            data_dir: data_dir.into(),
            durability,
            clock: Arc::new(SystemClock),
            alert_retention_secs: crate::service::DEFAULT_ALERT_RETENTION_SECS,
            approval: crate::service::Approval::Automatic,
        }
    }

    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Setup {
        Setup { clock, ..self }
    }
}

/// A built service and what it was built with.
pub struct App {
    pub guard: Arc<TransferGuard>,
    /// The durable store, when there is one.
    pub store: Option<Arc<Store>>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("the rules in {dir} did not load ({} error(s)):\n{}", errors.len(), errors.join("\n\n"))]
    Rules { dir: String, errors: Vec<String> },
    #[error("cannot create the data dir {dir}: {source}")]
    DataDir { dir: String, source: std::io::Error },
    #[error("cannot open the audit file {path}: {source}")]
    Audit { path: String, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read {what} {path}: {source}")]
    TrustFile { what: &'static str, path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    TokenKey { path: String, source: crate::auth::token::KeyError },
}

/// In the clustered mode with TLS: how a node reaches the others when it
/// forwards a call — TLS, their certificates verified against the client CA
/// (one bank CA signs the nodes' certificates). When this node's certificate
/// names it as a node (`spiffe://<domain>/node/<id>`) it presents it, and
/// the owner believes whom it says a certificate caller is; either way the
/// caller's bearer token goes with the call.
pub fn peer_tls(security: &crate::config::Security) -> Result<Option<tonic::transport::ClientTlsConfig>, AppError> {
    let (Some((cert, key)), Some(ca)) = (&security.tls, &security.client_ca) else { return Ok(None) };
    let read = |what: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| AppError::TrustFile { what, path: path.display().to_string(), source })
    };
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read("the client CA", ca)?));
    let cert = read("the TLS certificate", cert)?;
    let names_node = x509_parser::pem::parse_x509_pem(&cert).ok().is_some_and(|(_, pem)| {
        crate::api::identity::spiffe_id(&pem.contents)
            .is_ok_and(|id| crate::api::identity::node_of(id, &security.trust_domain).is_some())
    });
    if names_node {
        tls = tls.identity(tonic::transport::Identity::from_pem(cert, read("the TLS key", key)?));
    }
    Ok(Some(tls))
}

/// The identity settings made real: how callers are identified, and the
/// server's TLS (with the client CA when callers present certificates).
pub fn trust(
    security: &crate::config::Security,
) -> Result<(crate::api::identity::Trust, Option<tonic::transport::ServerTlsConfig>), AppError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |what: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| AppError::TrustFile { what, path: path.display().to_string(), source })
    };
    let tls = match &security.tls {
        None => None,
        Some((cert, key)) => {
            let mut tls = ServerTlsConfig::new()
                .identity(Identity::from_pem(read("the TLS certificate", cert)?, read("the TLS key", key)?));
            if let Some(ca) = &security.client_ca {
                // Optional at the handshake so a person may come with a token
                // instead; the gate refuses a call with neither.
                tls = tls.client_ca_root(Certificate::from_pem(read("the client CA", ca)?)).client_auth_optional(true);
            }
            Some(tls)
        }
    };
    if !security.identifies_callers() {
        return Ok((crate::api::identity::Trust::Open, tls));
    }
    let tokens = match &security.token_public_key {
        None => None,
        Some(path) => {
            let text = String::from_utf8_lossy(&read("the token public key", path)?).into_owned();
            let verifier = crate::auth::token::TokenVerifier::from_paserk(&text)
                .map_err(|source| AppError::TokenKey { path: path.display().to_string(), source })?;
            Some(verifier)
        }
    };
    Ok((crate::api::identity::Trust::Enforced { trust_domain: security.trust_domain.clone(), tokens }, tls))
}

/// Compiles and tests the rules folder and builds the service on it, with
/// nothing attached yet (store tools and the bench add what they need).
pub fn open_rules(rules_dir: &Path) -> Result<TransferGuard, AppError> {
    TransferGuard::open(rules_dir).map_err(|errors| AppError::Rules { dir: rules_dir.display().to_string(), errors })
}

/// Opens the durable store in `data_dir/store`, recovers it into `guard` and
/// keeps it writing there.
pub fn attach_store(guard: TransferGuard, data_dir: &Path) -> Result<(TransferGuard, Arc<Store>), AppError> {
    let store = Arc::new(Store::open(&data_dir.join("store"))?);
    Ok((guard.with_store(store.clone())?, store))
}

/// Builds the service: rules, clock, store (recovered), audit trail.
pub fn build(setup: &Setup) -> Result<App, AppError> {
    let guard = open_rules(&setup.rules_dir)?
        .with_clock(setup.clock.clone())
        .with_alert_retention(setup.alert_retention_secs)
        .with_approval(setup.approval);
    std::fs::create_dir_all(&setup.data_dir)
        .map_err(|source| AppError::DataDir { dir: setup.data_dir.display().to_string(), source })?;
    let (guard, store) = match setup.durability {
        Durability::Sync => {
            let (guard, store) = attach_store(guard, &setup.data_dir)?;
            (guard, Some(store))
        }
        Durability::None => (guard, None),
    };
    let audit_path = setup.data_dir.join("audit.jsonl");
    let audit = AuditLog::open(&audit_path)
        .map_err(|source| AppError::Audit { path: audit_path.display().to_string(), source })?;
    Ok(App { guard: Arc::new(guard.with_audit(audit)), store })
}
