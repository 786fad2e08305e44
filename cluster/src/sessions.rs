//! Client sessions: a proposal applied at most once however often its
//! client retries it.
//!
//! A remote client (`MetaClient`) may resend a proposal after a timeout or
//! a leader change although the first copy committed (a `NotLeader` answer
//! does not say it did not). Such a client wraps each command in a
//! [`SessionProposal`]: its random client id and a sequence number, the
//! same for every retry of one call, one more for the next call. The
//! replica applies a sequence number once per client and answers a repeat
//! with the result it recorded.
//!
//! The table is part of the replicated state (in every snapshot), so every
//! replica dedups alike. It keeps the newest [`CLIENTS_MAX`] clients;
//! evicting the least recently applied one is deterministic (ties broken by
//! client id). Sans-IO.

use std::collections::{BTreeMap, BTreeSet};

/// Clients remembered; the least recently active is forgotten first (a
/// retry from it would then apply again).
pub const CLIENTS_MAX: usize = 4096;
/// Largest result kept per client (bigger results are answered to a retry
/// as [`Dedup::Forgotten`]).
pub const RESULT_MAX_BYTES: usize = 64 << 10;

const PROPOSAL_MAGIC: [u8; 4] = [0xd1, 0x5e, 0x55, 0x01];
const SNAPSHOT_MAGIC: [u8; 4] = [0xd1, 0x5e, 0x55, 0x5a];
const PROPOSAL_HEADER_BYTES: usize = 4 + 8 + 8;

/// A command with its client session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionProposal<'a> {
    /// The client's random id.
    pub client: u64,
    /// Its call number (the same for every retry of one call).
    pub seq: u64,
    /// The state machine's command.
    pub command: &'a [u8],
}

impl<'a> SessionProposal<'a> {
    /// The bytes to propose.
    pub fn encode(client: u64, seq: u64, command: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(PROPOSAL_HEADER_BYTES + command.len());
        out.extend_from_slice(&PROPOSAL_MAGIC);
        out.extend_from_slice(&client.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(command);
        out
    }

    /// The session of an entry's bytes, or `None` for a plain command.
    pub fn decode(data: &'a [u8]) -> Option<Self> {
        if data.len() < PROPOSAL_HEADER_BYTES || data[..4] != PROPOSAL_MAGIC {
            return None;
        }
        Some(Self {
            client: u64::from_le_bytes(data[4..12].try_into().ok()?),
            seq: u64::from_le_bytes(data[12..20].try_into().ok()?),
            command: &data[PROPOSAL_HEADER_BYTES..],
        })
    }
}

/// What to do with a session proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dedup {
    /// New: apply it, then [`Sessions::record`] the result.
    Apply,
    /// Already applied: answer this result again.
    Repeat(Vec<u8>),
    /// Already applied, its result not kept (too big, or an older call
    /// whose client has moved on): answer this.
    Forgotten,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Client {
    seq: u64,
    /// Log index of its last applied proposal (recency).
    index: u64,
    result: Option<Vec<u8>>,
}

/// The sessions table of one replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sessions {
    clients: BTreeMap<u64, Client>,
    /// `(index, client)`: eviction order.
    recency: BTreeSet<(u64, u64)>,
}

impl Sessions {
    /// Clients remembered.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Whether `proposal` must be applied.
    pub fn check(&self, proposal: &SessionProposal<'_>) -> Dedup {
        match self.clients.get(&proposal.client) {
            Some(c) if proposal.seq == c.seq => {
                c.result.clone().map_or(Dedup::Forgotten, Dedup::Repeat)
            }
            Some(c) if proposal.seq < c.seq => Dedup::Forgotten,
            _ => Dedup::Apply,
        }
    }

    /// Records that `proposal` was applied at `index` with `result`.
    pub fn record(&mut self, proposal: &SessionProposal<'_>, index: u64, result: &[u8]) {
        if let Some(old) = self.clients.get(&proposal.client) {
            self.recency.remove(&(old.index, proposal.client));
        }
        self.clients.insert(
            proposal.client,
            Client {
                seq: proposal.seq,
                index,
                result: (result.len() <= RESULT_MAX_BYTES).then(|| result.to_vec()),
            },
        );
        self.recency.insert((index, proposal.client));
        while self.clients.len() > CLIENTS_MAX {
            let Some((_, oldest)) = self.recency.pop_first() else {
                break;
            };
            self.clients.remove(&oldest);
        }
    }

    /// A snapshot of the state machine, with this table in front when it
    /// is not empty (an empty table leaves the bytes as they were).
    pub fn wrap_snapshot(&self, state: Vec<u8>) -> Vec<u8> {
        if self.clients.is_empty() {
            return state;
        }
        let mut out = Vec::with_capacity(state.len() + 64 * self.clients.len());
        out.extend_from_slice(&SNAPSHOT_MAGIC);
        out.extend_from_slice(&(self.clients.len() as u64).to_le_bytes());
        for (id, c) in &self.clients {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&c.seq.to_le_bytes());
            out.extend_from_slice(&c.index.to_le_bytes());
            match &c.result {
                Some(r) => {
                    out.push(1);
                    out.extend_from_slice(&(r.len() as u64).to_le_bytes());
                    out.extend_from_slice(r);
                }
                None => out.push(0),
            }
        }
        out.extend_from_slice(&state);
        out
    }

    /// Splits a snapshot made by [`Sessions::wrap_snapshot`] into the table
    /// and the state machine's bytes; a snapshot without a table gives an
    /// empty one. A damaged table is an error.
    pub fn unwrap_snapshot(data: &[u8]) -> Result<(Self, &[u8]), String> {
        if data.len() < 4 || data[..4] != SNAPSHOT_MAGIC {
            return Ok((Self::default(), data));
        }
        let mut rest = &data[4..];
        let count = take_u64(&mut rest)?;
        if count > CLIENTS_MAX as u64 {
            return Err(format!(
                "snapshot lists {count} client sessions, more than {CLIENTS_MAX}"
            ));
        }
        let mut table = Self::default();
        for _ in 0..count {
            let id = take_u64(&mut rest)?;
            let seq = take_u64(&mut rest)?;
            let index = take_u64(&mut rest)?;
            let (&flag, tail) = rest.split_first().ok_or("client session cut short")?;
            rest = tail;
            let result = match flag {
                0 => None,
                1 => {
                    let len = usize::try_from(take_u64(&mut rest)?)
                        .ok()
                        .filter(|&l| l <= RESULT_MAX_BYTES && l <= rest.len())
                        .ok_or("client session result length out of range")?;
                    let (r, tail) = rest.split_at(len);
                    rest = tail;
                    Some(r.to_vec())
                }
                other => return Err(format!("client session flag {other}")),
            };
            table.clients.insert(id, Client { seq, index, result });
            table.recency.insert((index, id));
        }
        Ok((table, rest))
    }
}

fn take_u64(rest: &mut &[u8]) -> Result<u64, String> {
    let (head, tail) = rest
        .split_at_checked(8)
        .ok_or("client session table cut short")?;
    *rest = tail;
    Ok(u64::from_le_bytes(
        head.try_into()
            .map_err(|_| "client session table cut short")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposals_round_trip_and_plain_commands_are_not_sessions() {
        let bytes = SessionProposal::encode(7, 3, b"cmd");
        assert_eq!(
            SessionProposal::decode(&bytes),
            Some(SessionProposal {
                client: 7,
                seq: 3,
                command: b"cmd"
            })
        );
        assert_eq!(SessionProposal::decode(b"cmd"), None);
        assert_eq!(SessionProposal::decode(&bytes[..10]), None);
    }

    #[test]
    fn a_retry_is_answered_from_the_table_and_old_calls_are_forgotten() {
        let mut s = Sessions::default();
        let p1 = SessionProposal {
            client: 1,
            seq: 1,
            command: b"a",
        };
        assert_eq!(s.check(&p1), Dedup::Apply);
        s.record(&p1, 10, b"r1");
        assert_eq!(s.check(&p1), Dedup::Repeat(b"r1".to_vec()));
        let p2 = SessionProposal {
            seq: 2,
            ..p1.clone()
        };
        assert_eq!(s.check(&p2), Dedup::Apply);
        s.record(&p2, 11, &vec![0; RESULT_MAX_BYTES + 1]);
        assert_eq!(s.check(&p2), Dedup::Forgotten, "too big to keep");
        assert_eq!(s.check(&p1), Dedup::Forgotten, "an older call");
        let other = SessionProposal {
            client: 2,
            seq: 1,
            command: b"a",
        };
        assert_eq!(s.check(&other), Dedup::Apply, "sessions are per client");
    }

    #[test]
    fn the_least_recent_client_is_evicted_first() {
        let mut s = Sessions::default();
        for client in 0..=CLIENTS_MAX as u64 {
            let p = SessionProposal {
                client,
                seq: 1,
                command: b"",
            };
            s.record(&p, 100 + client, b"ok");
        }
        assert_eq!(s.len(), CLIENTS_MAX);
        let first = SessionProposal {
            client: 0,
            seq: 1,
            command: b"",
        };
        assert_eq!(s.check(&first), Dedup::Apply, "client 0 was evicted");
        let last = SessionProposal {
            client: CLIENTS_MAX as u64,
            seq: 1,
            command: b"",
        };
        assert_eq!(s.check(&last), Dedup::Repeat(b"ok".to_vec()));
    }

    #[test]
    fn snapshots_carry_the_table_and_damage_is_an_error() {
        let mut s = Sessions::default();
        assert_eq!(
            s.wrap_snapshot(b"state".to_vec()),
            b"state",
            "empty: unchanged"
        );
        for (client, seq) in [(5u64, 2u64), (9, 4)] {
            let p = SessionProposal {
                client,
                seq,
                command: b"",
            };
            s.record(&p, client * 10, format!("r{client}").as_bytes());
        }
        let wrapped = s.wrap_snapshot(b"state".to_vec());
        let (back, state) = Sessions::unwrap_snapshot(&wrapped).expect("unwrap");
        assert_eq!(back, s);
        assert_eq!(state, b"state");
        let (plain, state) = Sessions::unwrap_snapshot(b"legacy").expect("plain");
        assert!(plain.is_empty());
        assert_eq!(state, b"legacy");
        for cut in 5..wrapped.len() - 5 {
            // Cut anywhere inside the table: an error or a shorter state,
            // never a panic.
            let _ = Sessions::unwrap_snapshot(&wrapped[..cut]);
        }
        assert!(Sessions::unwrap_snapshot(&wrapped[..20]).is_err());
    }
}
