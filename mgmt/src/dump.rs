//! Connection dumps (Kamailio `ws.dump`): ordering, limit, JSON shape.

use dataplane::region::{ConnSnapshot, ConnState, Region, unix_time_ms};
use serde_json::{Value, json};

use crate::time::rfc3339_ms;

/// Connections listed when no limit is given (Kamailio's `ws.dump` shows 50).
pub const DEFAULT_LIMIT: usize = 50;
/// Largest accepted `limit`.
pub const MAX_LIMIT: usize = 1_000_000;

/// Dump order (Kamailio `ws.dump` order names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Order {
    /// By connection id (Kamailio: hash-table order), ascending.
    #[default]
    IdHash,
    /// Most recently used first.
    UsedDesc,
    /// Least recently used first.
    UsedAsc,
}

impl Order {
    pub const ALL: [Order; 3] = [Order::IdHash, Order::UsedDesc, Order::UsedAsc];

    pub fn as_str(self) -> &'static str {
        match self {
            Order::IdHash => "id_hash",
            Order::UsedDesc => "used_desc",
            Order::UsedAsc => "used_asc",
        }
    }

    pub fn parse(s: &str) -> Option<Order> {
        Order::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Sort in place (ties on last use broken by id, so the order is total).
    pub fn sort(self, conns: &mut [ConnSnapshot]) {
        match self {
            Order::IdHash => conns.sort_unstable_by_key(|c| c.id),
            Order::UsedDesc => conns
                .sort_unstable_by(|a, b| b.last_used_ms.cmp(&a.last_used_ms).then(a.id.cmp(&b.id))),
            Order::UsedAsc => conns
                .sort_unstable_by(|a, b| a.last_used_ms.cmp(&b.last_used_ms).then(a.id.cmp(&b.id))),
        }
    }
}

/// Why a dump request is malformed.
pub(crate) fn bad_order(s: &str) -> String {
    format!("invalid order {s:?}: expected one of id_hash, used_desc, used_asc")
}

/// Parse a `limit` value.
pub(crate) fn parse_limit(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!(
            "invalid limit {s:?}: expected an integer from 1 to {MAX_LIMIT}"
        )),
    }
}

/// JSON of one connection.
pub(crate) fn conn_json(c: &ConnSnapshot, now_ms: u64) -> Value {
    json!({
        "id": c.id,
        "core": c.core,
        "peer": c.peer.to_string(),
        "local": c.local.to_string(),
        "transport": c.transport.as_str(),
        "sub_protocol": c.sub_protocol.as_str(),
        "state": c.state.as_str(),
        "created_ms": c.created_ms,
        "created": rfc3339_ms(c.created_ms),
        "last_used_ms": c.last_used_ms,
        "last_used": rfc3339_ms(c.last_used_ms),
        "idle_ms": now_ms.saturating_sub(c.last_used_ms),
        "frames_in": c.frames_in,
        "frames_out": c.frames_out,
        "bytes_in": c.bytes_in,
        "bytes_out": c.bytes_out,
        "info": c.info.as_str(),
    })
}

/// The `ws.dump` result: the first `limit` connections in `order`, and
/// totals over all of them.
pub(crate) fn dump(region: &Region, order: Order, limit: usize) -> Value {
    let mut conns = region.connections();
    let now = unix_time_ms();
    let total = conns.len();
    let count = |s: ConnState| conns.iter().filter(|c| c.state == s).count();
    let totals = json!({
        "connections": total,
        "handshake": count(ConnState::Handshake),
        "open": count(ConnState::Open),
        "closing": count(ConnState::Closing),
        "frames_in": conns.iter().map(|c| c.frames_in).fold(0u64, u64::wrapping_add),
        "frames_out": conns.iter().map(|c| c.frames_out).fold(0u64, u64::wrapping_add),
        "bytes_in": conns.iter().map(|c| c.bytes_in).fold(0u64, u64::wrapping_add),
        "bytes_out": conns.iter().map(|c| c.bytes_out).fold(0u64, u64::wrapping_add),
    });
    order.sort(&mut conns);
    conns.truncate(limit);
    json!({
        "order": order.as_str(),
        "limit": limit,
        "returned": conns.len(),
        "truncated": total > conns.len(),
        "totals": totals,
        "connections": conns.iter().map(|c| conn_json(c, now)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane::region::{ConnInfo, SubProtocol, Transport};

    fn region_with(last_used: &[u64]) -> Region {
        let r = Region::create_anonymous(2, 8).unwrap();
        for (i, &t) in last_used.iter().enumerate() {
            let core = r.core((i % 2) as u32);
            let idx = (i / 2) as u32;
            core.slot_open(
                idx,
                &ConnInfo {
                    peer: "127.0.0.1:1000".parse().unwrap(),
                    local: "127.0.0.1:2000".parse().unwrap(),
                    transport: Transport::Ws,
                    sub_protocol: SubProtocol::Sip,
                    state: ConnState::Open,
                    created_ms: 1,
                    info: "/",
                },
            );
            core.slot_update(idx, |w| w.set_last_used(t));
        }
        r
    }

    fn ids(v: &Value) -> Vec<u64> {
        v["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["last_used_ms"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn orders_and_limits() {
        let r = region_with(&[50, 10, 40, 20, 30]);
        let d = dump(&r, Order::UsedDesc, 50);
        assert_eq!(ids(&d), vec![50, 40, 30, 20, 10]);
        assert_eq!(d["truncated"], false);
        assert_eq!(d["totals"]["connections"], 5);
        let d = dump(&r, Order::UsedAsc, 2);
        assert_eq!(ids(&d), vec![10, 20]);
        assert_eq!(d["truncated"], true);
        let d = dump(&r, Order::IdHash, 50);
        let conn_ids: Vec<u64> = d["connections"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_u64().unwrap())
            .collect();
        let mut sorted = conn_ids.clone();
        sorted.sort_unstable();
        assert_eq!(conn_ids, sorted);
    }

    #[test]
    fn parses_parameters() {
        assert_eq!(Order::parse("used_desc"), Some(Order::UsedDesc));
        assert_eq!(Order::parse("USED_DESC"), None);
        assert_eq!(parse_limit("1"), Ok(1));
        assert!(parse_limit("0").is_err());
        assert!(parse_limit("-1").is_err());
        assert!(parse_limit("x").is_err());
        assert!(parse_limit(&(MAX_LIMIT + 1).to_string()).is_err());
    }
}
