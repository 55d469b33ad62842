//! Which Kafka clusters clients may send tasks to. Per-task brokers would otherwise let any client
//! make the service open connections to any host.

use std::collections::HashSet;

/// The brokers a task's `kafka_conn_string` may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerAllowlist {
    /// Any broker (`*`).
    Any,
    /// Only these: each entry a host (any port) or a `host:port`, compared case-insensitively.
    Only(HashSet<String>),
}

impl BrokerAllowlist {
    /// Parses a comma-separated list of hosts or `host:port` pairs; `*` allows any broker.
    pub fn parse(list: &str) -> Self {
        let entries: HashSet<String> = list
            .split(',')
            .map(|entry| entry.trim().to_ascii_lowercase())
            .filter(|entry| !entry.is_empty())
            .collect();
        if entries.contains("*") {
            Self::Any
        } else {
            Self::Only(entries)
        }
    }

    /// The hosts of a broker list such as `KAFKA_BROKERS`, any port.
    pub fn hosts_of(brokers: &str) -> Self {
        Self::Only(
            brokers
                .split(',')
                .filter_map(|broker| split_broker(broker).map(|(host, _)| host))
                .collect(),
        )
    }

    /// Whether every broker of `conn_string` is allowed (and there is at least one).
    pub fn permits(&self, conn_string: &str) -> bool {
        let Self::Only(entries) = self else {
            return true;
        };
        let mut brokers = conn_string.split(',').peekable();
        brokers.peek().is_some()
            && brokers.all(|broker| {
                split_broker(broker).is_some_and(|(host, port)| {
                    entries.contains(&host)
                        || port.is_some_and(|port| entries.contains(&format!("{host}:{port}")))
                })
            })
    }
}

/// Splits `[proto://]host[:port]` (IPv6 hosts in brackets) into a lowercase host and the port.
fn split_broker(broker: &str) -> Option<(String, Option<u16>)> {
    let broker = broker.trim();
    let broker = broker.split_once("://").map_or(broker, |(_, rest)| rest);
    let (host, port) = if let Some(rest) = broker.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        (format!("[{host}]"), after.strip_prefix(':'))
    } else {
        match broker.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (broker.to_owned(), None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return None;
    }
    let port = match port {
        Some(port) => Some(port.parse::<u16>().ok()?),
        None => None,
    };
    Some((host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_default_the_hosts_of_the_configured_brokers_are_allowed_on_any_port() {
        let allow = BrokerAllowlist::hosts_of("kafka-1.prod:9092,kafka-2.prod:9092");
        assert!(allow.permits("kafka-1.prod:9092"));
        assert!(allow.permits("KAFKA-2.prod:9093,kafka-1.prod:9092"));
        assert!(!allow.permits("evil.example:9092"));
        assert!(!allow.permits("kafka-1.prod:9092,169.254.169.254:80"));
    }

    #[test]
    fn a_star_allows_any_broker() {
        assert!(BrokerAllowlist::parse("a:1, *").permits("anything:1"));
    }

    #[test]
    fn entries_with_a_port_allow_only_that_port() {
        let allow = BrokerAllowlist::parse("kafka:9092, localhost");
        assert!(allow.permits("kafka:9092"));
        assert!(!allow.permits("kafka:9093"));
        assert!(allow.permits("localhost:1234"));
        assert!(allow.permits("SSL://localhost:9093"));
    }

    #[test]
    fn malformed_broker_lists_are_refused() {
        let allow = BrokerAllowlist::parse("localhost");
        for bad in [
            "",
            ",",
            "localhost:notaport",
            "user@localhost:1",
            "localhost:99999",
            "[::1",
        ] {
            assert!(!allow.permits(bad), "{bad:?}");
        }
    }

    #[test]
    fn ipv6_hosts_are_understood() {
        let allow = BrokerAllowlist::hosts_of("[::1]:9092");
        assert!(allow.permits("[::1]:19092"));
        assert!(!allow.permits("[::2]:9092"));
    }
}
