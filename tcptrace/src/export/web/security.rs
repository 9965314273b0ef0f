//! TLS and basic authentication for the HTTP endpoint (read from
//! `--web.config.file` by `cli::web_config`).
//!
//! Users protect every path. Passwords are checked with bcrypt on a pool of
//! [`VERIFIERS`], so that guessing cannot take every core; a header that
//! passed once is remembered, so a scrape every few seconds costs one
//! hash, once. Each source address is checked one login at a time, and
//! after [`FREE_FAILURES`] failures waits before its next, longer after
//! each: guesses from one address queue behind each other, never before a
//! login from another.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::Engine;
use hyper::header::{HeaderName, HeaderValue};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// What the endpoint requires of its clients; the default requires nothing.
#[derive(Default)]
pub struct WebSecurity {
    pub tls: Option<TlsAcceptor>,
    pub auth: Option<BasicAuth>,
    /// `http_server_config.headers`: set on every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Whether `hash` is one bcrypt can verify against: one that cannot would
/// lock its user out.
pub fn is_bcrypt_hash(hash: &str) -> bool {
    bcrypt::verify("", hash).is_ok()
}

/// What a request's `Authorization` header earns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied,
    /// Too many failed logins from its address: refused unchecked.
    Limited {
        retry_after: Duration,
    },
}

/// The `basic_auth_users`, the `Authorization` headers that passed, and the
/// failed logins of each source address.
pub struct BasicAuth {
    hashes: BTreeMap<String, String>,
    passed: Mutex<HashSet<String>>,
    verifiers: Semaphore,
    sources: Mutex<HashMap<IpAddr, Source>>,
}

/// Headers remembered as passed; beyond, the memory starts over.
const PASSED_KEPT: usize = 64;
/// bcrypt checks running at once: each takes a core for tens of
/// milliseconds, and guessing must not take them all.
const VERIFIERS: usize = 2;
/// Failed logins from one address before it has to wait.
const FREE_FAILURES: u32 = 5;
/// The first wait; each further failure doubles it, up to [`MAX_WAIT`].
const FIRST_WAIT: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_mins(5);
/// An address without a failure for this long starts afresh.
const FORGET_AFTER: Duration = Duration::from_mins(15);
/// Addresses remembered at once; beyond, the longest quiet is forgotten.
const MAX_SOURCES: usize = 4096;

/// One source address's logins: one checked at a time, so that its
/// guesses queue behind each other and not before other addresses.
#[derive(Default)]
struct Source {
    turn: Arc<tokio::sync::Mutex<()>>,
    failures: u32,
    last_failure: Option<Instant>,
    wait_until: Option<Instant>,
}

impl Source {
    fn forgotten(&self, now: Instant) -> bool {
        Arc::strong_count(&self.turn) == 1
            && self.wait_until.is_none_or(|until| until <= now)
            && self
                .last_failure
                .is_none_or(|at| now.duration_since(at) >= FORGET_AFTER)
    }
}

/// The address whose failures count together: an IPv4 address, or the /64
/// of an IPv6 one (what one host usually holds).
fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 @ IpAddr::V4(_) => v4,
    }
}

impl BasicAuth {
    /// Users and their bcrypt hashes (see [`is_bcrypt_hash`]).
    pub fn new(hashes: BTreeMap<String, String>) -> Self {
        Self {
            hashes,
            passed: Mutex::new(HashSet::new()),
            verifiers: Semaphore::new(VERIFIERS),
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an `Authorization` header value from `peer` names a user
    /// with its password. A wrong password costs the same time for every
    /// user, known or not; an address with too many failures is refused
    /// without a check, whatever it sends.
    pub async fn check(&self, header: Option<&str>, peer: IpAddr) -> Verdict {
        let Some(header) = header else {
            return Verdict::Denied;
        };
        if lock(&self.passed).contains(header) {
            return Verdict::Allowed;
        }
        let Some((user, password)) = header
            .strip_prefix("Basic ")
            .and_then(|encoded| {
                base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .ok()
            })
            .and_then(|decoded| String::from_utf8(decoded).ok())
            .and_then(|pair| {
                pair.split_once(':')
                    .map(|(u, p)| (u.to_owned(), p.to_owned()))
            })
        else {
            return Verdict::Denied;
        };
        let source = source_of(peer);
        let turn = match self.turn(source) {
            Ok(turn) => turn,
            Err(retry_after) => return Verdict::Limited { retry_after },
        };
        let verdict = {
            let _turn = turn.lock().await;
            self.verify(header, user, password, source).await
        };
        drop(turn);
        let now = Instant::now();
        let mut sources = lock(&self.sources);
        if sources.get(&source).is_some_and(|s| s.forgotten(now)) {
            sources.remove(&source);
        }
        verdict
    }

    /// The address's turn to be checked, or how long it must wait.
    fn turn(&self, source: IpAddr) -> Result<Arc<tokio::sync::Mutex<()>>, Duration> {
        let now = Instant::now();
        let mut sources = lock(&self.sources);
        if let Some(wait) = waiting(sources.get(&source), now) {
            return Err(wait);
        }
        if sources.len() >= MAX_SOURCES && !sources.contains_key(&source) {
            sources.retain(|_, s| !s.forgotten(now));
            let quietest = sources
                .iter()
                .filter(|(_, s)| Arc::strong_count(&s.turn) == 1)
                .min_by_key(|(_, s)| s.last_failure)
                .map(|(ip, _)| *ip);
            if sources.len() >= MAX_SOURCES
                && let Some(ip) = quietest
            {
                sources.remove(&ip);
            }
        }
        Ok(sources.entry(source).or_default().turn.clone())
    }

    /// Checks a password on the verifiers, once the address's turn came.
    async fn verify(
        &self,
        header: &str,
        user: String,
        password: String,
        source: IpAddr,
    ) -> Verdict {
        // What the turn waited for may have decided already.
        if let Some(retry_after) = waiting(lock(&self.sources).get(&source), Instant::now()) {
            return Verdict::Limited { retry_after };
        }
        if lock(&self.passed).contains(header) {
            return Verdict::Allowed;
        }
        // An unknown user is checked against some user's hash, so that it
        // takes as long as a known one; it cannot pass.
        let known = self.hashes.contains_key(&user);
        let Some(hash) = self.hashes.get(&user).or(self.hashes.values().next()) else {
            return Verdict::Denied;
        };
        let hash = hash.clone();
        let verified = {
            let Ok(_verifier) = self.verifiers.acquire().await else {
                return Verdict::Denied;
            };
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
                .await
                .is_ok_and(|result| result.unwrap_or(false))
        };
        let now = Instant::now();
        if known && verified {
            let mut passed = lock(&self.passed);
            if passed.len() >= PASSED_KEPT {
                passed.clear();
            }
            passed.insert(header.to_owned());
            drop(passed);
            if let Some(state) = lock(&self.sources).get_mut(&source) {
                state.failures = 0;
                state.wait_until = None;
            }
            return Verdict::Allowed;
        }
        let mut sources = lock(&self.sources);
        let state = sources.entry(source).or_default();
        if state
            .last_failure
            .is_some_and(|at| now.duration_since(at) >= FORGET_AFTER)
        {
            state.failures = 0;
        }
        state.failures += 1;
        state.last_failure = Some(now);
        if let Some(beyond) = state.failures.checked_sub(FREE_FAILURES + 1) {
            let wait = FIRST_WAIT
                .checked_mul(1 << beyond.min(16))
                .map_or(MAX_WAIT, |wait| wait.min(MAX_WAIT));
            state.wait_until = Some(now + wait);
            tracing::info!(
                source = %source,
                failures = state.failures,
                "failed logins: this address is refused for {}s",
                wait.as_secs()
            );
        }
        Verdict::Denied
    }
}

/// How long an address still has to wait, if it does.
fn waiting(source: Option<&Source>, now: Instant) -> Option<Duration> {
    source
        .and_then(|s| s.wait_until)
        .and_then(|until| until.checked_duration_since(now))
        .filter(|wait| !wait.is_zero())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(hash: &str) -> BasicAuth {
        BasicAuth::new([("prometheus".to_owned(), hash.to_owned())].into())
    }

    fn header(user: &str, password: &str) -> String {
        let pair = format!("{user}:{password}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn users_pass_with_their_password_only() {
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        let auth = users(&hash);
        assert!(is_bcrypt_hash(&hash));
        assert!(!is_bcrypt_hash("plain"));
        let good = header("prometheus", "s3cret");
        assert_eq!(auth.check(Some(&good), HERE).await, Verdict::Allowed);
        assert_eq!(
            auth.check(Some(&good), HERE).await,
            Verdict::Allowed,
            "remembered"
        );
        for bad in [
            header("prometheus", "guess"),
            header("nobody", "s3cret"),
            "Bearer abc".to_owned(),
            "Basic !!!".to_owned(),
        ] {
            assert_eq!(auth.check(Some(&bad), HERE).await, Verdict::Denied, "{bad}");
        }
        assert_eq!(auth.check(None, HERE).await, Verdict::Denied);
    }

    #[tokio::test]
    async fn an_address_that_keeps_failing_waits_alone() {
        let hash = bcrypt::hash("s3cret", 4).expect("hash");
        let auth = users(&hash);
        let attacker: IpAddr = "2001:db8::1".parse().expect("address");
        let same_host: IpAddr = "2001:db8::2".parse().expect("same /64");
        let other: IpAddr = "192.0.2.7".parse().expect("address");
        let wrong = header("prometheus", "guess");
        for _ in 0..=FREE_FAILURES {
            assert_eq!(auth.check(Some(&wrong), attacker).await, Verdict::Denied);
        }
        // Refused unchecked, the right password too: waiting is no oracle.
        let good = header("prometheus", "s3cret");
        for (header, source) in [(&wrong, attacker), (&good, attacker), (&good, same_host)] {
            let Verdict::Limited { retry_after } = auth.check(Some(header), source).await else {
                panic!("{source} not limited");
            };
            assert!(retry_after <= FIRST_WAIT, "{retry_after:?}");
        }
        // Another address is checked as ever.
        assert_eq!(auth.check(Some(&wrong), other).await, Verdict::Denied);
        assert_eq!(auth.check(Some(&good), other).await, Verdict::Allowed);
        assert_eq!(source_of(same_host), source_of(attacker));
    }
}
