//! A hash chain per account. Each event stores `hash = SHA-256(domain tag,
//! the previous event's hash, the event's stored content)`, and the account's
//! state keeps the hash of its last event (its head). The append-only
//! triggers stop accidents; the chain shows an edit made behind their back
//! (by a superuser, say): change one stored field of one event and its hash
//! no longer matches; rewrite its hash too and the next event's link breaks;
//! rewrite the whole tail and the account's head, and the published digest of
//! every head (an auditor's pin of history at a point in time) no longer
//! matches. `billing verify` walks every chain and names the first broken
//! link.
//!
//! The content is every stored column an event is read by (ids, version,
//! type, time to the microsecond as stored, actor, key, trace, the payload and
//! account view as their exact stored JSON text, the balances), each
//! length-prefixed so that no two contents hash alike by shifting bytes
//! between fields. Events written before the chain existed carry no hash:
//! an account's chain then starts at its first hashed event, from the
//! genesis hash.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A link of the chain.
pub type ChainHash = [u8; 32];

/// The hash before an account's first event.
pub const GENESIS: ChainHash = [0; 32];

/// Names this scheme, so a hash never collides with one of another scheme.
const TAG: &[u8] = b"billing.event-chain.v1";

/// The stored content of one event, as it is hashed.
#[derive(Debug, Clone, Copy)]
pub struct Content<'a> {
    pub event_id: Uuid,
    pub account_id: Uuid,
    pub version: i64,
    pub event_type: &'a str,
    pub schema_version: i32,
    /// `occurred_at` in microseconds since the Unix epoch, as PostgreSQL
    /// stores it.
    pub occurred_at_micros: i64,
    pub principal: &'a str,
    pub role: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub trace_id: Option<&'a str>,
    /// The request's span, which the publisher and projector link to.
    pub span_id: Option<&'a str>,
    /// The payload's stored JSON text.
    pub payload: &'a [u8],
    /// balance, reserved and available credit and tokens, in column order.
    pub balances: [i64; 6],
    /// The account view's stored JSON text (absent on the oldest events).
    pub account_after: Option<&'a [u8]>,
}

/// The hash of the event with `content` following `previous`.
pub fn link(previous: &ChainHash, content: &Content<'_>) -> ChainHash {
    let mut h = Sha256::new();
    bytes(&mut h, TAG);
    h.update(previous);
    h.update(content.event_id.as_bytes());
    h.update(content.account_id.as_bytes());
    h.update(content.version.to_be_bytes());
    bytes(&mut h, content.event_type.as_bytes());
    h.update(content.schema_version.to_be_bytes());
    h.update(content.occurred_at_micros.to_be_bytes());
    bytes(&mut h, content.principal.as_bytes());
    bytes(&mut h, content.role.as_bytes());
    optional(&mut h, content.idempotency_key.map(str::as_bytes));
    optional(&mut h, content.trace_id.map(str::as_bytes));
    optional(&mut h, content.span_id.map(str::as_bytes));
    bytes(&mut h, content.payload);
    for balance in content.balances {
        h.update(balance.to_be_bytes());
    }
    optional(&mut h, content.account_after);
    h.finalize().into()
}

fn bytes(h: &mut Sha256, value: &[u8]) {
    h.update((value.len() as u64).to_be_bytes());
    h.update(value);
}

fn optional(h: &mut Sha256, value: Option<&[u8]>) {
    match value {
        None => h.update([0]),
        Some(value) => {
            h.update([1]);
            bytes(h, value);
        }
    }
}

/// A head as the account's state keeps it: lowercase hex.
pub fn to_hex(hash: &ChainHash) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(64);
    for byte in hash {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// The inverse of [`to_hex`]; `None` for anything else.
pub fn from_hex(text: &str) -> Option<ChainHash> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(hash)
}

/// Why a link does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// The stored hash is not the hash of the stored content and the
    /// previous link: this event (or its hash) was edited.
    Mismatch,
    /// A version is missing: an event was deleted.
    Missing { expected: i64 },
    /// A hash was removed from an event after the chain had started.
    Unhashed,
    /// The account's head is not its last event's hash.
    Head,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Mismatch => f.write_str(
                "the stored hash does not match the event's content and the previous link: the event was edited",
            ),
            Self::Missing { expected } => {
                write!(f, "version {expected} is missing: an event was deleted")
            }
            Self::Unhashed => f.write_str("the event's hash was removed"),
            Self::Head => f.write_str("the account's chain head is not the hash of its last event"),
        }
    }
}

/// The first link that does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    pub account_id: Uuid,
    pub version: i64,
    pub problem: Break,
}

/// Walks one account's events in version order.
#[derive(Debug)]
pub(crate) struct Walk {
    pub account_id: Uuid,
    /// The last event's hash, once the chain has started.
    head: Option<ChainHash>,
    last_version: i64,
    /// Events before the chain started (written before it existed).
    pub unchained: u64,
}

impl Walk {
    pub fn new(account_id: Uuid) -> Self {
        Self {
            account_id,
            head: None,
            last_version: 0,
            unchained: 0,
        }
    }

    /// Checks the next event; `stored` is its stored hash.
    pub fn next(&mut self, content: &Content<'_>, stored: Option<&[u8]>) -> Result<(), BrokenLink> {
        let broken = |problem| BrokenLink {
            account_id: self.account_id,
            version: content.version,
            problem,
        };
        if content.version != self.last_version + 1 {
            return Err(BrokenLink {
                account_id: self.account_id,
                version: self.last_version + 1,
                problem: Break::Missing {
                    expected: self.last_version + 1,
                },
            });
        }
        self.last_version = content.version;
        match (stored, self.head) {
            (None, None) => {
                self.unchained += 1;
                Ok(())
            }
            (None, Some(_)) => Err(broken(Break::Unhashed)),
            (Some(stored), previous) => {
                let expected = link(&previous.unwrap_or(GENESIS), content);
                if stored != expected {
                    return Err(broken(Break::Mismatch));
                }
                self.head = Some(expected);
                Ok(())
            }
        }
    }

    /// Checks the account's kept head against the walked chain.
    pub fn finish(&self, kept_head: Option<&str>) -> Result<(), BrokenLink> {
        if kept_head.and_then(from_hex) == self.head {
            Ok(())
        } else {
            Err(BrokenLink {
                account_id: self.account_id,
                version: self.last_version,
                problem: Break::Head,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(version: i64, payload: &[u8]) -> Content<'_> {
        Content {
            event_id: Uuid::from_u128(version as u128),
            account_id: Uuid::from_u128(7),
            version,
            event_type: "debited",
            schema_version: 1,
            occurred_at_micros: 1_700_000_000_000_000,
            principal: "svc",
            role: "service",
            idempotency_key: Some("k"),
            trace_id: None,
            span_id: None,
            payload,
            balances: [1, 2, 3, 4, 5, 6],
            account_after: Some(b"{}"),
        }
    }

    #[test]
    fn a_clean_chain_walks_and_its_head_matches() {
        let first = link(&GENESIS, &content(1, b"{\"a\":1}"));
        let second = link(&first, &content(2, b"{\"a\":2}"));
        let mut walk = Walk::new(Uuid::from_u128(7));
        walk.next(&content(1, b"{\"a\":1}"), Some(&first)).unwrap();
        walk.next(&content(2, b"{\"a\":2}"), Some(&second)).unwrap();
        walk.finish(Some(&to_hex(&second))).unwrap();
        assert_eq!(from_hex(&to_hex(&second)), Some(second));
    }

    #[test]
    fn an_edited_payload_breaks_its_own_link() {
        let first = link(&GENESIS, &content(1, b"{\"a\":1}"));
        let mut walk = Walk::new(Uuid::from_u128(7));
        let err = walk
            .next(&content(1, b"{\"a\":9}"), Some(&first))
            .unwrap_err();
        assert_eq!((err.version, err.problem), (1, Break::Mismatch));
    }

    #[test]
    fn a_rehashed_edit_breaks_the_next_link_and_a_deleted_event_is_missing() {
        let first = link(&GENESIS, &content(1, b"{\"a\":1}"));
        let second = link(&first, &content(2, b"{\"a\":2}"));
        let forged = link(&GENESIS, &content(1, b"{\"a\":9}"));
        let mut walk = Walk::new(Uuid::from_u128(7));
        walk.next(&content(1, b"{\"a\":9}"), Some(&forged)).unwrap();
        let err = walk
            .next(&content(2, b"{\"a\":2}"), Some(&second))
            .unwrap_err();
        assert_eq!((err.version, err.problem), (2, Break::Mismatch));

        let mut walk = Walk::new(Uuid::from_u128(7));
        walk.next(&content(1, b"{\"a\":1}"), Some(&first)).unwrap();
        let third = content(3, b"{}");
        let err = walk.next(&third, Some(&GENESIS)).unwrap_err();
        assert_eq!(err.problem, Break::Missing { expected: 2 });
    }

    #[test]
    fn fields_cannot_trade_bytes() {
        let mut a = content(1, b"{}");
        let mut b = content(1, b"{}");
        a.principal = "ab";
        a.role = "c";
        b.principal = "a";
        b.role = "bc";
        assert_ne!(link(&GENESIS, &a), link(&GENESIS, &b));
    }

    #[test]
    fn events_from_before_the_chain_are_counted_not_refused() {
        let mut walk = Walk::new(Uuid::from_u128(7));
        walk.next(&content(1, b"{}"), None).unwrap();
        let second = link(&GENESIS, &content(2, b"{}"));
        walk.next(&content(2, b"{}"), Some(&second)).unwrap();
        assert_eq!(walk.unchained, 1);
        let err = walk.next(&content(3, b"{}"), None).unwrap_err();
        assert_eq!(err.problem, Break::Unhashed);
    }
}
