//! `/api/events`: a server-sent-events stream of connection events read
//! from the region's per-core event rings — rtedge's equivalent of
//! Kamailio's `event_route[websocket:closed]` for operators' scripts.
//!
//! Query parameters: `kinds` (comma-separated subset of `opened`, `closed`,
//! `rejected`; default all) and `from` (`now`, the default, or `oldest` to
//! replay what the rings still hold). SSE event names are the kinds, plus
//! `lost` (the reader fell a ring behind; `count` events skipped) and
//! `restarted` (the data plane re-created its region).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use dataplane::region::{EventKind, EventRecord, Region};
use futures_util::Stream;
use serde_json::{Value, json};

use crate::App;
use crate::api::{ApiError, query_pairs};
use crate::time::rfc3339_ms;

/// How often the rings are polled.
const POLL: Duration = Duration::from_millis(25);
/// Events read per core per poll.
const BATCH: usize = 512;

/// JSON of one event.
pub(crate) fn event_json(e: &EventRecord) -> Value {
    let mut v = json!({
        "event": e.kind.as_str(),
        "id": e.conn_id,
        "core": e.core,
        "seq": e.seq,
        "time_ms": e.time_ms,
        "time": rfc3339_ms(e.time_ms),
        "peer": e.peer.to_string(),
        "transport": e.transport.as_str(),
        "sub_protocol": e.sub_protocol.as_str(),
    });
    match e.kind {
        EventKind::Opened => v["info"] = json!(e.text.as_str()),
        EventKind::Closed => {
            // No close frame: RFC 6455 §7.1.5's 1006 (abnormal closure).
            v["code"] = json!(e.code.unwrap_or(1006));
            v["clean"] = json!(e.code.is_some());
            v["reason"] = json!(e.text.as_str());
        }
        EventKind::Rejected => {
            v["reason"] = json!(e.reason.map_or("unknown", |r| r.as_str()));
        }
    }
    v
}

struct Tail {
    app: Arc<App>,
    epoch: u64,
    cursors: Vec<u64>,
    kinds: [bool; 3],
    buf: VecDeque<SseEvent>,
    interval: tokio::time::Interval,
    stopping: tokio::sync::watch::Receiver<bool>,
    scratch: Vec<EventRecord>,
}

fn wanted(kinds: &[bool; 3], k: EventKind) -> bool {
    kinds[k as usize - 1]
}

impl Tail {
    fn poll(&mut self) {
        let region = self.app.regions.get();
        if region.epoch() != self.epoch {
            // A new region: everything in it is news.
            self.epoch = region.epoch();
            self.cursors = vec![0; region.cores() as usize];
            self.buf.push_back(
                SseEvent::default()
                    .event("restarted")
                    .data(json!({"epoch": format!("{:016x}", self.epoch)}).to_string()),
            );
        }
        self.read(&region);
    }

    fn read(&mut self, region: &Region) {
        self.scratch.clear();
        for (core, cursor) in self.cursors.iter_mut().enumerate() {
            let lost = region.read_events(core as u32, cursor, BATCH, &mut self.scratch);
            if lost > 0 {
                self.buf.push_back(
                    SseEvent::default()
                        .event("lost")
                        .data(json!({"core": core, "count": lost}).to_string()),
                );
            }
        }
        // Interleave the cores by time.
        self.scratch.sort_by_key(|e| (e.time_ms, e.core, e.seq));
        for e in &self.scratch {
            if !wanted(&self.kinds, e.kind) {
                continue;
            }
            self.buf.push_back(
                SseEvent::default()
                    .event(e.kind.as_str())
                    .id(format!("{}:{}", e.core, e.seq))
                    .data(event_json(e).to_string()),
            );
        }
    }
}

fn parse_kinds(s: &str) -> Result<[bool; 3], ApiError> {
    let mut kinds = [false; 3];
    for k in s.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        let kind = EventKind::from_label(k).ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid event kind {k:?}: expected opened, closed or rejected"
            ))
        })?;
        kinds[kind as usize - 1] = true;
    }
    if kinds == [false; 3] {
        return Err(ApiError::bad_request(
            "kinds must name at least one event kind",
        ));
    }
    Ok(kinds)
}

pub(crate) async fn stream(
    State(app): State<Arc<App>>,
    RawQuery(q): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let mut kinds = [true; 3];
    let mut oldest = false;
    for (k, v) in query_pairs(q.as_deref(), &["kinds", "from"])? {
        match k.as_str() {
            "kinds" => kinds = parse_kinds(&v)?,
            _ => {
                oldest = match v.as_str() {
                    "now" => false,
                    "oldest" => true,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "invalid from {other:?}: expected now or oldest"
                        )));
                    }
                }
            }
        }
    }
    let region = app.regions.get();
    let cursors = (0..region.cores())
        .map(|c| if oldest { 0 } else { region.event_head(c) })
        .collect();
    let mut interval = tokio::time::interval(POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let tail = Tail {
        epoch: region.epoch(),
        stopping: app.stopping.subscribe(),
        app,
        cursors,
        kinds,
        buf: VecDeque::new(),
        interval,
        scratch: Vec::new(),
    };
    let s = futures_util::stream::unfold(tail, |mut t| async move {
        loop {
            if let Some(ev) = t.buf.pop_front() {
                return Some((Ok(ev), t));
            }
            if *t.stopping.borrow() {
                return None;
            }
            tokio::select! {
                _ = t.interval.tick() => {}
                r = t.stopping.changed() => {
                    if r.is_err() || *t.stopping.borrow() {
                        return None;
                    }
                }
            }
            t.poll();
        }
    });
    Ok(Sse::new(s).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(parse_kinds("closed").unwrap(), [false, true, false]);
        assert_eq!(
            parse_kinds("opened, rejected").unwrap(),
            [true, false, true]
        );
        assert!(parse_kinds("").is_err());
        assert!(parse_kinds("bogus").is_err());
    }
}
