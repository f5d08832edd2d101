//! WebSocket echo server on tokio-websockets 0.13, shaped like the
//! library's own `examples/echo_server.rs`: a tokio current_thread runtime,
//! one task per connection, echo of text and binary messages. The only
//! addition: the first offered sub-protocol is selected (the request head
//! is peeked before the library parses it, since the builder's response
//! headers are fixed per accept).
//!
//! Usage: echo-tokio-websockets [--listen 127.0.0.1:9001]

use futures_util::{SinkExt, StreamExt};
use hyper::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_websockets::{Config, Error, Limits, ServerBuilder};

/// Peek at the request head (without consuming it) for the offered
/// sub-protocol.
async fn peek_subprotocol(stream: &TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = vec![0u8; 8192];
    for _ in 0..1000 {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || n == buf.len() {
            return Ok(rtedge_bench::offered_in_head(&buf[..n]));
        }
        // Head split over several segments: wait for the rest.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(None)
}

async fn serve(conn: TcpStream) -> Result<(), Error> {
    let _ = conn.set_nodelay(true);
    let mut builder = ServerBuilder::new()
        .config(Config::default().frame_size(usize::MAX))
        .limits(Limits::unlimited());
    if let Some(p) = peek_subprotocol(&conn).await?
        && let Ok(v) = HeaderValue::from_str(&p)
    {
        builder = builder.add_header(SEC_WEBSOCKET_PROTOCOL, v)?;
    }
    let (_request, mut server) = builder.accept(conn).await?;
    while let Some(Ok(item)) = server.next().await {
        if item.is_text() || item.is_binary() {
            server.send(item).await?;
        }
    }
    Ok(())
}

async fn run() -> Result<(), Error> {
    let addr = rtedge_bench::listen_addr_from_args();
    let listener = TcpListener::bind(addr).await?;
    println!(
        "echo-tokio-websockets listening on {}",
        listener.local_addr()?
    );
    loop {
        let (conn, _) = listener.accept().await?;
        tokio::spawn(tokio::task::unconstrained(async move {
            if let Err(e) = serve(conn).await {
                eprintln!("websocket error: {e}");
            }
        }));
    }
}

fn main() -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .expect("tokio runtime");
    rt.block_on(run())
}
