//! The clustered mode on the board: an alert whose partition another node
//! owns is shown from this node's copy of the book, and an officer's claim
//! or resolution of it is sent to the owner over gRPC, as the officer (their
//! bearer token), exactly as a gRPC client's call would be forwarded. The
//! page then waits (briefly) for the owner's change to reach this node's
//! copy, so the officer sees what they did.
//!
//! Must not change the alert here: only the owner does.

use super::{Act, Board, Viewer};
use crate::alerts::Alert;
use crate::api::convert;
use crate::api::forward::Forwarder;
use crate::api::proto as pb;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// How long the page waits for the owner's change to arrive in this node's book.
const CAUGHT_UP_WITHIN: Duration = Duration::from_secs(3);

impl Board {
    /// Makes `act` on `alert` on its owner at the end of `owner`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn act_on_owner(
        &self,
        f: &Forwarder,
        owner: Channel,
        viewer: &Viewer,
        alert: &Alert,
        officer: String,
        bearer: Option<&str>,
        act: Act,
    ) -> Response {
        let mut client = pb::alerts_client::AlertsClient::new(owner);
        let answer = match act {
            Act::Claim => {
                let r = as_viewer(bearer, pb::ClaimAlertRequest { alert_id: alert.id.clone(), officer_id: officer });
                f.call(client.claim_alert(f.outgoing(&r))).await
            }
            Act::Resolve { outcome, decision, note } => {
                let r = as_viewer(
                    bearer,
                    pb::ResolveAlertRequest {
                        alert_id: alert.id.clone(),
                        officer_id: officer,
                        outcome: convert::outcome_to_pb(outcome) as i32,
                        hold_decision: convert::hold_decision_to_pb(decision) as i32,
                        note,
                    },
                );
                f.call(client.resolve_alert(f.outgoing(&r))).await
            }
        };
        match answer {
            Ok(changed) => {
                self.caught_up(&changed.into_inner()).await;
                Redirect::to(&viewer.here).into_response()
            }
            Err(status) => {
                let code = match status.code() {
                    Code::FailedPrecondition | Code::Aborted | Code::AlreadyExists => StatusCode::CONFLICT,
                    Code::PermissionDenied | Code::Unauthenticated => StatusCode::FORBIDDEN,
                    Code::InvalidArgument => StatusCode::BAD_REQUEST,
                    Code::NotFound => StatusCode::NOT_FOUND,
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                };
                self.alert_response(viewer, alert, code, Some(status.message().to_string()))
            }
        }
    }

    /// Waits until this node's copy of the alert shows `changed` (or a while passed).
    async fn caught_up(&self, changed: &pb::Alert) {
        let deadline = tokio::time::Instant::now() + CAUGHT_UP_WITHIN;
        while tokio::time::Instant::now() < deadline {
            let here = self.guard.alerts().get(&changed.alert_id).map(|a| convert::alert_to_pb(&a));
            if here.is_some_and(|a| a.state == changed.state && a.officer_id == changed.officer_id) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A call made as the board's viewer: their token, if they signed in with one.
fn as_viewer<T>(bearer: Option<&str>, message: T) -> Request<T> {
    let mut r = Request::new(message);
    if let Some(v) = bearer.and_then(|t| format!("Bearer {t}").parse().ok()) {
        r.metadata_mut().insert("authorization", v);
    }
    r
}
