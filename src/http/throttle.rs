//! A bound on guessing the admin token: each connecting address may fail
//! [`FAILURES_ALLOWED`] times within [`WINDOW`] (a wrong bearer token on the
//! API, a wrong token in the console's login form); past that it is
//! answered 429 with `Retry-After` until its window ends, and its token is
//! not even compared. Successful requests are never counted or slowed.
//!
//! An IPv6 client counts by its /64, which one host commonly holds whole.
//! Behind a proxy every client connects from the proxy's address and shares
//! its allowance: a guesser then also locks the operator out for the rest
//! of the minute, which is the price of not trusting `X-Forwarded-For`
//! (a header any client can write).
//!
//! Memory is bounded: at most [`TRACKED`] addresses are remembered; when
//! the table is full, expired entries are dropped, and if none has expired
//! the addresses not in the table share one allowance.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed attempts an address may make within [`WINDOW`].
pub const FAILURES_ALLOWED: u32 = 10;
/// How long failures are remembered, from an address's first failure.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most.
const TRACKED: usize = 4096;
/// The allowance shared by addresses that did not fit in the table.
const OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// Whom an address stands for: an IPv6 address by its /64 (one host
/// commonly holds a whole /64, and would otherwise get an allowance per
/// address), an IPv4-mapped one as the IPv4 address it is.
fn client_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
        v4 => v4,
    }
}

#[derive(Debug, Default)]
pub struct Throttle {
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    since: Instant,
    count: u32,
}

impl Throttle {
    /// `Err(wait)` when `peer` used up its allowance: refuse it without
    /// looking at what it sent, and tell it to come back after `wait`.
    pub fn admit(&self, peer: IpAddr) -> Result<(), Duration> {
        self.admit_at(client_of(peer), Instant::now())
    }

    /// Counts a failed attempt of `peer`.
    pub fn failed(&self, peer: IpAddr) {
        self.failed_at(client_of(peer), Instant::now());
    }

    fn admit_at(&self, peer: IpAddr, now: Instant) -> Result<(), Duration> {
        let table = self.failures.lock().expect("poisoned");
        let entry = table.get(&peer).or_else(|| {
            // An address that did not fit shares the overflow allowance.
            (table.len() >= TRACKED)
                .then(|| table.get(&OVERFLOW))
                .flatten()
        });
        match entry {
            Some(f) if f.count >= FAILURES_ALLOWED && now < f.since + WINDOW => {
                Err(f.since + WINDOW - now)
            }
            _ => Ok(()),
        }
    }

    fn failed_at(&self, peer: IpAddr, now: Instant) {
        let mut table = self.failures.lock().expect("poisoned");
        if !table.contains_key(&peer) && table.len() >= TRACKED {
            table.retain(|_, f| now < f.since + WINDOW);
        }
        let key = if table.contains_key(&peer) || table.len() < TRACKED {
            peer
        } else {
            OVERFLOW
        };
        let f = table.entry(key).or_insert(Failures {
            since: now,
            count: 0,
        });
        if now >= f.since + WINDOW {
            *f = Failures {
                since: now,
                count: 0,
            };
        }
        f.count = f.count.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn an_address_is_refused_after_its_allowance_until_its_window_ends() {
        let throttle = Throttle::default();
        let start = Instant::now();
        for _ in 0..FAILURES_ALLOWED {
            assert_eq!(throttle.admit_at(ip(1), start), Ok(()));
            throttle.failed_at(ip(1), start);
        }
        let later = start + Duration::from_secs(15);
        assert_eq!(
            throttle.admit_at(ip(1), later),
            Err(WINDOW - Duration::from_secs(15))
        );
        assert_eq!(throttle.admit_at(ip(2), later), Ok(()), "others are not");
        assert_eq!(throttle.admit_at(ip(1), start + WINDOW), Ok(()));
        throttle.failed_at(ip(1), start + WINDOW);
        assert_eq!(
            throttle.admit_at(ip(1), start + WINDOW),
            Ok(()),
            "a new window starts with one failure"
        );
    }

    #[test]
    fn an_ipv6_64_is_one_client_and_a_mapped_ipv4_is_its_ipv4() {
        let throttle = Throttle::default();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        for _ in 0..FAILURES_ALLOWED / 2 {
            throttle.failed(a);
            throttle.failed(b);
        }
        assert!(throttle.admit(a).is_err());
        assert!(throttle.admit(b).is_err(), "the same /64");
        assert_eq!(throttle.admit(other), Ok(()), "another /64");
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().unwrap();
        for _ in 0..FAILURES_ALLOWED {
            throttle.failed(mapped);
        }
        assert!(
            throttle
                .admit(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)))
                .is_err()
        );
    }

    #[test]
    fn a_full_table_shares_one_allowance_among_the_addresses_left_out() {
        let throttle = Throttle::default();
        let now = Instant::now();
        for n in 0..TRACKED as u32 {
            throttle.failed_at(ip(n), now);
        }
        for _ in 0..FAILURES_ALLOWED {
            throttle.failed_at(ip(TRACKED as u32 + 1), now);
        }
        assert!(throttle.admit_at(ip(TRACKED as u32 + 2), now).is_err());
        assert_eq!(throttle.admit_at(ip(0), now), Ok(()), "tracked: its own");
        // Once the window passed, expired entries make room again.
        let later = now + WINDOW;
        throttle.failed_at(ip(TRACKED as u32 + 3), later);
        assert!(throttle.failures.lock().unwrap().len() <= TRACKED);
        assert_eq!(throttle.admit_at(ip(TRACKED as u32 + 3), later), Ok(()));
    }
}
