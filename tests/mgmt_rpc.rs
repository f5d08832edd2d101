//! `POST /RPC`: Kamailio-compatible JSON-RPC 2.0 against the real binary —
//! every method, positional and named parameters, batches, notifications,
//! and every error object.

mod common;
mod mgmt_common;

use common::*;
use mgmt_common::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn call(method: &str, params: Value, id: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id})
}

/// Asserts a JSON-RPC error with `code` (and HTTP `status`).
fn expect_rpc_error(r: &Resp, status: u16, code: i64, id: Value) -> String {
    assert_eq!(r.status, status, "{}", r.body);
    let v = r.json();
    assert_eq!(v["jsonrpc"], "2.0", "{v}");
    assert_eq!(v["id"], id, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    v["error"]["message"].as_str().expect("message").to_string()
}

#[tokio::test]
async fn methods_work_over_rpc() {
    let srv = MgmtServer::start(Opts::default());
    let http = srv.http();
    let mut ws = ws_echo_client(srv.ws).await;
    ws_echo(&mut ws, Message::text("x")).await;
    let peer = ws.get_ref().local_addr().expect("addr");
    let id = http.conn_of(peer).await["id"].as_u64().expect("id");

    // ws.dump: no params, positional, named; the same shape as the REST dump.
    let r = http
        .rpc(&json!({"jsonrpc": "2.0", "method": "ws.dump", "id": 1}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["id"], 1);
    assert_eq!(v["result"]["order"], "id_hash");
    assert_eq!(v["result"]["connections"][0]["id"], id);
    let v = http
        .rpc(&call("ws.dump", json!(["used_desc", 1]), json!("a")))
        .await
        .json();
    assert_eq!(v["id"], "a");
    assert_eq!(v["result"]["order"], "used_desc");
    assert_eq!(v["result"]["limit"], 1);
    let v = http
        .rpc(&call(
            "ws.dump",
            json!({"order": "used_asc", "limit": "5"}),
            json!(2),
        ))
        .await
        .json();
    assert_eq!(v["result"]["order"], "used_asc");
    assert_eq!(v["result"]["limit"], 5);

    // ws.ping / ws.pong reach the client; ids may be numbers or strings.
    let v = http
        .rpc(&call("ws.ping", json!([id, "rpc ping"]), json!(3)))
        .await
        .json();
    assert_eq!(v["result"]["action"], "ping", "{v}");
    match ws_next(&mut ws).await {
        Message::Ping(p) => assert_eq!(&p[..], b"rpc ping"),
        other => panic!("expected Ping, got {other:?}"),
    }
    let v = http
        .rpc(&call("ws.pong", json!({"id": id.to_string()}), json!(4)))
        .await
        .json();
    assert_eq!(v["result"]["action"], "pong", "{v}");
    match ws_next(&mut ws).await {
        Message::Pong(p) => assert!(p.is_empty()),
        other => panic!("expected Pong, got {other:?}"),
    }

    // ws.disable / ws.enable flip the control word.
    let v = http
        .rpc(&call("ws.disable", json!([]), json!(5)))
        .await
        .json();
    assert_eq!(v["result"]["ws_enabled"], false);
    assert_eq!(http.get_json("/api/status").await["ws_enabled"], false);
    let mut raw = Raw::connect(srv.ws).await;
    raw.send(request("GET", "/", srv.ws, &[]).as_bytes()).await;
    assert_eq!(raw.read_response().await.status, 503);
    let v = http
        .rpc(&call("ws.enable", Value::Null, json!(6)))
        .await
        .json();
    assert_eq!(v["result"]["ws_enabled"], true);
    let _ok = ws_echo_client(srv.ws).await;

    // msrp.cmaplist and system.listMethods.
    let v = http
        .rpc(&call("msrp.cmaplist", json!([]), json!(7)))
        .await
        .json();
    assert_eq!(v["result"]["sessions"], json!([]));
    let v = http
        .rpc(&call("system.listMethods", json!([]), json!(8)))
        .await
        .json();
    let methods = v["result"].as_array().expect("methods");
    for m in [
        "ws.dump",
        "ws.close",
        "ws.ping",
        "ws.pong",
        "ws.disable",
        "ws.enable",
        "msrp.cmaplist",
        "auth.reload",
    ] {
        assert!(methods.contains(&json!(m)), "{m}");
    }

    // ws.close with status and reason, observed by the client.
    let v = http
        .rpc(&call(
            "ws.close",
            json!([id, 4002, "rpc says bye"]),
            json!(9),
        ))
        .await
        .json();
    assert_eq!(v["result"]["status"], 4002, "{v}");
    match ws_next(&mut ws).await {
        Message::Close(Some(cf)) => {
            assert_eq!(u16::from(cf.code), 4002);
            assert_eq!(cf.reason.as_str(), "rpc says bye");
        }
        other => panic!("expected Close, got {other:?}"),
    }
}

#[tokio::test]
async fn batches_and_notifications() {
    let srv = MgmtServer::start(Opts::default());
    let http = srv.http();
    let batch = json!([
        call("ws.dump", json!([]), json!(1)),
        {"jsonrpc": "2.0", "method": "ws.disable"},
        call("no.such", json!([]), json!(2)),
        call("ws.close", json!([12345]), json!(3)),
        42,
        call("ws.enable", json!([]), json!(4)),
    ]);
    let r = http.rpc(&batch).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let replies = v.as_array().expect("batch reply");
    // The notification gets no reply; every other member gets one.
    assert_eq!(replies.len(), 5, "{v:#}");
    let by_id = |id: Value| {
        replies
            .iter()
            .find(|r| r["id"] == id && id != Value::Null)
            .cloned()
            .unwrap_or_else(|| panic!("no reply for {id}"))
    };
    assert!(by_id(json!(1))["result"]["connections"].is_array());
    assert_eq!(by_id(json!(2))["error"]["code"], -32601);
    assert_eq!(by_id(json!(3))["error"]["code"], -32001);
    assert_eq!(by_id(json!(4))["result"]["ws_enabled"], true);
    let invalid: Vec<&Value> = replies.iter().filter(|r| r["id"].is_null()).collect();
    assert_eq!(invalid.len(), 1);
    assert_eq!(invalid[0]["error"]["code"], -32600);

    // The notification ran (disable), then enable ran after it.
    assert_eq!(http.get_json("/api/status").await["ws_enabled"], true);

    // A lone notification, and a batch of notifications: 204, no body.
    let r = http
        .rpc(&json!({"jsonrpc": "2.0", "method": "ws.disable"}))
        .await;
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    assert_eq!(http.get_json("/api/status").await["ws_enabled"], false);
    let r = http
        .rpc(&json!([{"jsonrpc": "2.0", "method": "ws.enable"}]))
        .await;
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    assert_eq!(http.get_json("/api/status").await["ws_enabled"], true);
}

#[tokio::test]
async fn errors_are_json_rpc_error_objects() {
    let srv = MgmtServer::start(Opts::default());
    let http = srv.http();
    let raw = |body: &'static str| {
        let http = http.clone();
        async move {
            http.send(
                http.request(reqwest::Method::POST, "/RPC")
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await
        }
    };
    // Parse error.
    let m = expect_rpc_error(&raw("{\"jsonrpc\": ").await, 400, -32700, Value::Null);
    assert!(m.contains("parse error"), "{m}");
    expect_rpc_error(&raw("").await, 400, -32700, Value::Null);
    // Invalid requests.
    expect_rpc_error(&raw("[]").await, 400, -32600, Value::Null);
    expect_rpc_error(&raw("17").await, 400, -32600, Value::Null);
    let r = http.rpc(&json!({"method": "ws.dump", "id": 1})).await;
    let m = expect_rpc_error(&r, 400, -32600, json!(1));
    assert!(m.contains("jsonrpc"), "{m}");
    let r = http
        .rpc(&json!({"jsonrpc": "1.0", "method": "ws.dump", "id": 1}))
        .await;
    expect_rpc_error(&r, 400, -32600, json!(1));
    let r = http
        .rpc(&json!({"jsonrpc": "2.0", "method": 5, "id": 1}))
        .await;
    expect_rpc_error(&r, 400, -32600, json!(1));
    let r = http
        .rpc(&json!({"jsonrpc": "2.0", "method": "ws.dump", "id": {"x": 1}}))
        .await;
    expect_rpc_error(&r, 400, -32600, Value::Null);
    let r = http
        .rpc(&call("ws.dump", json!("used_desc"), json!(1)))
        .await;
    expect_rpc_error(&r, 400, -32600, json!(1));
    let r = http
        .rpc(&json!({"jsonrpc": "2.0", "method": "ws.dump", "id": 1, "extra": true}))
        .await;
    expect_rpc_error(&r, 400, -32600, json!(1));
    // Unknown method.
    let r = http.rpc(&call("ws.explode", json!([]), json!("m"))).await;
    let m = expect_rpc_error(&r, 404, -32601, json!("m"));
    assert!(m.contains("ws.explode"), "{m}");
    // Invalid params.
    for (method, params) in [
        ("ws.dump", json!(["sideways"])),
        ("ws.dump", json!(["id_hash", 0])),
        ("ws.dump", json!(["id_hash", 1, 2])),
        ("ws.dump", json!({"sort": "id"})),
        ("ws.close", json!([])),
        ("ws.close", json!(["not-a-number"])),
        ("ws.close", json!([1, 1004])),
        ("ws.close", json!([1, 1000, 5])),
        ("ws.ping", json!([1, "x".repeat(124)])),
        ("ws.pong", json!([true])),
        ("ws.disable", json!([1])),
        ("msrp.cmaplist", json!({"x": 1})),
    ] {
        let r = http.rpc(&call(method, params.clone(), json!(9))).await;
        expect_rpc_error(&r, 400, -32602, json!(9));
    }
    // Unknown connection.
    let r = http
        .rpc(&call("ws.ping", json!([987654321]), json!(10)))
        .await;
    let m = expect_rpc_error(&r, 404, -32001, json!(10));
    assert!(m.contains("unknown connection"), "{m}");
    let r = http
        .rpc(&call(
            "ws.close",
            json!([format!("{:#x}", 4000u64 << 48)]),
            json!(11),
        ))
        .await;
    expect_rpc_error(&r, 404, -32001, json!(11));
}
