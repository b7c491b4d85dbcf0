//! The clustered mode at the edge: a call about a customer whose partition
//! another node owns is forwarded to that node over gRPC, with the caller's
//! credentials and deadline, and answered with its answer; every answer says
//! which node gave it (`transfer-guard-node` metadata). A call that was already
//! forwarded once is never forwarded again: a node that no longer owns the
//! partition answers UNAVAILABLE, and the caller retries.
//!
//! Must not decide anything: it only picks where a call runs.

use crate::auth::Caller;
use crate::cluster::{Cluster, Route};
use dashmap::DashMap;
use std::sync::Arc;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

/// Response metadata: the node that answered.
pub const NODE_HEADER: &str = "transfer-guard-node";
/// Request metadata: the node that forwarded the call.
pub const FORWARDED_HEADER: &str = "transfer-guard-forwarded-by";

pub struct Forwarder {
    cluster: Arc<Cluster>,
    channels: DashMap<Arc<str>, Channel>,
    /// TLS to the other nodes (when this one serves TLS).
    tls: Option<tonic::transport::ClientTlsConfig>,
}

/// Where a call runs: here, or on the owner at the end of a channel.
pub enum Place {
    Here,
    There(Channel),
}

impl Forwarder {
    pub fn new(cluster: Arc<Cluster>, tls: Option<tonic::transport::ClientTlsConfig>) -> Forwarder {
        Forwarder { cluster, channels: DashMap::new(), tls }
    }

    fn channel(&self, addr: &Arc<str>) -> Result<Channel, Status> {
        if let Some(c) = self.channels.get(addr) {
            return Ok(c.clone());
        }
        let bad = |e: &dyn std::fmt::Display| Status::internal(format!("peer address {addr}: {e}"));
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Channel::from_shared(format!("{scheme}://{addr}")).map_err(|e| bad(&e))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|e| bad(&e))?;
        }
        let c = endpoint.connect_lazy();
        self.channels.insert(addr.clone(), c.clone());
        Ok(c)
    }

    /// Where the calls of `customer_id` run; a forwarded call must run here.
    pub fn place(&self, customer_id: &str, metadata: &MetadataMap) -> Result<Place, Status> {
        self.placed(self.cluster.route(customer_id), metadata)
    }

    /// Where changes to the alert `alert_id` are made: on the owner of the
    /// partition its id names (here for an id without one).
    pub fn place_alert(&self, alert_id: &str, metadata: &MetadataMap) -> Result<Place, Status> {
        match crate::alerts::partition_of_id(alert_id) {
            // An id naming a partition this cluster does not have is no alert of its
            // (not UNAVAILABLE: retrying would never help).
            Some(p) if p >= self.cluster.partitions() => Err(Status::not_found(format!("no alert `{alert_id}`"))),
            Some(p) => self.placed(self.cluster.route_partition(p), metadata),
            None => Ok(Place::Here),
        }
    }

    fn placed(&self, route: Route, metadata: &MetadataMap) -> Result<Place, Status> {
        match route {
            Route::Local => Ok(Place::Here),
            Route::Forward { node, .. } if metadata.get(FORWARDED_HEADER).is_some() => {
                Err(Status::unavailable(format!("forwarded here, but {node} owns this partition now; retry")))
            }
            Route::Forward { addr, .. } => Ok(Place::There(self.channel(&addr)?)),
            Route::Unavailable(why) => Err(Status::unavailable(why)),
        }
    }

    /// The call to send on: the caller's message, credentials and deadline,
    /// marked as forwarded by this node.
    pub fn outgoing<T: Clone>(&self, request: &Request<T>) -> Request<T> {
        let mut out = Request::new(request.get_ref().clone());
        for key in ["authorization", "grpc-timeout"] {
            if let Some(v) = request.metadata().get(key) {
                out.metadata_mut().insert(key, v.clone());
            }
        }
        if let Ok(me) = MetadataValue::try_from(self.cluster.node_id()) {
            out.metadata_mut().insert(FORWARDED_HEADER, me);
        }
        // Whom this node identified (believed by the owner only when this
        // node presents a node certificate; otherwise the token decides).
        if let Caller::Known(p) = crate::api::identity::caller_of(request) {
            if let Ok(v) = MetadataValue::try_from(crate::api::identity::spiffe_path(&p)) {
                out.metadata_mut().insert(crate::api::identity::CALLER_HEADER, v);
            }
        }
        out
    }

    /// Runs a forwarded call, for at most a lease: an owner that does not
    /// answer by then (stopped, cut off) is about to lose the partition anyway,
    /// and the caller is told to retry rather than left waiting.
    ///
    /// Boxed: a client call's future is large, and a handler awaiting it
    /// inline would carry it in its own future — which every call of that
    /// handler, forwarded or not, allocates and moves (26,000 instructions a
    /// screen, docs/performance.md).
    pub fn call<'a, R: Send + 'a>(
        &'a self,
        call: impl std::future::Future<Output = Result<R, Status>> + Send + 'a,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<R, Status>> + Send + 'a>> {
        let limit = self.cluster.lease();
        Box::pin(async move {
            match tokio::time::timeout(limit, call).await {
                Ok(answer) => answer,
                Err(_) => Err(Status::unavailable(format!(
                    "the node owning this customer did not answer within {} ms; retry",
                    limit.as_millis()
                ))),
            }
        })
    }

    /// Names this node as the one that answered.
    pub fn mark<T>(&self, mut response: Response<T>) -> Response<T> {
        if let Ok(me) = MetadataValue::try_from(self.cluster.node_id()) {
            response.metadata_mut().insert(NODE_HEADER, me);
        }
        response
    }

    /// Asks the other nodes in turn (a call about a transfer known only by
    /// its request id, not found here): the first answer other than
    /// NOT_FOUND. None when this call was itself forwarded, or nobody knew.
    pub async fn ask_peers<T: Clone, R, F, Fut>(
        &self,
        request: &Request<T>,
        call: F,
    ) -> Option<Result<Response<R>, Status>>
    where
        F: Fn(Channel, Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<R>, Status>> + Send,
        R: Send,
    {
        if request.metadata().get(FORWARDED_HEADER).is_some() {
            return None;
        }
        for (_, addr) in self.cluster.peers() {
            let Ok(channel) = self.channel(&addr) else { continue };
            match self.call(call(channel, self.outgoing(request))).await {
                Err(s) if matches!(s.code(), Code::NotFound | Code::Unavailable) => continue,
                answer => return Some(answer),
            }
        }
        None
    }

    /// Asks every other node (a question about all partitions, such as a
    /// station's alerts) and returns the answers they gave; a node that does
    /// not answer in time is left out (and logged). Nothing when this call was
    /// itself forwarded.
    pub async fn gather<T: Clone, R, F, Fut>(&self, request: &Request<T>, call: F) -> Vec<R>
    where
        F: Fn(Channel, Request<T>) -> Fut,
        Fut: std::future::Future<Output = Result<Response<R>, Status>> + Send,
        R: Send,
    {
        let mut answers = Vec::new();
        if request.metadata().get(FORWARDED_HEADER).is_some() {
            return answers;
        }
        for (node, addr) in self.cluster.peers() {
            let Ok(channel) = self.channel(&addr) else { continue };
            match self.call(call(channel, self.outgoing(request))).await {
                Ok(r) => answers.push(r.into_inner()),
                Err(s) => tracing::warn!(%node, code = ?s.code(), "a node did not answer; its part is missing"),
            }
        }
        answers
    }
}
