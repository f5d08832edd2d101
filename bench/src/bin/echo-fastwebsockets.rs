//! WebSocket echo server on fastwebsockets 0.10 + hyper 1, shaped like the
//! library's own `examples/echo_server.rs`: a tokio current_thread runtime,
//! one task per connection, `FragmentCollector`, echo of text and binary
//! frames. The only addition: the first offered sub-protocol is selected
//! (so `--subprotocol echo` clients work).
//!
//! Usage: echo-fastwebsockets [--listen 127.0.0.1:9001]

use fastwebsockets::{OpCode, WebSocketError, upgrade};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use tokio::net::TcpListener;

async fn handle_client(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = fastwebsockets::FragmentCollector::new(fut.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => {
                ws.write_frame(frame).await?;
            }
            _ => {}
        }
    }
    Ok(())
}

async fn server_upgrade(
    mut req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    let proto = req
        .headers()
        .get(SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(rtedge_bench::first_offered)
        .and_then(|p| HeaderValue::from_str(p).ok());
    let (mut response, fut) = upgrade::upgrade(&mut req)?;
    if let Some(p) = proto {
        response.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, p);
    }
    tokio::task::spawn(async move {
        if let Err(e) = tokio::task::unconstrained(handle_client(fut)).await {
            // Clients that drop the TCP connection are normal under load.
            if !matches!(
                e,
                WebSocketError::UnexpectedEOF | WebSocketError::ConnectionClosed
            ) {
                eprintln!("websocket error: {e}");
            }
        }
    });
    Ok(response)
}

fn main() -> Result<(), WebSocketError> {
    let addr = rtedge_bench::listen_addr_from_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        println!(
            "echo-fastwebsockets listening on {}",
            listener.local_addr()?
        );
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let conn_fut = http1::Builder::new()
                    .serve_connection(io, service_fn(server_upgrade))
                    .with_upgrades();
                if let Err(e) = conn_fut.await {
                    eprintln!("http error: {e:?}");
                }
            });
        }
    })
}
