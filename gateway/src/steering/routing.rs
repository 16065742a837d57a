//! Policy routing for steered packets, over netlink: a rule
//! `fwmark M lookup T` and a route `local default dev lo table T`, for IPv4
//! and IPv6. Without them a packet assigned to a gateway socket at TC
//! ingress would still be forwarded, and the connection would hang.
//!
//! The routing has the same life as the pinned steering (`super::pin`): a
//! starting gateway installs it (idempotently: a successor finds it in
//! place), nothing removes it on exit — an exiting or killed gateway leaves
//! the programs attached, and they mark only what they hand to a gateway
//! socket — and `gateway detach` removes it with the pins. So no gateway's
//! exit, however late its cleanup, can take a successor's routing away.

use std::net::{Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt as _;
use rtnetlink::{
    Handle, IpVersion, RouteMessageBuilder,
    packet_route::{
        route::{RouteAttribute, RouteMessage, RouteScope, RouteType},
        rule::{RuleAction, RuleAttribute, RuleMessage},
    },
};

/// A netlink request failed.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// The kernel refused or netlink failed.
    #[error("{what} failed: {source}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn err(what: impl Into<String>, e: impl std::fmt::Display) -> RoutingError {
    RoutingError::Netlink { what: what.into(), source: std::io::Error::other(e.to_string()) }
}

/// The rule and table that deliver marked packets locally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyRouting {
    /// fwmark set by the TC program.
    pub fwmark: u32,
    /// Table holding the local default route.
    pub table: u32,
    /// Rule priority.
    pub priority: u32,
}

const LOOPBACK_IFINDEX: u32 = 1;

async fn connect() -> Result<Handle, RoutingError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| err("opening a netlink socket", e))?;
    tokio::spawn(conn);
    Ok(handle)
}

async fn rules(handle: &Handle, version: IpVersion) -> Result<Vec<RuleMessage>, RoutingError> {
    handle.rule().get(version).execute().try_collect().await.map_err(|e| err("listing rules", e))
}

async fn routes(handle: &Handle, v6: bool) -> Result<Vec<RouteMessage>, RoutingError> {
    let mut query = if v6 {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    };
    query.header.table = 0; // RT_TABLE_UNSPEC: dump all tables
    handle.route().get(query).execute().try_collect().await.map_err(|e| err("listing routes", e))
}

fn rule_of(rule: &RuleMessage) -> (Option<u32>, u32, Option<u32>) {
    let (mut mark, mut table, mut prio) = (None, u32::from(rule.header.table), None);
    for a in &rule.attributes {
        match a {
            RuleAttribute::FwMark(m) => mark = Some(*m),
            RuleAttribute::Table(t) => table = *t,
            RuleAttribute::Priority(p) => prio = Some(*p),
            _ => {}
        }
    }
    (mark, table, prio)
}

fn route_table(route: &RouteMessage) -> u32 {
    route.attributes.iter().fold(u32::from(route.header.table), |t, a| match a {
        RouteAttribute::Table(t) => *t,
        _ => t,
    })
}

impl PolicyRouting {
    /// Installs the routes (first, so that the rule never points at an
    /// empty table) and the rules; what is in place already is kept.
    pub async fn install(&self) -> Result<(), RoutingError> {
        let handle = connect().await?;
        for v6 in [false, true] {
            let family = if v6 { "IPv6" } else { "IPv4" };
            let route = if v6 {
                self.local_route(RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(Ipv6Addr::UNSPECIFIED, 0))
            } else {
                self.local_route(RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(Ipv4Addr::UNSPECIFIED, 0))
            };
            handle
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(|e| err(format!("adding the {family} local route to table {}", self.table), e))?;
            if !self.rule_present(&handle, v6).await? {
                let rule = handle
                    .rule()
                    .add()
                    .action(RuleAction::ToTable)
                    .fw_mark(self.fwmark)
                    .table_id(self.table)
                    .priority(self.priority);
                let res = if v6 { rule.v6().execute().await } else { rule.v4().execute().await };
                res.map_err(|e| err(format!("adding the {family} fwmark rule"), e))?;
            }
        }
        Ok(())
    }

    /// `local default dev lo` in the table.
    fn local_route<T>(&self, b: RouteMessageBuilder<T>) -> RouteMessage {
        b.table_id(self.table).kind(RouteType::Local).scope(RouteScope::Host).output_interface(LOOPBACK_IFINDEX).build()
    }

    async fn rule_present(&self, handle: &Handle, v6: bool) -> Result<bool, RoutingError> {
        let v = if v6 { IpVersion::V6 } else { IpVersion::V4 };
        Ok(rules(handle, v).await?.iter().any(|r| self.is_rule(r)))
    }

    fn is_rule(&self, r: &RuleMessage) -> bool {
        let (mark, table, prio) = rule_of(r);
        mark == Some(self.fwmark) && table == self.table && prio.is_none_or(|p| p == self.priority)
    }

    /// Removes the routes and rules (`gateway detach`). Idempotent.
    pub async fn remove(&self) -> Result<(), RoutingError> {
        let handle = connect().await?;
        for (v6, version) in [(false, IpVersion::V4), (true, IpVersion::V6)] {
            for route in routes(&handle, v6).await?.into_iter().filter(|r| route_table(r) == self.table) {
                handle.route().del(route).execute().await.map_err(|e| err("deleting a route", e))?;
            }
            for rule in rules(&handle, version).await?.into_iter().filter(|r| self.is_rule(r)) {
                handle.rule().del(rule).execute().await.map_err(|e| err("deleting a rule", e))?;
            }
        }
        Ok(())
    }

    /// Whether the rules and routes are all in place.
    pub async fn present(&self) -> Result<bool, RoutingError> {
        let handle = connect().await?;
        for v6 in [false, true] {
            let route = routes(&handle, v6).await?.iter().any(|r| route_table(r) == self.table);
            if !route || !self.rule_present(&handle, v6).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
