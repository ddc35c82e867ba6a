//! The API server: accepts TLS connections, identifies the caller from its
//! certificate, checks the role table, audits, and calls into the node.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use caisson_pki::ClientIdentity;
use futures_util::TryStreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::audit::{AuditLog, AuditRecord};
use crate::endpoint::{Endpoint, Mode};
use crate::error::ApiError;
use crate::types::{
    ApplyRequest, ApplyResponse, Health, LogQuery, ResetRequest, RollbackRequest, RollbackResponse, ServiceStatus,
    UpgradeFetchRequest, UpgradeQuery, UpgradeResponse, VersionInfo,
};

/// Lines of a log, as the node produces them. The stream ends when the
/// sender is dropped (history only) or the client goes away (follow).
pub type LogLines = mpsc::Receiver<String>;

/// An update bundle as it arrives: read it once, in order.
pub type BundleStream = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// Where an upgrade's bundle comes from.
pub enum UpgradeSource {
    /// Streamed in the request body.
    Upload(BundleStream),
    /// To be fetched by the node (an `http://` mirror on the site).
    Url(String),
}

/// How an upgrade runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpgradeOptions {
    pub stage: bool,
    pub measure_disk: bool,
}

/// What the node does for the API. The node-agent implements it.
pub trait NodeOps: Send + Sync + 'static {
    fn version(&self) -> VersionInfo;
    fn health(&self) -> impl Future<Output = Health> + Send;
    /// The current config, secrets masked; None in maintenance mode.
    fn config_redacted(&self) -> Option<String>;
    fn apply_config(&self, req: ApplyRequest) -> impl Future<Output = Result<ApplyResponse, ApiError>> + Send;
    fn confirm_config(&self) -> impl Future<Output = Result<(), ApiError>> + Send;
    fn services(&self) -> Vec<ServiceStatus>;
    fn restart_service(&self, name: &str) -> impl Future<Output = Result<(), ApiError>> + Send;
    /// `source`: "agent", a service name, or "kernel".
    fn logs(&self, source: &str, tail: usize, follow: bool) -> Result<LogLines, ApiError>;
    fn reboot(&self) -> Result<(), ApiError>;
    fn shutdown(&self) -> Result<(), ApiError>;
    /// Wipe STATE and DATA and return to maintenance mode.
    fn reset(&self) -> Result<(), ApiError>;
    /// Verify a bundle and write it to the inactive slot; `by` is the
    /// caller's common name. Refuses a second upgrade while one runs.
    fn upgrade(
        &self,
        source: UpgradeSource,
        options: UpgradeOptions,
        by: String,
    ) -> impl Future<Output = Result<UpgradeResponse, ApiError>> + Send;
    /// k3s's admin kubeconfig (servers only), as k3s wrote it.
    fn kubeconfig(&self) -> Result<String, ApiError>;
    /// Make the other, known-good slot boot next.
    fn rollback(&self, req: RollbackRequest, by: String)
        -> impl Future<Output = Result<RollbackResponse, ApiError>> + Send;
}

/// Who is calling, established once per connection.
#[derive(Debug, Clone)]
pub struct Caller {
    pub peer: SocketAddr,
    /// None: no certificate. Some(Err): a CA-signed certificate without a
    /// valid role.
    pub identity: Option<Result<ClientIdentity, String>>,
}

impl Caller {
    pub fn names(&self) -> (String, String) {
        match &self.identity {
            Some(Ok(id)) => (id.common_name.clone(), id.role.to_string()),
            _ => ("-".into(), "-".into()),
        }
    }
}

struct App<T> {
    ops: Arc<T>,
    audit: Arc<AuditLog>,
    mode: Mode,
}

impl<T: NodeOps> App<T> {
    fn record(&self, caller: &Caller, endpoint: Endpoint, args: serde_json::Value, result: String) {
        let (cn, role) = caller.names();
        let record = AuditRecord::now(&cn, &role, endpoint.name(), args, result);
        if let Err(e) = self.audit.append(&record) {
            tracing::error!("audit log {}: {e}", self.audit.path().display());
        }
    }

    /// The gate every handler goes through. Refusals are audited.
    fn authorize(&self, caller: &Caller, endpoint: Endpoint, args: &serde_json::Value) -> Result<(), ApiError> {
        let verdict = match (self.mode, &caller.identity) {
            (Mode::Maintenance, _) if endpoint.allowed_in_maintenance() => Ok(()),
            (Mode::Maintenance, _) => Err(ApiError::Maintenance { endpoint: endpoint.name() }),
            (Mode::Normal, None) => Err(ApiError::NoClientCertificate),
            (Mode::Normal, Some(Err(why))) => Err(ApiError::BadRole(why.clone())),
            (Mode::Normal, Some(Ok(id))) if endpoint.allows(id.role) => Ok(()),
            (Mode::Normal, Some(Ok(id))) => {
                Err(ApiError::Forbidden { role: id.role.to_string(), endpoint: endpoint.name() })
            }
        };
        if let Err(e) = &verdict {
            self.record(caller, endpoint, args.clone(), format!("refused: {e}"));
        }
        verdict
    }

    /// Audit the outcome of a mutating call.
    fn outcome<R>(&self, caller: &Caller, endpoint: Endpoint, args: serde_json::Value, r: &Result<R, ApiError>) {
        if endpoint.is_mutating() {
            let result = match r {
                Ok(_) => "ok".to_string(),
                Err(e) => format!("error: {e}"),
            };
            self.record(caller, endpoint, args, result);
        }
    }
}

type S<T> = State<Arc<App<T>>>;
type C = Extension<Caller>;

async fn version<T: NodeOps>(State(app): S<T>, Extension(c): C) -> Result<Json<VersionInfo>, ApiError> {
    app.authorize(&c, Endpoint::Version, &json!(null))?;
    Ok(Json(app.ops.version()))
}

async fn health<T: NodeOps>(State(app): S<T>, Extension(c): C) -> Result<Json<Health>, ApiError> {
    app.authorize(&c, Endpoint::Health, &json!(null))?;
    Ok(Json(app.ops.health().await))
}

async fn config_get<T: NodeOps>(State(app): S<T>, Extension(c): C) -> Result<String, ApiError> {
    app.authorize(&c, Endpoint::ConfigGet, &json!(null))?;
    app.ops.config_redacted().ok_or_else(|| ApiError::NotFound("machine config".into()))
}

async fn config_apply<T: NodeOps>(
    State(app): S<T>,
    Extension(c): C,
    Json(req): Json<ApplyRequest>,
) -> Result<Json<ApplyResponse>, ApiError> {
    // The config itself may hold secrets: the audit line records its size
    // and digest, never its text.
    let args = json!({
        "mode": req.mode,
        "dry_run": req.dry_run,
        "try_timeout_secs": req.try_timeout_secs,
        "config_bytes": req.config.len(),
    });
    app.authorize(&c, Endpoint::ConfigApply, &args)?;
    let r = app.ops.apply_config(req).await;
    app.outcome(&c, Endpoint::ConfigApply, args, &r);
    r.map(Json)
}

async fn config_confirm<T: NodeOps>(State(app): S<T>, Extension(c): C) -> Result<Json<serde_json::Value>, ApiError> {
    app.authorize(&c, Endpoint::ConfigConfirm, &json!(null))?;
    let r = app.ops.confirm_config().await;
    app.outcome(&c, Endpoint::ConfigConfirm, json!(null), &r);
    r.map(|()| Json(json!({ "confirmed": true })))
}

async fn services<T: NodeOps>(State(app): S<T>, Extension(c): C) -> Result<Json<Vec<ServiceStatus>>, ApiError> {
    app.authorize(&c, Endpoint::ServicesList, &json!(null))?;
    Ok(Json(app.ops.services()))
}

async fn service_restart<T: NodeOps>(
    State(app): S<T>,
    Extension(c): C,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let args = json!({ "service": name });
    app.authorize(&c, Endpoint::ServiceRestart, &args)?;
    let r = app.ops.restart_service(&name).await;
    app.outcome(&c, Endpoint::ServiceRestart, args, &r);
    r.map(|()| Json(json!({ "restarted": name })))
}

fn stream_lines(mut rx: LogLines) -> Body {
    let stream = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|o| o.map(|mut line| {
            line.push('\n');
            Ok::<_, std::convert::Infallible>(line)
        }))
    });
    Body::from_stream(stream)
}

async fn logs<T: NodeOps>(
    State(app): S<T>,
    Extension(c): C,
    Path(source): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Body, ApiError> {
    app.authorize(&c, Endpoint::Logs, &json!({ "source": source }))?;
    let rx = app.ops.logs(&source, q.tail.unwrap_or(100), q.follow)?;
    Ok(stream_lines(rx))
}

async fn dmesg<T: NodeOps>(State(app): S<T>, Extension(c): C, Query(q): Query<LogQuery>) -> Result<Body, ApiError> {
    app.authorize(&c, Endpoint::Dmesg, &json!(null))?;
    let rx = app.ops.logs("kernel", q.tail.unwrap_or(usize::MAX), q.follow)?;
    Ok(stream_lines(rx))
}

async fn reboot<T: NodeOps>(State(app): S<T>, Extension(c): C) -> Result<Json<serde_json::Value>, ApiError> {
    app.authorize(&c, Endpoint::Reboot, &json!(null))?;
    let r = app.ops.reboot();
    app.outcome(&c, Endpoint::Reboot, json!(null), &r);
    r.map(|()| Json(json!({ "rebooting": true })))
}

async fn shutdown<T: NodeOps>(State(app): S<T>, Extension(c): C) -> Result<Json<serde_json::Value>, ApiError> {
    app.authorize(&c, Endpoint::Shutdown, &json!(null))?;
    let r = app.ops.shutdown();
    app.outcome(&c, Endpoint::Shutdown, json!(null), &r);
    r.map(|()| Json(json!({ "shutting_down": true })))
}

async fn reset<T: NodeOps>(
    State(app): S<T>,
    Extension(c): C,
    Json(req): Json<ResetRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let args = json!({ "confirm": req.confirm });
    app.authorize(&c, Endpoint::Reset, &args)?;
    let r = if req.confirm {
        app.ops.reset()
    } else {
        Err(ApiError::BadRequest("reset wipes STATE and DATA: send {\"confirm\": true}".into()))
    };
    app.outcome(&c, Endpoint::Reset, args, &r);
    r.map(|()| Json(json!({ "resetting": true })))
}

async fn audit_tail<T: NodeOps>(
    State(app): S<T>,
    Extension(c): C,
    Query(q): Query<LogQuery>,
) -> Result<Json<Vec<AuditRecord>>, ApiError> {
    app.authorize(&c, Endpoint::Audit, &json!(null))?;
    app.audit
        .tail(q.tail.unwrap_or(100))
        .map(Json)
        .map_err(|e| ApiError::Internal(format!("audit log {}: {e}", app.audit.path().display())))
}

async fn upgrade<T: NodeOps>(
    State(app): S<T>,
    Extension(c): C,
    Query(q): Query<UpgradeQuery>,
    body: Body,
) -> Result<Json<UpgradeResponse>, ApiError> {
    let args = json!({ "source": "upload", "stage": q.stage });
    app.authorize(&c, Endpoint::Upgrade, &args)?;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader: BundleStream = Box::new(tokio_util::io::StreamReader::new(stream));
    let options = UpgradeOptions { stage: q.stage, measure_disk: q.measure_disk };
    let r = app.ops.upgrade(UpgradeSource::Upload(reader), options, c.names().0).await;
    app.outcome(&c, Endpoint::Upgrade, upgrade_args(args, &r), &r);
    r.map(Json)
}

async fn upgrade_fetch<T: NodeOps>(
    State(app): S<T>,
    Extension(c): C,
    Json(req): Json<UpgradeFetchRequest>,
) -> Result<Json<UpgradeResponse>, ApiError> {
    let args = json!({ "source": "url", "url": req.url, "stage": req.stage });
    app.authorize(&c, Endpoint::UpgradeFetch, &args)?;
    let options = UpgradeOptions { stage: req.stage, measure_disk: req.measure_disk };
    let r = app.ops.upgrade(UpgradeSource::Url(req.url), options, c.names().0).await;
    app.outcome(&c, Endpoint::UpgradeFetch, upgrade_args(args, &r), &r);
    r.map(Json)
}

/// The audit line of an upgrade names what was installed.
fn upgrade_args(mut args: serde_json::Value, r: &Result<UpgradeResponse, ApiError>) -> serde_json::Value {
    if let (Ok(done), Some(map)) = (r, args.as_object_mut()) {
        map.insert("version".into(), json!(done.version));
        map.insert("slot".into(), json!(done.slot));
        map.insert("signed_by".into(), json!(done.signed_by));
    }
    args
}

async fn rollback<T: NodeOps>(
    State(app): S<T>,
    Extension(c): C,
    body: Option<Json<RollbackRequest>>,
) -> Result<Json<RollbackResponse>, ApiError> {
    let req = body.map(|Json(r)| r).unwrap_or_default();
    let args = json!({ "reboot": req.reboot });
    app.authorize(&c, Endpoint::Rollback, &args)?;
    let r = app.ops.rollback(req, c.names().0).await;
    app.outcome(&c, Endpoint::Rollback, args, &r);
    r.map(Json)
}

async fn kubeconfig<T: NodeOps>(State(app): S<T>, Extension(c): C) -> Result<String, ApiError> {
    app.authorize(&c, Endpoint::Kubeconfig, &json!(null))?;
    let r = app.ops.kubeconfig();
    app.outcome(&c, Endpoint::Kubeconfig, json!(null), &r);
    r
}

fn route_path(e: Endpoint) -> &'static str {
    e.route().1
}

/// The router; one route per [`Endpoint`].
pub fn router<T: NodeOps>(ops: Arc<T>, audit: Arc<AuditLog>, mode: Mode) -> Router {
    let app = Arc::new(App { ops, audit, mode });
    Router::new()
        .route(route_path(Endpoint::Version), get(version::<T>))
        .route(route_path(Endpoint::Health), get(health::<T>))
        .route(route_path(Endpoint::ConfigGet), get(config_get::<T>).post(config_apply::<T>))
        .route(route_path(Endpoint::ConfigConfirm), post(config_confirm::<T>))
        .route(route_path(Endpoint::ServicesList), get(services::<T>))
        .route(route_path(Endpoint::ServiceRestart), post(service_restart::<T>))
        .route(route_path(Endpoint::Logs), get(logs::<T>))
        .route(route_path(Endpoint::Dmesg), get(dmesg::<T>))
        .route(route_path(Endpoint::Reboot), post(reboot::<T>))
        .route(route_path(Endpoint::Shutdown), post(shutdown::<T>))
        .route(route_path(Endpoint::Reset), post(reset::<T>))
        .route(route_path(Endpoint::Audit), get(audit_tail::<T>))
        .route(route_path(Endpoint::Upgrade), post(upgrade::<T>))
        .route(route_path(Endpoint::UpgradeFetch), post(upgrade_fetch::<T>))
        .route(route_path(Endpoint::Rollback), post(rollback::<T>))
        .route(route_path(Endpoint::Kubeconfig), get(kubeconfig::<T>))
        .with_state(app)
}

fn identify(conn: &rustls::ServerConnection) -> Option<Result<ClientIdentity, String>> {
    conn.peer_certificates()
        .and_then(|certs| certs.first())
        .map(|leaf| caisson_pki::client_identity(leaf.as_ref()).map_err(|e| e.to_string()))
}

/// Serve until `stop` turns true. One task per connection; a bad connection
/// never affects the others.
pub async fn serve(listener: TcpListener, tls: Arc<ServerConfig>, router: Router, mut stop: watch::Receiver<bool>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => {
                if *stop.borrow() { return; }
                continue;
            }
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("api: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::info!("api: TLS handshake with {peer} failed: {e}");
                    return;
                }
            };
            let caller = Caller { peer, identity: identify(stream.get_ref().1) };
            let service = TowerToHyperService::new(router.layer(Extension(caller)));
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("api: connection from {peer} ended: {e}");
            }
        });
    }
}
