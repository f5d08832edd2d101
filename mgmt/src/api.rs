//! The REST endpoints and the operations they share with `/RPC`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dataplane::region::{
    COMMAND_DATA_MAX, Command, CommandKind, ConnState, Counter, MSRP_SESSION_SLOTS, Protocol,
    Region, ReloadResult, SESSION_ID_CAP, conn_id_core, unix_time_ms,
};
use serde_json::{Value, json};
use simd_json::prelude::*;

use crate::dump::{self, Order};
use crate::metrics::{self, STALL_MS};
use crate::time::rfc3339_ms;
use crate::{App, Mode};

// ------------------------------------------------------------------ errors

/// A 4xx/5xx answer with a JSON body `{"error": "...", "status": N}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.message, "status": self.status.as_u16()});
        (self.status, axum::Json(body)).into_response()
    }
}

type ApiResult = Result<(StatusCode, axum::Json<Value>), ApiError>;

fn ok(v: Value) -> ApiResult {
    Ok((StatusCode::OK, axum::Json(v)))
}

// ------------------------------------------------------------------ router

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/status", get(status))
        .route("/api/ws/connections", get(connections))
        .route("/api/ws/connections/{id}", get(connection))
        .route("/api/ws/connections/{id}/close", post(close))
        .route("/api/ws/connections/{id}/ping", post(ping))
        .route("/api/ws/connections/{id}/pong", post(pong))
        .route("/api/ws/disable", post(ws_disable))
        .route("/api/ws/enable", post(ws_enable))
        .route("/api/msrp/sessions", get(msrp_sessions))
        .route("/api/auth/reload", post(auth_reload))
        .route(
            "/api/msrp/sessions/{id}",
            axum::routing::delete(msrp_session_delete),
        )
        .route("/api/events", get(crate::events::stream))
        .route("/RPC", post(crate::rpc::handle))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            crate::auth::require_token,
        ))
        .with_state(app)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", uri.path()),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}

// ------------------------------------------------------------------ query strings

/// `key=value` pairs of a query string; unknown keys and repeated keys are
/// errors.
pub(crate) fn query_pairs(
    raw: Option<&str>,
    allowed: &[&str],
) -> Result<Vec<(String, String)>, ApiError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if !allowed.contains(&k.as_ref()) {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {k:?}; allowed: {}",
                allowed.join(", ")
            )));
        }
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(ApiError::bad_request(format!(
                "query parameter {k:?} given twice"
            )));
        }
        out.push((k.into_owned(), v.into_owned()));
    }
    Ok(out)
}

// ------------------------------------------------------------------ health, status, metrics

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    match metrics::render(&app.registry) {
        Ok((text, content_type)) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}"),
        )
        .into_response(),
    }
}

async fn healthz() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok"}))
}

fn readiness(app: &App, region: &Region) -> (bool, Value) {
    let now = unix_time_ms();
    let ages = metrics::heartbeat_ages(region, now);
    let stale = app.status.mode == Mode::Attached && region.is_stale();
    let ticking = metrics::all_ticking(&ages);
    let shutting_down = region.control().shutdown_requested();
    let ready = ticking && !stale && !shutting_down;
    let cores: Vec<Value> = ages
        .iter()
        .enumerate()
        .map(|(c, a)| {
            json!({
                "core": c,
                "heartbeat_age_ms": a,
                "ticking": a.is_some_and(|a| a <= STALL_MS),
            })
        })
        .collect();
    (
        ready,
        json!({
            "ready": ready,
            "stale_region": stale,
            "shutdown_requested": shutting_down,
            "cores": cores,
        }),
    )
}

async fn readyz(State(app): State<Arc<App>>) -> (StatusCode, axum::Json<Value>) {
    let region = app.regions.get();
    let (ready, body) = readiness(&app, &region);
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body))
}

async fn status(State(app): State<Arc<App>>) -> axum::Json<Value> {
    let region = app.regions.get();
    let h = region.header();
    let st = &app.status;
    let started = match st.started_unix_ms {
        0 => h.created_unix_ms,
        ms => ms,
    };
    let now = unix_time_ms();
    let ctl = region.control();
    let protocols: serde_json::Map<String, Value> = Protocol::ALL
        .iter()
        .map(|&p| (p.as_str().to_string(), Value::Bool(ctl.is_enabled(p))))
        .collect();
    let (ready, _) = readiness(&app, &region);
    axum::Json(json!({
        "version": st.version,
        "mode": st.mode.as_str(),
        "pid": h.pid,
        "started_ms": started,
        "started": rfc3339_ms(started),
        "uptime_seconds": now.saturating_sub(started) / 1000,
        "workers": region.cores(),
        "listeners": st.listeners.iter().map(|l| json!({
            "transport": l.transport,
            "address": l.address,
        })).collect::<Vec<_>>(),
        "sub_protocols": st.sub_protocols,
        "config_path": st.config_path.as_ref().map(|p| p.display().to_string()),
        "protocols_enabled": protocols,
        "ws_enabled": ctl.ws_enabled(),
        "ready": ready,
        "region": {
            "path": region.path().map(|p| p.display().to_string()),
            "layout_version": h.layout_version,
            "epoch": format!("{:016x}", h.epoch),
            "cores": h.cores,
            "slots_per_core": h.slots_per_core,
            "size_bytes": h.total_size,
        },
        "mgmt_uptime_seconds": app.started.elapsed().as_secs(),
    }))
}

// ------------------------------------------------------------------ dumps

/// Order and limit of a dump from query parameters.
fn dump_params(raw: Option<&str>) -> Result<(Order, usize), ApiError> {
    let mut order = Order::default();
    let mut limit = dump::DEFAULT_LIMIT;
    for (k, v) in query_pairs(raw, &["order", "limit"])? {
        match k.as_str() {
            "order" => {
                order =
                    Order::parse(&v).ok_or_else(|| ApiError::bad_request(dump::bad_order(&v)))?
            }
            _ => limit = dump::parse_limit(&v).map_err(ApiError::bad_request)?,
        }
    }
    Ok((order, limit))
}

async fn connections(State(app): State<Arc<App>>, RawQuery(q): RawQuery) -> ApiResult {
    let (order, limit) = dump_params(q.as_deref())?;
    let region = app.regions.get();
    ok(dump::dump(&region, order, limit))
}

/// Parse a connection id: decimal, or hex with `0x`.
pub(crate) fn parse_conn_id(s: &str) -> Result<u64, ApiError> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse::<u64>(),
    };
    parsed.map_err(|_| {
        ApiError::bad_request(format!(
            "invalid connection id {s:?}: expected an unsigned integer (decimal or 0x-hex)"
        ))
    })
}

fn unknown_conn(id: u64) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("unknown connection id {id}"))
}

async fn connection(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    let id = parse_conn_id(&id)?;
    let region = app.regions.get();
    match region.find_connection(id) {
        Some((_, c)) => ok(dump::conn_json(&c, unix_time_ms())),
        None => Err(unknown_conn(id)),
    }
}

// ------------------------------------------------------------------ actions

/// What an operator asks of one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Close { status: u16, reason: String },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

impl Action {
    fn name(&self) -> &'static str {
        match self {
            Action::Close { .. } => "close",
            Action::Ping(_) => "ping",
            Action::Pong(_) => "pong",
        }
    }
}

/// Close status codes an endpoint may send (RFC 6455 §7.4, IANA registry).
pub(crate) fn valid_close_status(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

pub(crate) fn close_action(status: Option<u64>, reason: Option<&str>) -> Result<Action, ApiError> {
    let (status, reason) = match (status, reason) {
        (None, None) => (1000, "Normal closure"),
        (s, r) => (s.unwrap_or(1000), r.unwrap_or("")),
    };
    let status = u16::try_from(status)
        .ok()
        .filter(|&s| valid_close_status(s))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid close status {status}: expected 1000-1003, 1007-1014 or 3000-4999"
            ))
        })?;
    if reason.len() > COMMAND_DATA_MAX {
        return Err(ApiError::bad_request(format!(
            "close reason too long: {} bytes, at most {COMMAND_DATA_MAX}",
            reason.len()
        )));
    }
    Ok(Action::Close {
        status,
        reason: reason.to_string(),
    })
}

pub(crate) fn control_data(data: Option<&str>) -> Result<Vec<u8>, ApiError> {
    let d = data.unwrap_or("");
    if d.len() > COMMAND_DATA_MAX {
        return Err(ApiError::bad_request(format!(
            "application data too long: {} bytes, at most {COMMAND_DATA_MAX}",
            d.len()
        )));
    }
    Ok(d.as_bytes().to_vec())
}

/// Post `action` for connection `id` to the reactor that owns it.
pub(crate) fn perform(region: &Region, id: u64, action: &Action) -> Result<Value, ApiError> {
    let core = conn_id_core(id);
    if core >= region.cores() {
        return Err(unknown_conn(id));
    }
    let (_, conn) = region.find_connection(id).ok_or_else(|| unknown_conn(id))?;
    match conn.state {
        ConnState::Open => {}
        ConnState::Handshake => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("connection {id} is still in its opening handshake"),
            ));
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("connection {id} is already closing"),
            ));
        }
    }
    let cmd = match action {
        Action::Close { status, reason } => Command::close(id, *status, reason.as_bytes()),
        Action::Ping(d) => Command::ping(id, d),
        Action::Pong(d) => Command::pong(id, d),
    };
    region.post_command(conn.core, cmd).map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the command ring of core {} is full; retry shortly",
                conn.core
            ),
        )
    })?;
    let mut body = json!({
        "id": id,
        "core": conn.core,
        "action": action.name(),
        "queued": true,
    });
    match action {
        Action::Close { status, reason } => {
            body["status"] = json!(status);
            body["reason"] = json!(reason);
        }
        Action::Ping(d) | Action::Pong(d) => {
            body["data"] = json!(String::from_utf8_lossy(d));
        }
    }
    Ok(body)
}

/// A request body: empty, or a JSON object (parsed with simd-json) whose
/// keys are all in `allowed`.
fn body_object(body: &Bytes, allowed: &[&str]) -> Result<simd_json::OwnedValue, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(simd_json::OwnedValue::object());
    }
    let mut buf = body.to_vec();
    let v = simd_json::to_owned_value(&mut buf)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(ApiError::bad_request("the JSON body must be an object"));
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown field {k:?}; allowed: {}",
            allowed.join(", ")
        )));
    }
    Ok(v)
}

fn opt_str<'a>(v: &'a simd_json::OwnedValue, key: &str) -> Result<Option<&'a str>, ApiError> {
    match v.get(key) {
        None => Ok(None),
        Some(x) if x.is_null() => Ok(None),
        Some(x) => x
            .as_str()
            .map(Some)
            .ok_or_else(|| ApiError::bad_request(format!("{key:?} must be a string"))),
    }
}

fn opt_u64(v: &simd_json::OwnedValue, key: &str) -> Result<Option<u64>, ApiError> {
    match v.get(key) {
        None => Ok(None),
        Some(x) if x.is_null() => Ok(None),
        Some(x) => x.as_u64().map(Some).ok_or_else(|| {
            ApiError::bad_request(format!("{key:?} must be a non-negative integer"))
        }),
    }
}

fn accepted(v: Value) -> ApiResult {
    Ok((StatusCode::ACCEPTED, axum::Json(v)))
}

async fn close(State(app): State<Arc<App>>, Path(id): Path<String>, body: Bytes) -> ApiResult {
    let id = parse_conn_id(&id)?;
    let b = body_object(&body, &["status", "reason"])?;
    let action = close_action(opt_u64(&b, "status")?, opt_str(&b, "reason")?)?;
    accepted(perform(&app.regions.get(), id, &action)?)
}

async fn ping(State(app): State<Arc<App>>, Path(id): Path<String>, body: Bytes) -> ApiResult {
    let id = parse_conn_id(&id)?;
    let b = body_object(&body, &["data"])?;
    let action = Action::Ping(control_data(opt_str(&b, "data")?)?);
    accepted(perform(&app.regions.get(), id, &action)?)
}

async fn pong(State(app): State<Arc<App>>, Path(id): Path<String>, body: Bytes) -> ApiResult {
    let id = parse_conn_id(&id)?;
    let b = body_object(&body, &["data"])?;
    let action = Action::Pong(control_data(opt_str(&b, "data")?)?);
    accepted(perform(&app.regions.get(), id, &action)?)
}

/// `ws.enable` / `ws.disable`.
pub(crate) fn set_ws_enabled(region: &Region, on: bool) -> Value {
    let was = region.control().ws_enabled();
    region.control().set_enabled(Protocol::Ws, on);
    if was != on {
        tracing::info!(
            enabled = on,
            "WebSocket {} by the management service",
            if on { "enabled" } else { "disabled" }
        );
    }
    json!({"ws_enabled": on, "changed": was != on})
}

async fn ws_disable(State(app): State<Arc<App>>) -> ApiResult {
    ok(set_ws_enabled(&app.regions.get(), false))
}

async fn ws_enable(State(app): State<Arc<App>>) -> ApiResult {
    ok(set_ws_enabled(&app.regions.get(), true))
}

// ------------------------------------------------------------------ users

/// How long a reload request waits for the process to answer (its main
/// thread looks every 250 ms).
const RELOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `auth.reload`: ask the process to read the users file again (the same
/// as SIGHUP) and wait for the answer, which the reload counters in the
/// stats region give. Blocks up to [`RELOAD_WAIT`]: call it off the
/// runtime's thread.
pub(crate) fn reload_users(region: &Region) -> Result<Value, ApiError> {
    let ok_word = Counter::UsersReloads(ReloadResult::Ok).index();
    let failed_word = Counter::UsersReloads(ReloadResult::Failed).index();
    let counts = || {
        let s = region.snapshot_counters();
        (s.raw(ok_word), s.raw(failed_word))
    };
    let before = counts();
    region.control().request_users_reload();
    let deadline = std::time::Instant::now() + RELOAD_WAIT;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (ok, failed) = counts();
        if failed != before.1 {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "the users file did not load (rtedge's log says why); the users in force stay",
            ));
        }
        if ok != before.0 {
            let users = region.snapshot_counters().raw(Counter::Users.index());
            return Ok(json!({"reloaded": true, "users": users}));
        }
        if std::time::Instant::now() >= deadline {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "the data plane did not answer the reload request",
            ));
        }
    }
}

async fn auth_reload(State(app): State<Arc<App>>) -> ApiResult {
    let region = app.regions.get();
    match tokio::task::spawn_blocking(move || reload_users(&region)).await {
        Ok(r) => ok(r?),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
    }
}

// ------------------------------------------------------------------ MSRP

/// `msrp.cmaplist`: every session the reactors publish in the stats
/// region's session table (session id, user, peer, connection id, expiry,
/// owning core), ordered by session id.
pub(crate) fn msrp_list(region: &Region) -> Value {
    let now = unix_time_ms();
    let mut list = region.msrp_sessions();
    list.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    let sessions: Vec<Value> = list
        .iter()
        .map(|s| {
            json!({
                "id": s.session_id,
                "user": s.user,
                "peer": s.peer,
                "conn_id": s.conn_id,
                "core": s.core,
                "expires_unix_ms": s.expires_unix_ms,
                "expires": rfc3339_ms(s.expires_unix_ms),
                "expires_in_secs": s.expires_unix_ms.saturating_sub(now) / 1000,
            })
        })
        .collect();
    json!({
        "total": sessions.len(),
        "sessions": sessions,
        "listed_per_core_max": MSRP_SESSION_SLOTS,
    })
}

async fn msrp_sessions(State(app): State<Arc<App>>, RawQuery(q): RawQuery) -> ApiResult {
    query_pairs(q.as_deref(), &[])?;
    ok(msrp_list(&app.regions.get()))
}

fn unknown_session(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("unknown MSRP session {id:?}"),
    )
}

/// The core that owns session `id`: its first two hex digits (see the
/// relay's session ids), if it could be one of ours.
pub(crate) fn session_core(id: &str) -> Option<u32> {
    let b = id.as_bytes();
    if b.len() < 3 || b.len() > SESSION_ID_CAP {
        return None;
    }
    let hex = |c: u8| match c {
        b'0'..=b'9' => Some(u32::from(c - b'0')),
        b'a'..=b'f' => Some(u32::from(c - b'a' + 10)),
        _ => None,
    };
    Some(hex(b[0])? << 4 | hex(b[1])?)
}

/// Drop MSRP session `id`: post `DropSession` to the owning core.
pub(crate) fn drop_session(region: &Region, id: &str) -> Result<Value, ApiError> {
    let core = session_core(id)
        .filter(|&c| c < region.cores())
        .ok_or_else(|| unknown_session(id))?;
    let s = region
        .find_msrp_session(core, id)
        .ok_or_else(|| unknown_session(id))?;
    let cmd = Command::new(CommandKind::DropSession, s.conn_id, 0, id.as_bytes());
    region.post_command(core, cmd).map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the command ring of core {core} is full; retry shortly"),
        )
    })?;
    Ok(json!({
        "id": id,
        "core": core,
        "user": s.user,
        "conn_id": s.conn_id,
        "action": "drop",
        "queued": true,
    }))
}

async fn msrp_session_delete(State(app): State<Arc<App>>, Path(id): Path<String>) -> ApiResult {
    ok(drop_session(&app.regions.get(), &id)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cores() {
        assert_eq!(session_core("00abcdefghijklmnopqrst"), Some(0));
        assert_eq!(session_core("1fabcdefghijklmnopqrst"), Some(31));
        assert_eq!(session_core("1F"), None);
        assert_eq!(session_core("ab"), None);
        assert_eq!(session_core("zzabc"), None);
        assert_eq!(session_core("é1abc"), None);
        assert_eq!(session_core(&"0".repeat(40)), None);
    }

    #[test]
    fn conn_ids() {
        assert_eq!(parse_conn_id("42"), Ok(42));
        assert_eq!(parse_conn_id("0x1000000000001"), Ok((1 << 48) | 1));
        assert!(parse_conn_id("-1").is_err());
        assert!(parse_conn_id("abc").is_err());
        assert!(parse_conn_id("18446744073709551616").is_err());
    }

    #[test]
    fn close_defaults_and_validation() {
        assert_eq!(
            close_action(None, None),
            Ok(Action::Close {
                status: 1000,
                reason: "Normal closure".into()
            })
        );
        assert_eq!(
            close_action(Some(4000), None),
            Ok(Action::Close {
                status: 4000,
                reason: String::new()
            })
        );
        for bad in [0, 999, 1004, 1005, 1006, 1015, 2999, 5000, 70000] {
            assert!(close_action(Some(bad), None).is_err(), "{bad}");
        }
        assert!(close_action(None, Some(&"x".repeat(COMMAND_DATA_MAX + 1))).is_err());
        assert!(close_action(None, Some(&"x".repeat(COMMAND_DATA_MAX))).is_ok());
    }

    #[test]
    fn query_strings() {
        assert_eq!(
            query_pairs(Some("order=used_desc&limit=3"), &["order", "limit"]).unwrap(),
            vec![
                ("order".to_string(), "used_desc".to_string()),
                ("limit".to_string(), "3".to_string())
            ]
        );
        assert!(query_pairs(Some("nope=1"), &["order"]).is_err());
        assert!(query_pairs(Some("order=a&order=b"), &["order"]).is_err());
        assert!(query_pairs(None, &[]).unwrap().is_empty());
    }

    #[test]
    fn perform_rejects_unknown_and_out_of_range_ids() {
        let r = Region::create_anonymous(2, 4).unwrap();
        let a = Action::Ping(vec![]);
        assert_eq!(
            perform(&r, 1, &a).unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            perform(&r, u64::MAX, &a).unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            perform(&r, 7 << 48, &a).unwrap_err().status,
            StatusCode::NOT_FOUND
        );
    }
}
