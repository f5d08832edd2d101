//! `POST /RPC`: Kamailio-compatible JSON-RPC 2.0 (`ws.dump`, `ws.close`,
//! `ws.ping`, `ws.pong`, `ws.disable`, `ws.enable`, `msrp.cmaplist`, and
//! `system.listMethods`), request bodies parsed with simd-json, batches
//! supported.
//!
//! Parameters may be positional (`["used_desc", 10]`, as kamcmd sends them)
//! or named (`{"order": "used_desc", "limit": 10}`). A single failed call is
//! answered with a 4xx status (400 parse error, invalid request or invalid
//! params, 404 unknown method or connection, 409 connection not open, 503
//! ring full) and a JSON-RPC error object; batches answer 200 with one
//! response per call; notifications (no `id`) get none (204 if nothing is
//! left to answer).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use simd_json::OwnedValue;
use simd_json::prelude::*;

use crate::App;
use crate::api::{self, Action, ApiError};
use crate::dump::{self, Order};

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const INTERNAL_ERROR: i64 = -32603;
/// Server errors (JSON-RPC reserves -32000..-32099 for them).
const CONN_NOT_FOUND: i64 = -32001;
const CONN_NOT_OPEN: i64 = -32002;
const RING_FULL: i64 = -32003;

/// Every method, for `system.listMethods`.
const METHODS: &[&str] = &[
    "ws.dump",
    "ws.close",
    "ws.ping",
    "ws.pong",
    "ws.disable",
    "ws.enable",
    "msrp.cmaplist",
    "auth.reload",
    "system.listMethods",
];

struct RpcError {
    code: i64,
    message: String,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }
    fn params(message: impl Into<String>) -> RpcError {
        RpcError::new(INVALID_PARAMS, message)
    }
    fn http_status(&self) -> StatusCode {
        match self.code {
            METHOD_NOT_FOUND | CONN_NOT_FOUND => StatusCode::NOT_FOUND,
            CONN_NOT_OPEN => StatusCode::CONFLICT,
            RING_FULL => StatusCode::SERVICE_UNAVAILABLE,
            INTERNAL_ERROR => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl From<ApiError> for RpcError {
    fn from(e: ApiError) -> RpcError {
        let code = match e.status {
            StatusCode::BAD_REQUEST => INVALID_PARAMS,
            StatusCode::NOT_FOUND => CONN_NOT_FOUND,
            StatusCode::CONFLICT => CONN_NOT_OPEN,
            StatusCode::SERVICE_UNAVAILABLE => RING_FULL,
            _ => INTERNAL_ERROR,
        };
        RpcError::new(code, e.message)
    }
}

/// The `id` of a request as JSON (strings and numbers; anything else null).
fn id_json(v: &OwnedValue) -> Value {
    if let Some(s) = v.as_str() {
        json!(s)
    } else if let Some(u) = v.as_u64() {
        json!(u)
    } else if let Some(i) = v.as_i64() {
        json!(i)
    } else if let Some(f) = v.as_f64() {
        json!(f)
    } else {
        Value::Null
    }
}

fn error_response(id: Value, e: &RpcError) -> Value {
    json!({
        "jsonrpc": "2.0",
        "error": {"code": e.code, "message": e.message},
        "id": id,
    })
}

/// Positional or named parameters.
enum Params<'a> {
    None,
    Positional(&'a [OwnedValue]),
    Named(&'a simd_json::owned::Object),
}

impl<'a> Params<'a> {
    fn from(v: Option<&'a OwnedValue>) -> Result<Params<'a>, RpcError> {
        match v {
            None => Ok(Params::None),
            Some(v) if v.is_null() => Ok(Params::None),
            Some(v) => {
                if let Some(a) = v.as_array() {
                    Ok(Params::Positional(a.as_slice()))
                } else if let Some(o) = v.as_object() {
                    Ok(Params::Named(o))
                } else {
                    Err(RpcError::new(
                        INVALID_REQUEST,
                        "params must be an array or an object",
                    ))
                }
            }
        }
    }

    /// Checks that nothing beyond `names` was given.
    fn only(&self, names: &[&str]) -> Result<(), RpcError> {
        match self {
            Params::None => Ok(()),
            Params::Positional(a) if a.len() <= names.len() => Ok(()),
            Params::Positional(a) => Err(RpcError::params(format!(
                "expected at most {} parameter(s) ({}), got {}",
                names.len(),
                names.join(", "),
                a.len()
            ))),
            Params::Named(o) => match o.keys().find(|k| !names.contains(&k.as_str())) {
                None => Ok(()),
                Some(k) => Err(RpcError::params(format!(
                    "unknown parameter {k:?}; expected {}",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ))),
            },
        }
    }

    fn get(&self, i: usize, name: &str) -> Option<&'a OwnedValue> {
        let v = match self {
            Params::None => None,
            Params::Positional(a) => a.get(i),
            Params::Named(o) => o.get(name),
        };
        v.filter(|v| !v.is_null())
    }

    fn str(&self, i: usize, name: &str) -> Result<Option<&'a str>, RpcError> {
        match self.get(i, name) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| RpcError::params(format!("{name} must be a string"))),
        }
    }

    /// An unsigned integer, given as a number or a decimal/0x-hex string.
    fn u64(&self, i: usize, name: &str) -> Result<Option<u64>, RpcError> {
        match self.get(i, name) {
            None => Ok(None),
            Some(v) => {
                if let Some(u) = v.as_u64() {
                    Ok(Some(u))
                } else if let Some(s) = v.as_str() {
                    api::parse_conn_id(s).map(Some).map_err(|_| {
                        RpcError::params(format!("{name} must be an unsigned integer"))
                    })
                } else {
                    Err(RpcError::params(format!(
                        "{name} must be an unsigned integer"
                    )))
                }
            }
        }
    }
}

fn dispatch(app: &App, method: &str, p: &Params<'_>) -> Result<Value, RpcError> {
    let region = || app.regions.get();
    let conn_id = |p: &Params<'_>| {
        p.u64(0, "id")?
            .ok_or_else(|| RpcError::params("missing connection id (parameter 1 or \"id\")"))
    };
    match method {
        "ws.dump" => {
            p.only(&["order", "limit"])?;
            let order = match p.str(0, "order")? {
                None => Order::default(),
                Some(s) => Order::parse(s).ok_or_else(|| RpcError::params(dump::bad_order(s)))?,
            };
            let limit = match p.get(1, "limit") {
                None => dump::DEFAULT_LIMIT,
                Some(v) => {
                    let text = if let Some(s) = v.as_str() {
                        s.to_string()
                    } else if let Some(u) = v.as_u64() {
                        u.to_string()
                    } else {
                        return Err(RpcError::params("limit must be an integer"));
                    };
                    dump::parse_limit(&text).map_err(RpcError::params)?
                }
            };
            Ok(dump::dump(&region(), order, limit))
        }
        "ws.close" => {
            p.only(&["id", "status", "reason"])?;
            let id = conn_id(p)?;
            let action = api::close_action(p.u64(1, "status")?, p.str(2, "reason")?)?;
            Ok(api::perform(&region(), id, &action)?)
        }
        "ws.ping" | "ws.pong" => {
            p.only(&["id", "data"])?;
            let id = conn_id(p)?;
            let data = api::control_data(p.str(1, "data")?)?;
            let action = if method == "ws.ping" {
                Action::Ping(data)
            } else {
                Action::Pong(data)
            };
            Ok(api::perform(&region(), id, &action)?)
        }
        "ws.disable" | "ws.enable" => {
            p.only(&[])?;
            Ok(api::set_ws_enabled(&region(), method == "ws.enable"))
        }
        "msrp.cmaplist" => {
            p.only(&[])?;
            Ok(api::msrp_list(&region()))
        }
        // Blocks until the process answers: `handle` runs calls off the
        // runtime's thread.
        "auth.reload" => {
            p.only(&[])?;
            Ok(api::reload_users(&region())?)
        }
        "system.listMethods" => {
            p.only(&[])?;
            Ok(json!(METHODS))
        }
        other => Err(RpcError::new(
            METHOD_NOT_FOUND,
            format!("method not found: {other:?}"),
        )),
    }
}

/// One call: `None` for a notification.
fn call(app: &App, req: &OwnedValue) -> Option<(Value, StatusCode)> {
    let Some(obj) = req.as_object() else {
        let e = RpcError::new(INVALID_REQUEST, "a request must be a JSON object");
        return Some((error_response(Value::Null, &e), e.http_status()));
    };
    let id = obj.get("id");
    let id_ok = id.is_none_or(|v| v.is_null() || v.as_str().is_some() || v.is_number());
    let reply_id = id.map_or(Value::Null, id_json);
    let fail = |e: RpcError| {
        let status = e.http_status();
        Some((error_response(reply_id.clone(), &e), status))
    };
    if !id_ok {
        return fail(RpcError::new(
            INVALID_REQUEST,
            "id must be a string, a number or null",
        ));
    }
    if obj.get("jsonrpc").and_then(|v| v.as_str()) != Some("2.0") {
        return fail(RpcError::new(INVALID_REQUEST, "jsonrpc must be \"2.0\""));
    }
    let Some(method) = obj.get("method").and_then(|m| m.as_str()) else {
        return fail(RpcError::new(INVALID_REQUEST, "method must be a string"));
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !["jsonrpc", "method", "params", "id"].contains(&k.as_str()))
    {
        return fail(RpcError::new(
            INVALID_REQUEST,
            format!("unknown member {k:?} in the request"),
        ));
    }
    let result = Params::from(obj.get("params")).and_then(|p| dispatch(app, method, &p));
    id?;
    match result {
        Ok(v) => Some((
            json!({"jsonrpc": "2.0", "result": v, "id": reply_id}),
            StatusCode::OK,
        )),
        Err(e) => fail(e),
    }
}

pub(crate) async fn handle(State(app): State<Arc<App>>, body: Bytes) -> Response {
    // Off the (single) runtime thread: a call may wait for the data plane
    // (`auth.reload`), and metrics scrapes must not wait behind it.
    tokio::task::spawn_blocking(move || handle_blocking(&app, body))
        .await
        .unwrap_or_else(|e| {
            let e = RpcError::new(INTERNAL_ERROR, e.to_string());
            (e.http_status(), axum::Json(error_response(Value::Null, &e))).into_response()
        })
}

fn handle_blocking(app: &App, body: Bytes) -> Response {
    let mut buf = body.to_vec();
    let parsed = match simd_json::to_owned_value(&mut buf) {
        Ok(v) => v,
        Err(e) => {
            let e = RpcError::new(PARSE_ERROR, format!("parse error: {e}"));
            return (e.http_status(), axum::Json(error_response(Value::Null, &e))).into_response();
        }
    };
    if let Some(batch) = parsed.as_array() {
        if batch.is_empty() {
            let e = RpcError::new(INVALID_REQUEST, "empty batch");
            return (e.http_status(), axum::Json(error_response(Value::Null, &e))).into_response();
        }
        let replies: Vec<Value> = batch
            .iter()
            .filter_map(|r| call(app, r).map(|(v, _)| v))
            .collect();
        if replies.is_empty() {
            return StatusCode::NO_CONTENT.into_response();
        }
        return (StatusCode::OK, axum::Json(Value::Array(replies))).into_response();
    }
    match call(app, &parsed) {
        Some((v, status)) => (status, axum::Json(v)).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}
