//! Policy routing for steered packets, over netlink: a rule
//! `fwmark M lookup T` and a route `local default dev lo table T`, for IPv4
//! and IPv6. Without them a packet assigned to a gateway socket at TC
//! ingress would still be forwarded, and the connection would hang.

use std::net::{Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt as _;
use rtnetlink::{
    Handle, IpVersion, RouteMessageBuilder,
    packet_route::{
        route::{RouteScope, RouteType},
        rule::{RuleAction, RuleAttribute, RuleMessage},
    },
};

/// A netlink request failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} failed: {source}")]
pub struct RoutingError {
    what: String,
    #[source]
    source: std::io::Error,
}

fn err(what: impl Into<String>, e: impl std::fmt::Display) -> RoutingError {
    RoutingError { what: what.into(), source: std::io::Error::other(e.to_string()) }
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

impl PolicyRouting {
    /// Installs rules and routes, replacing any left by a previous run.
    pub async fn install(&self) -> Result<(), RoutingError> {
        self.remove().await?;
        let handle = connect().await?;
        for v6 in [false, true] {
            let family = if v6 { "IPv6" } else { "IPv4" };
            let rule = handle
                .rule()
                .add()
                .action(RuleAction::ToTable)
                .fw_mark(self.fwmark)
                .table_id(self.table)
                .priority(self.priority);
            let res = if v6 { rule.v6().execute().await } else { rule.v4().execute().await };
            res.map_err(|e| err(format!("adding the {family} fwmark rule"), e))?;

            let route = if v6 {
                RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
                    .table_id(self.table)
                    .kind(RouteType::Local)
                    .scope(RouteScope::Host)
                    .output_interface(LOOPBACK_IFINDEX)
                    .build()
            } else {
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                    .table_id(self.table)
                    .kind(RouteType::Local)
                    .scope(RouteScope::Host)
                    .output_interface(LOOPBACK_IFINDEX)
                    .build()
            };
            handle
                .route()
                .add(route)
                .replace()
                .execute()
                .await
                .map_err(|e| err(format!("adding the {family} local route to table {}", self.table), e))?;
        }
        Ok(())
    }

    /// Removes every rule with this fwmark and table, and every route in
    /// the table. Idempotent.
    pub async fn remove(&self) -> Result<(), RoutingError> {
        let handle = connect().await?;
        for version in [IpVersion::V4, IpVersion::V6] {
            let rules: Vec<RuleMessage> = handle
                .rule()
                .get(version.clone())
                .execute()
                .try_collect()
                .await
                .map_err(|e| err("listing rules", e))?;
            for rule in rules.into_iter().filter(|r| self.owns_rule(r)) {
                handle.rule().del(rule).execute().await.map_err(|e| err("deleting a rule", e))?;
            }
            let mut query = match version {
                IpVersion::V4 => RouteMessageBuilder::<Ipv4Addr>::new().build(),
                IpVersion::V6 => RouteMessageBuilder::<Ipv6Addr>::new().build(),
            };
            query.header.table = 0; // RT_TABLE_UNSPEC: dump all tables
            let routes: Vec<_> =
                handle.route().get(query).execute().try_collect().await.map_err(|e| err("listing routes", e))?;
            for route in routes.into_iter().filter(|r| route_table(r) == self.table) {
                handle.route().del(route).execute().await.map_err(|e| err("deleting a route", e))?;
            }
        }
        Ok(())
    }

    /// Whether any rule or route of ours is present (for tests and checks).
    pub async fn present(&self) -> Result<bool, RoutingError> {
        let handle = connect().await?;
        for version in [IpVersion::V4, IpVersion::V6] {
            let rules: Vec<RuleMessage> =
                handle.rule().get(version).execute().try_collect().await.map_err(|e| err("listing rules", e))?;
            if rules.iter().any(|r| self.owns_rule(r)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn owns_rule(&self, rule: &RuleMessage) -> bool {
        let mut mark = false;
        let mut table = u32::from(rule.header.table);
        for a in &rule.attributes {
            match a {
                RuleAttribute::FwMark(m) => mark = *m == self.fwmark,
                RuleAttribute::Table(t) => table = *t,
                _ => {}
            }
        }
        mark && table == self.table
    }
}

fn route_table(route: &rtnetlink::packet_route::route::RouteMessage) -> u32 {
    use rtnetlink::packet_route::route::RouteAttribute;
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}
