//! The edge of trust: a tower layer around every gRPC service that resolves
//! each call's caller (the client certificate's SPIFFE id, else a bearer
//! token) and applies the role table (`auth::Method::roles`) before any
//! handler runs. Handlers read the [`Caller`] from the request's extensions
//! and add the scope checks that need the body (`Api::check`).
//!
//! Health checks pass without an identity (load balancers probe them);
//! reflection needs any identity. Must not decide anything else.

use super::admission::{deadline_of, Admission, Budget};
use crate::auth::token::TokenVerifier;
use crate::auth::{Caller, IdentityError, Method, Principal};
use crate::service::TransferGuard;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

/// How callers are identified.
pub enum Trust {
    /// The embedded default: plaintext on loopback, every principal allowed.
    Open,
    /// Every call names a principal: a client certificate from `trust_domain`
    /// (verified by TLS against the client CA) or a token signed by the key
    /// whose public half is `tokens`.
    Enforced { trust_domain: String, tokens: Option<TokenVerifier> },
}

impl Trust {
    /// Who is calling, from the connection's certificate or the request's token.
    pub fn identify<B>(&self, request: &http::Request<B>) -> Result<Caller, IdentityError> {
        let Trust::Enforced { trust_domain, .. } = self else { return Ok(Caller::Open) };
        let certs = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().and_then(|i| i.peer_certs());
        let bearer = bearer_token(request.headers());
        if let Some(leaf) = certs.as_deref().and_then(|c| c.first()) {
            let uri = spiffe_id(leaf)?;
            if node_of(uri, trust_domain).is_none() {
                return Principal::from_spiffe(uri, trust_domain).map(Caller::Known);
            }
            // Another node of the cluster, forwarding a call: it speaks for
            // the caller whose certificate it verified, or passes their token.
            let spoken_for = request.headers().get(CALLER_HEADER).and_then(|v| v.to_str().ok());
            if let Some(path) = spoken_for {
                return Principal::from_spiffe(&format!("spiffe://{trust_domain}/{path}"), trust_domain)
                    .map(Caller::Known);
            }
        }
        self.bearer(bearer)
    }

    /// Who carries this bearer token (anyone at all when the server is open).
    pub fn bearer(&self, bearer: Option<&str>) -> Result<Caller, IdentityError> {
        let Trust::Enforced { tokens, .. } = self else { return Ok(Caller::Open) };
        match (bearer, tokens) {
            (Some(token), Some(verifier)) => verifier.verify(token.trim()).map(Caller::Known),
            (Some(_), None) => {
                Err(IdentityError::Token("this server accepts no tokens (no --token-public-key)".into()))
            }
            (None, _) => Err(IdentityError::Missing),
        }
    }
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    headers.get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
}

/// Request metadata a cluster node sets on a call it forwards for a caller it
/// identified by certificate: the caller's SPIFFE path (`role/scope/subject`).
/// Believed only from a peer whose own certificate names a node.
pub const CALLER_HEADER: &str = "transfer-guard-caller";

/// The cluster node a SPIFFE id names (`spiffe://<domain>/node/<id>`), if it names one.
pub fn node_of<'a>(uri: &'a str, trust_domain: &str) -> Option<&'a str> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (domain, path) = rest.split_once('/')?;
    let node = path.strip_prefix("node/")?;
    (domain.eq_ignore_ascii_case(trust_domain) && !node.is_empty() && !node.contains('/')).then_some(node)
}

/// The principal's SPIFFE path, as a node forwarding its call names it.
pub fn spiffe_path(p: &Principal) -> String {
    if p.scope.is_empty() {
        format!("{}/{}", p.role.as_str(), p.subject)
    } else {
        format!("{}/{}/{}", p.role.as_str(), p.scope, p.subject)
    }
}

/// The principal a client certificate names in its URI SAN.
pub fn spiffe_principal(der: &[u8], trust_domain: &str) -> Result<Principal, IdentityError> {
    Principal::from_spiffe(spiffe_id(der)?, trust_domain)
}

/// The one SPIFFE id in a certificate's URI SANs.
pub fn spiffe_id(der: &[u8]) -> Result<&str, IdentityError> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let san = cert.subject_alternative_name().map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let uris = san.iter().flat_map(|s| s.value.general_names.iter()).filter_map(|n| match n {
        GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(*uri),
        _ => None,
    });
    let mut found = None;
    for uri in uris {
        if found.is_some() {
            // SPIFFE: an X.509 SVID carries exactly one SPIFFE id.
            return Err(IdentityError::BadSpiffeId(uri.into(), "the certificate carries more than one SPIFFE id"));
        }
        found = Some(uri);
    }
    found.ok_or(IdentityError::NoSpiffeId)
}

/// PERMISSION_DENIED naming what was needed, counted and audited: every
/// refusal of a known caller, by the gate's role check or a handler's scope check.
pub fn denied(guard: &TransferGuard, caller: &Caller, method: &str, d: crate::auth::Denied) -> Status {
    guard.refused(caller, method, d.reason(), &d.to_string());
    Status::permission_denied(d.to_string())
}

/// The layer: one per server.
#[derive(Clone)]
pub struct Gate {
    trust: Arc<Trust>,
    guard: Arc<TransferGuard>,
    admission: Arc<Admission>,
}

impl Gate {
    pub fn new(trust: Arc<Trust>, guard: Arc<TransferGuard>, admission: Arc<Admission>) -> Gate {
        Gate { trust, guard, admission }
    }
}

impl<S> tower::Layer<S> for Gate {
    type Service = Gated<S>;
    fn layer(&self, inner: S) -> Gated<S> {
        Gated { gate: self.clone(), inner }
    }
}

#[derive(Clone)]
pub struct Gated<S> {
    gate: Gate,
    inner: S,
}

impl Gate {
    /// The caller and the RPC, or the status that refuses the call.
    fn admit<B>(&self, request: &http::Request<B>) -> Result<(Caller, Option<Method>), Status> {
        let path = request.uri().path();
        if path.starts_with("/grpc.health.v1.Health/") {
            return Ok((Caller::Open, None));
        }
        let method = Method::from_path(path);
        let name: &str = match method {
            Some(m) => m.name(),
            None => path,
        };
        let caller = self.trust.identify(request).map_err(|e| {
            self.guard.refused(&Caller::Open, name, "unauthenticated", &e.to_string());
            Status::unauthenticated(e.to_string())
        })?;
        if let (Caller::Known(p), Some(method)) = (&caller, method) {
            p.may_call(method).map_err(|d| denied(&self.guard, &caller, name, d))?;
        }
        Ok((caller, method))
    }
}

impl<S, B> tower::Service<http::Request<B>> for Gated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let (caller, method) = match self.gate.admit(&request) {
            Ok(admitted) => admitted,
            Err(status) => return Box::pin(std::future::ready(Ok(status.into_http()))),
        };
        let budget = method.and_then(|m| Budget::of(m).map(|b| (m, b)));
        let deadline = deadline_of(request.headers(), std::time::Instant::now());
        // `caller_of` reads a missing caller as open: no insert (and no allocation) then.
        if caller != Caller::Open {
            request.extensions_mut().insert(caller);
        }
        let call = self.inner.call(request);
        let Some((method, budget)) = budget else { return Box::pin(call) };
        // A slot before the body is decoded or any handler runs; past the
        // budget the answer is RESOURCE_EXHAUSTED at once.
        let gate = self.gate.clone();
        Box::pin(async move {
            match gate.admission.slot(budget, deadline).await {
                Ok(slot) => {
                    let response = call.await;
                    drop(slot);
                    response
                }
                Err(shed) => {
                    gate.guard.metrics().shed.with_label_values(&[method.name(), shed.why()]).inc();
                    Ok(shed.into_status().into_http())
                }
            }
        })
    }
}

/// The caller the gate put on a request (open when there was no gate: in-process tests of handlers).
pub fn caller_of<T>(request: &tonic::Request<T>) -> Caller {
    request.extensions().get::<Caller>().cloned().unwrap_or(Caller::Open)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn a_node_is_named_only_by_a_node_id_of_this_trust_domain() {
        assert_eq!(node_of("spiffe://bank.example/node/n1", "bank.example"), Some("n1"));
        assert_eq!(node_of("spiffe://BANK.example/node/n1", "bank.example"), Some("n1"));
        for not_a_node in [
            "spiffe://other.example/node/n1",
            "spiffe://bank.example/node/",
            "spiffe://bank.example/node/n1/extra",
            "spiffe://bank.example/teller/psbc/node",
            "https://bank.example/node/n1",
        ] {
            assert_eq!(node_of(not_a_node, "bank.example"), None, "{not_a_node}");
        }
    }

    #[test]
    fn the_path_a_node_speaks_for_names_the_same_principal() {
        for p in [Principal::new(Role::Teller, "psbc", "t-07"), Principal::new(Role::Analyst, "", "wang")] {
            let uri = format!("spiffe://bank.example/{}", spiffe_path(&p));
            assert_eq!(Principal::from_spiffe(&uri, "bank.example").unwrap(), p);
        }
    }
}
