//! The transport logic over the in-memory verbs: both ends in one
//! process, a map of blocks as the home's engine, a clock in the test's
//! hands, and hostile peers driven by hand.

use std::collections::HashMap;

use datenlord_engine::BlockId;

use super::home::{Home, Outcome};
use super::mem::{MemControl, MemQp};
use super::requester::{Answer, Requester};
use super::verbs::{Completion, Region, RemoteSlot, Verbs, WcStatus};
use super::wire::{encode_request, ANSWER_BYTES, REQUEST_BYTES};
use super::{Params, RdmaError};
use crate::neighbor::conn::NeighborError;
use crate::neighbor::frame::{FrameError, Header, Kind};

const BLOCK: u32 = 4096;
const TIMEOUT_MS: u64 = 1_000;

/// A requester, a home serving `blocks`, and hands on both queue pairs.
struct Link {
    requester: Requester<MemQp>,
    home: Home<MemQp>,
    requester_qp: MemControl,
    home_qp: MemControl,
    blocks: HashMap<BlockId, Vec<u8>>,
    now_ms: u64,
}

impl Link {
    fn new(credits: u16) -> Self {
        let params = Params::new(credits, BLOCK).expect("params");
        let (a, b) = MemQp::pair();
        let (requester_qp, home_qp) = (a.control(), b.control());
        let requester = Requester::new(a, params).expect("requester");
        let home = Home::new(b, params, requester.landing()).expect("home");
        Self {
            requester,
            home,
            requester_qp,
            home_qp,
            blocks: HashMap::new(),
            now_ms: 0,
        }
    }

    fn read(&mut self, id: BlockId, range: Option<(u32, u32)>) -> u64 {
        self.requester
            .start(id, range, self.now_ms, TIMEOUT_MS)
            .expect("start")
    }

    /// The home answers whatever arrived (from `blocks`), in reverse
    /// order when `reverse`; how many it answered.
    fn serve(&mut self, reverse: bool) -> Result<usize, RdmaError> {
        let mut requests = self.home.poll()?;
        if reverse {
            requests.reverse();
        }
        let n = requests.len();
        for request in requests {
            let h = request.header;
            let id = BlockId::new(h.ino, h.index, h.block_version);
            let data = self.blocks.get(&id).cloned();
            let outcome = match &data {
                Some(d) if h.range == 0 => Outcome::Block(d),
                Some(d) => Outcome::Block(&d[h.offset as usize..(h.offset + h.range) as usize]),
                None => Outcome::Missing,
            };
            self.home.answer(request, outcome)?;
        }
        Ok(n)
    }

    fn progress(&mut self) -> HashMap<u64, Answer> {
        self.requester.progress(self.now_ms).into_iter().collect()
    }
}

fn block(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn a_block_is_read_end_to_end_whole_and_in_part() {
    let mut link = Link::new(4);
    let id = BlockId::new(7, 3, 9 << 16);
    link.blocks.insert(id, block(1, 3000));
    let whole = link.read(id, None);
    let part = link.read(id, Some((100, 50)));
    assert_eq!(link.serve(false).expect("serve"), 2);
    let answers = link.progress();
    assert_eq!(answers[&whole].as_ref().expect("whole"), &block(1, 3000));
    assert_eq!(
        answers[&part].as_ref().expect("part"),
        &block(1, 3000)[100..150]
    );
    assert_eq!(
        (link.requester.in_flight(), link.requester.credits_free()),
        (0, 4)
    );
    assert!(link.requester.broken().is_none() && link.home.broken().is_none());
}

#[test]
fn a_miss_and_a_failure_are_answers_not_broken_connections() {
    let mut link = Link::new(2);
    let missing = link.read(BlockId::new(1, 0, 1 << 16), None);
    link.serve(false).expect("serve");
    let answers = link.progress();
    assert!(matches!(answers[&missing], Err(NeighborError::Missing)));

    let failing = link.read(BlockId::new(1, 1, 1 << 16), Some((0, 10)));
    let request = link.home.poll().expect("poll").pop().expect("a request");
    let message = "the store is down, and this message is longer than the ten bytes asked for";
    link.home
        .answer(request, Outcome::Failed(message))
        .expect("answer");
    let answers = link.progress();
    match &answers[&failing] {
        Err(NeighborError::Failed(m)) => assert_eq!(m, &message[..10]),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(link.requester.broken().is_none());
    assert_eq!(link.requester.credits_free(), 2);
}

#[test]
fn concurrent_requests_are_bounded_by_credits_and_matched_out_of_order() {
    let credits = 4;
    let mut link = Link::new(credits);
    let ids: Vec<BlockId> = (0..64).map(|i| BlockId::new(5, i, 1 << 16)).collect();
    for (i, id) in ids.iter().enumerate() {
        link.blocks.insert(*id, block(i as u8, 100 + i * 50));
    }
    let mut asked = HashMap::new();
    let mut next = ids.iter();
    let mut answered = 0;
    let mut round = 0;
    while answered < ids.len() {
        while link.requester.credits_free() > 0 {
            let Some(id) = next.next() else { break };
            asked.insert(link.read(*id, None), *id);
        }
        assert!(link.requester.in_flight() <= usize::from(credits));
        assert!(
            link.requester.start(ids[0], None, 0, TIMEOUT_MS).is_err(),
            "no credit left"
        );
        link.serve(round % 2 == 0).expect("serve");
        for (request, answer) in link.progress() {
            let id = asked.remove(&request).expect("an answer to a request");
            assert_eq!(answer.expect("a block"), link.blocks[&id]);
            answered += 1;
        }
        round += 1;
        assert!(round < 1000, "no progress");
    }
    assert!(asked.is_empty());
}

/// A hostile requester: a bare queue pair end posting whatever it likes.
struct Hostile {
    qp: MemQp,
    out: Region,
    landing: Region,
}

impl Hostile {
    fn new(qp: MemQp, credits: u16) -> Self {
        let mut qp = qp;
        let out = qp.register(4096, false).expect("register");
        let landing = qp
            .register(usize::from(credits) * BLOCK as usize, true)
            .expect("register");
        Self { qp, out, landing }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.qp.store(self.out, 0, bytes).expect("store");
        self.qp
            .post_send(1, self.out, 0, bytes.len())
            .expect("send");
    }

    fn completions(&mut self) -> Vec<Completion> {
        let mut out = Vec::new();
        self.qp.poll(&mut out, 64).expect("poll");
        out
    }
}

/// A home facing a hostile requester: the requester's landing region and
/// the hostile end.
fn home_facing_hostile() -> (Home<MemQp>, Hostile, RemoteSlot) {
    let (a, b) = MemQp::pair();
    let hostile = Hostile::new(a, 2);
    let landing = hostile.qp.remote(hostile.landing).expect("remote");
    let home = Home::new(b, Params::new(2, BLOCK).expect("params"), landing).expect("home");
    (home, hostile, landing)
}

#[test]
fn a_request_naming_a_slot_outside_its_region_or_of_another_length_is_refused() {
    let read = Header::read(1, 7, 0, 1 << 16);
    let part = Header::read_range(2, [7, 0, 1 << 16], 0, 100);
    let check = |header: Header, slot: &dyn Fn(RemoteSlot) -> RemoteSlot| {
        let (mut home, mut hostile, landing) = home_facing_hostile();
        hostile.send(&encode_request(&header, slot(landing)));
        let polled = home.poll();
        assert!(matches!(polled, Err(RdmaError::Protocol(_))), "{polled:?}");
        assert!(home.qp().control().is_error(), "the connection is closed");
        assert!(home.poll().is_err());
    };
    let at = |landing: RemoteSlot, off: u64, len: u32| RemoteSlot {
        addr: landing.addr.wrapping_add(off),
        len,
        ..landing
    };
    check(read, &|l| at(l, 1, BLOCK)); // not on a slot's first byte
    check(read, &|l| at(l, 2 * u64::from(BLOCK), BLOCK)); // past the region's end
    check(part, &|l| at(l, 2 * u64::from(BLOCK) - 50, 100)); // runs past it
    check(read, &|l| at(l, u64::from(BLOCK), BLOCK + 1)); // longer than a block
    check(read, &|l| at(l, u64::MAX - 10, BLOCK)); // before the region, wrapping
    check(read, &|l| at(l, 0, BLOCK - 1)); // not a block's length
    check(part, &|l| at(l, 0, 101)); // not the range's length
    check(read, &|l| RemoteSlot {
        rkey: l.rkey ^ 0x40,
        ..l
    }); // another rkey
    check(read, &|l| RemoteSlot {
        addr: u64::MAX,
        len: u32::MAX,
        ..l
    });
    // Slots that fit are served.
    let (mut home, mut hostile, landing) = home_facing_hostile();
    hostile.send(&encode_request(&part, at(landing, u64::from(BLOCK), 100)));
    assert_eq!(home.poll().expect("a fitting slot").len(), 1);
}

#[test]
fn forged_headers_from_a_requester_are_refused_without_panicking() {
    let read = Header::read(1, 7, 0, 1 << 16);
    let forge = |bytes: Vec<u8>| {
        let (mut home, mut hostile, _) = home_facing_hostile();
        hostile.send(&bytes);
        assert!(home.poll().is_err(), "{bytes:?}");
    };
    let (_, hostile, landing) = home_facing_hostile();
    drop(hostile);
    let good = encode_request(
        &read,
        RemoteSlot {
            len: BLOCK,
            ..landing
        },
    );
    let mut bad_magic = good;
    bad_magic[0] ^= 0xff;
    forge(bad_magic.to_vec());
    forge(good[..REQUEST_BYTES - 1].to_vec()); // short
    let oversized = Header {
        len: BLOCK + 1,
        ..read
    };
    forge(
        encode_request(
            &oversized,
            RemoteSlot {
                len: BLOCK,
                ..landing
            },
        )
        .to_vec(),
    );
    let warm = Header::warm(1, [7, 0, 1 << 16]);
    forge(
        encode_request(
            &warm,
            RemoteSlot {
                len: BLOCK,
                ..landing
            },
        )
        .to_vec(),
    );
    let answer = Header::answer(&read, Kind::Block, &[]);
    forge(
        encode_request(
            &answer,
            RemoteSlot {
                len: BLOCK,
                ..landing
            },
        )
        .to_vec(),
    );
    // Longer than a request: the home's receive is too short for it.
    let (mut home, mut hostile, _) = home_facing_hostile();
    hostile.send(&[0u8; REQUEST_BYTES + 1]);
    assert!(home.poll().is_err());
    assert!(hostile
        .completions()
        .iter()
        .any(|c| c.status != WcStatus::Success));
}

/// A hostile home: a bare end that answers as it likes. Returns the
/// requester's answers after `answer` ran against the request it got.
fn against_hostile_home(
    range: Option<(u32, u32)>,
    answer: impl FnOnce(&mut MemQp, Header, RemoteSlot),
) -> (Requester<MemQp>, Answer) {
    let (a, mut b) = MemQp::pair();
    let mut requester = Requester::new(a, Params::new(2, BLOCK).expect("params")).expect("req");
    let inbox = b.register(REQUEST_BYTES, false).expect("register");
    b.post_recv(1, inbox, 0, REQUEST_BYTES).expect("recv");
    let id = BlockId::new(7, 0, 1 << 16);
    let request = requester.start(id, range, 0, TIMEOUT_MS).expect("start");
    let mut bytes = [0u8; REQUEST_BYTES];
    b.load(inbox, 0, &mut bytes).expect("load");
    let (header, slot) = super::wire::decode_request(&bytes, BLOCK).expect("a valid request");
    answer(&mut b, header, slot);
    let mut answers: HashMap<u64, Answer> =
        requester.progress(TIMEOUT_MS - 1).into_iter().collect();
    let got = answers.remove(&request).expect("the request ended");
    (requester, got)
}

/// Writes `payload` to `slot` and sends `header`, from a bare end.
fn write_then_send(qp: &mut MemQp, header: &Header, payload: &[u8], slot: RemoteSlot) {
    let staging = qp.register(BLOCK as usize + 64, false).expect("register");
    let head = qp.register(ANSWER_BYTES + 8, false).expect("register");
    qp.store(staging, 0, payload).expect("store");
    if !payload.is_empty() {
        qp.post_write(2, staging, 0, payload.len(), slot)
            .expect("write");
    }
    qp.store(head, 0, &header.encode().0).expect("store");
    qp.post_send(3, head, 0, ANSWER_BYTES).expect("send");
}

/// A hostile home's answer to the request it got.
type Forge = Box<dyn FnOnce(&mut MemQp, Header, RemoteSlot)>;

/// What a hostile home does, to a whole-block read (`range: None`) or
/// to part of one.
struct Forgery {
    what: &'static str,
    range: Option<(u32, u32)>,
    forge: Forge,
}

fn forgery(what: &'static str, range: Option<(u32, u32)>, forge: Forge) -> Forgery {
    Forgery { what, range, forge }
}

/// Answers whose header lies.
fn header_forgeries() -> Vec<Forgery> {
    vec![
        forgery(
            "longer than a block",
            None,
            Box::new(|qp, h, slot| {
                let forged = Header {
                    len: BLOCK + 1,
                    ..Header::answer(&h, Kind::Block, &[])
                };
                write_then_send(qp, &forged, &[], slot);
            }),
        ),
        forgery(
            "longer than the range asked",
            Some((0, 10)),
            Box::new(|qp, h, slot| {
                let data = block(1, 11);
                write_then_send(
                    qp,
                    &Header::answer(&h, Kind::Block, &data),
                    &data[..10],
                    slot,
                );
            }),
        ),
        forgery(
            "another block",
            None,
            Box::new(|qp, h, slot| {
                let other = Header { index: 1, ..h };
                write_then_send(
                    qp,
                    &Header::answer(&other, Kind::Block, &[1; 10]),
                    &[1; 10],
                    slot,
                );
            }),
        ),
        forgery(
            "another request",
            None,
            Box::new(|qp, h, slot| {
                let other = Header {
                    request: h.request + 1,
                    ..h
                };
                write_then_send(qp, &Header::answer(&other, Kind::Missing, &[]), &[], slot);
            }),
        ),
        forgery(
            "a request where an answer belongs",
            None,
            Box::new(|qp, h, slot| {
                write_then_send(qp, &h, &[], slot);
            }),
        ),
        forgery(
            "a warm-up answer to a read",
            None,
            Box::new(|qp, h, slot| {
                write_then_send(qp, &Header::answer(&h, Kind::Warmed, &[]), &[], slot);
            }),
        ),
        forgery(
            "a foreign magic",
            None,
            Box::new(|qp, h, slot| {
                let answer = Header {
                    magic: 1,
                    ..Header::answer(&h, Kind::Missing, &[])
                };
                write_then_send(qp, &answer, &[], slot);
            }),
        ),
    ]
}

/// Answers whose payload or WRITE is wrong.
fn payload_forgeries() -> Vec<Forgery> {
    vec![
        forgery(
            "a payload failing its checksum",
            None,
            Box::new(|qp, h, slot| {
                let mut data = block(2, 500);
                let header = Header::answer(&h, Kind::Block, &data);
                data[10] ^= 1;
                write_then_send(qp, &header, &data, slot);
            }),
        ),
        forgery(
            "a write outside the slot",
            None,
            Box::new(|qp, h, slot| {
                let beyond = RemoteSlot {
                    addr: slot.addr + 2 * u64::from(BLOCK),
                    ..slot
                };
                write_then_send(
                    qp,
                    &Header::answer(&h, Kind::Block, &[1; 10]),
                    &[1; 10],
                    beyond,
                );
            }),
        ),
        forgery(
            "a write with another rkey",
            None,
            Box::new(|qp, h, slot| {
                let forged = RemoteSlot {
                    rkey: slot.rkey.wrapping_add(1),
                    ..slot
                };
                write_then_send(
                    qp,
                    &Header::answer(&h, Kind::Block, &[1; 10]),
                    &[1; 10],
                    forged,
                );
            }),
        ),
    ]
}

#[test]
fn forged_and_oversized_answers_break_the_connection() {
    // The honest answer passes (the harness itself is right).
    let (_, got) = against_hostile_home(None, |qp, h, slot| {
        let data = block(3, 1000);
        write_then_send(qp, &Header::answer(&h, Kind::Block, &data), &data, slot);
    });
    assert_eq!(got.expect("a block"), block(3, 1000));
    for Forgery { what, range, forge } in header_forgeries().into_iter().chain(payload_forgeries())
    {
        let (requester, got) = against_hostile_home(range, forge);
        assert!(got.is_err(), "{what}: {got:?}");
        assert!(
            requester.broken().is_some(),
            "{what}: the connection breaks"
        );
        assert!(
            requester.qp().control().is_error(),
            "{what}: its queue pair is shut"
        );
    }
    let (_, got) = against_hostile_home(None, |qp, h, slot| {
        let mut data = block(2, 500);
        let header = Header::answer(&h, Kind::Block, &data);
        data[0] ^= 1;
        write_then_send(qp, &header, &data, slot);
    });
    assert!(matches!(
        got,
        Err(NeighborError::Frame(FrameError::Checksum { len: 500 }))
    ));
}

#[test]
fn an_error_completion_mid_request_fails_every_request_on_the_connection() {
    // The requester's SEND fails.
    let mut link = Link::new(4);
    let id = BlockId::new(1, 0, 1 << 16);
    link.blocks.insert(id, block(0, 10));
    let first = link.read(id, None);
    link.requester_qp.fail_next(WcStatus::RetryExceeded);
    let second = link.read(id, None);
    let answers = link.progress();
    assert!(
        matches!(answers[&first], Err(NeighborError::Io(_))),
        "{answers:?}"
    );
    assert!(matches!(answers[&second], Err(NeighborError::Io(_))));
    assert!(link.requester.start(id, None, 0, TIMEOUT_MS).is_err());

    // The home's WRITE fails: the answer never comes; the deadline ends it.
    let mut link = Link::new(4);
    link.blocks.insert(id, block(0, 10));
    let request = link.read(id, None);
    link.home_qp.fail_next(WcStatus::RetryExceeded);
    link.serve(false)
        .expect("posting works; the completion fails");
    assert!(link.home.poll().is_err(), "the home sees its failed WRITE");
    assert!(link.progress().is_empty(), "nothing before the deadline");
    link.now_ms = TIMEOUT_MS;
    let answers = link.progress();
    assert!(matches!(
        answers[&request],
        Err(NeighborError::Timeout(TIMEOUT_MS))
    ));
    assert!(link.requester_qp.is_error());
}

#[test]
fn a_disconnect_or_a_lost_completion_ends_in_a_timeout_and_a_broken_connection() {
    let id = BlockId::new(1, 0, 1 << 16);
    let mut link = Link::new(2);
    link.blocks.insert(id, block(0, 10));
    let request = link.read(id, None);
    link.home_qp.cut();
    assert!(link.serve(false).is_ok());
    assert!(
        link.home.poll().is_err(),
        "the home's WRITE is not acknowledged"
    );
    link.now_ms = TIMEOUT_MS - 1;
    assert!(link.progress().is_empty());
    link.now_ms = TIMEOUT_MS;
    assert!(matches!(
        link.progress()[&request],
        Err(NeighborError::Timeout(_))
    ));
    assert!(link
        .requester
        .start(id, None, TIMEOUT_MS, TIMEOUT_MS)
        .is_err());

    // A requester's receive completion is lost.
    let mut link = Link::new(2);
    link.blocks.insert(id, block(0, 10));
    let request = link.read(id, None);
    link.requester_qp.drop_completions(2); // its SEND's and the answer's
    link.serve(false).expect("serve");
    assert!(link.progress().is_empty());
    link.now_ms = TIMEOUT_MS;
    assert!(matches!(
        link.progress()[&request],
        Err(NeighborError::Timeout(_))
    ));

    // A closed connection fails what is outstanding.
    let mut link = Link::new(2);
    let request = link.read(id, None);
    let closed: HashMap<u64, Answer> = link.requester.close().into_iter().collect();
    assert!(matches!(closed[&request], Err(NeighborError::Io(_))));
    // The request had arrived; answering it finds the requester gone.
    for request in link.home.poll().expect("the request arrived before") {
        link.home.answer(request, Outcome::Missing).expect("posted");
    }
    assert!(link.home.poll().is_err());
}

/// Runs a test's body on a glommio executor of its own (the in-memory
/// queue pairs and the streams stay on its thread).
fn run<F>(make: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 << 10)
        .spawn(make)
        .expect("executor")
        .join()
        .expect("the test's executor");
}

mod handshake {
    use std::path::Path;

    use super::*;
    use crate::certs::{init_ca, issue, CertRequest};
    use crate::neighbor::rdma::handshake::{self, Hello, QpAddr, Side, HELLO_BYTES};
    use crate::neighbor::rdma::{dial, CREDITS_MAX};
    use crate::tls::{Role, TlsDir};

    fn tls_dir(ca: &Path, dir: &Path, role: Role, id: Option<u64>) -> TlsDir {
        let request = CertRequest {
            name: format!("{}-{}", role.as_str(), id.unwrap_or(0)),
            role,
            id,
            days: 1,
            hosts: Vec::new(),
        };
        issue(ca, dir, &request).expect("issue");
        TlsDir::load(dir).expect("load")
    }

    use super::run;

    /// A requester holding `requester`'s certificate asks node 2 for its
    /// RDMA parameters; the home holds `home`'s. Both ends' outcomes.
    async fn connect(
        requester: TlsDir,
        home: TlsDir,
    ) -> (
        Result<Requester<MemQp>, RdmaError>,
        Result<Home<MemQp>, RdmaError>,
    ) {
        let params = Params::new(4, BLOCK).expect("params");
        let (a, b) = glommio::net::UnixStream::pair().expect("pair");
        let (qa, qb) = MemQp::pair();
        let serving = glommio::spawn_local(async move {
            dial::within(async {
                let (mut stream, _who) = dial::accept(b, &home).await?;
                handshake::serve(&mut stream, qb, params).await
            })
            .await
        });
        let requesting = dial::within(async {
            let mut stream = dial::connect(a, 2, &requester).await?;
            handshake::request(&mut stream, qa, params).await
        })
        .await;
        (requesting, serving.await)
    }

    #[test]
    fn nodes_of_the_ca_connect_and_read_over_the_exchanged_queue_pair() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca");
        init_ca(&ca, 1).expect("ca");
        let n1 = tls_dir(&ca, &dir.path().join("n1"), Role::Node, Some(1));
        let n2 = tls_dir(&ca, &dir.path().join("n2"), Role::Node, Some(2));
        run(move || async move {
            let (requester, home) = connect(n1, n2).await;
            let (mut requester, mut home) = (requester.expect("requester"), home.expect("home"));
            let id = BlockId::new(3, 1, 1 << 16);
            let request = requester.start(id, None, 0, TIMEOUT_MS).expect("start");
            let got = home.poll().expect("poll").pop().expect("the request");
            home.answer(got, Outcome::Block(&block(9, 2000)))
                .expect("answer");
            let answers: HashMap<u64, Answer> = requester.progress(1).into_iter().collect();
            assert_eq!(
                answers[&request].as_ref().expect("a block"),
                &block(9, 2000)
            );
        });
    }

    #[test]
    fn an_administrator_another_node_or_another_ca_gets_no_rdma_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca");
        init_ca(&ca, 1).expect("ca");
        let other_ca = dir.path().join("other-ca");
        init_ca(&other_ca, 1).expect("ca");
        let d = |name: &str| dir.path().join(name);
        let n = |name: &str, role, id| tls_dir(&ca, &d(name), role, id);
        let stranger = tls_dir(&other_ca, &d("s1"), Role::Node, Some(1));
        let revoked = n("r1", Role::Node, Some(1));
        let serial = revoked.identity().serial;
        let revoking = n("h3", Role::Node, Some(2));
        revoking.check_revocations(std::sync::Arc::new(move |s: &str| s == serial));
        let dirs = [
            (n("admin", Role::Admin, None), n("h1", Role::Node, Some(2))),
            (n("n1", Role::Node, Some(1)), n("n3", Role::Node, Some(3))),
            (
                n("n1b", Role::Node, Some(1)),
                n("m2", Role::Master, Some(2)),
            ),
            (stranger, n("h2", Role::Node, Some(2))),
            (revoked, revoking),
        ];
        run(move || async move {
            let mut outcomes = Vec::new();
            for (requester, home) in dirs {
                outcomes.push(connect(requester, home).await);
            }
            let [admin, not_node_2, master, stranger, revoked] = &outcomes[..] else {
                unreachable!()
            };
            // An administrator asks: the home refuses it.
            assert!(
                matches!(admin.1, Err(RdmaError::Identity(_))),
                "{:?}",
                admin.1
            );
            assert!(admin.0.is_err());
            // The home is not node 2: the requester refuses it.
            assert!(
                matches!(not_node_2.0, Err(RdmaError::Identity(_))),
                "{:?}",
                not_node_2.0
            );
            // A master's certificate is no node's.
            assert!(matches!(master.0, Err(RdmaError::Identity(_))));
            // Another CA fails the TLS handshake itself.
            assert!(stranger.0.is_err() && stranger.1.is_err());
            // A revoked requester is refused.
            assert!(
                matches!(revoked.1, Err(RdmaError::Identity(_))),
                "{:?}",
                revoked.1
            );
        });
    }

    fn hello(side: Side) -> Hello {
        let credits = 4;
        Hello {
            side,
            qp: QpAddr {
                qpn: 0x1234,
                psn: 0x42,
                lid: 3,
                gid: [7; 16],
                mtu: 5,
            },
            credits,
            block_max: BLOCK,
            landing: match side {
                Side::Requester => RemoteSlot {
                    addr: 0x7f00_0000_0000,
                    rkey: 0x99,
                    len: u32::from(credits) * BLOCK,
                },
                Side::Home => RemoteSlot {
                    addr: 0,
                    rkey: 0,
                    len: 0,
                },
            },
        }
    }

    #[test]
    fn hellos_round_trip_and_every_field_is_checked() {
        for side in [Side::Requester, Side::Home] {
            let h = hello(side);
            assert_eq!(Hello::decode(&h.encode(), side, BLOCK).expect("decode"), h);
        }
        let h = hello(Side::Requester);
        assert!(
            Hello::decode(&h.encode(), Side::Home, BLOCK).is_err(),
            "the other side"
        );
        assert!(
            Hello::decode(&h.encode(), Side::Requester, BLOCK * 2).is_err(),
            "block size"
        );
        let refused = [
            Hello {
                qp: QpAddr { qpn: 1, ..h.qp },
                ..h
            },
            Hello {
                qp: QpAddr {
                    qpn: 1 << 24,
                    ..h.qp
                },
                ..h
            },
            Hello {
                qp: QpAddr {
                    psn: 1 << 24,
                    ..h.qp
                },
                ..h
            },
            Hello {
                qp: QpAddr { mtu: 6, ..h.qp },
                ..h
            },
            Hello { credits: 0, ..h },
            Hello {
                credits: CREDITS_MAX + 1,
                ..h
            },
            Hello {
                landing: RemoteSlot {
                    len: BLOCK * 4 + 1,
                    ..h.landing
                },
                ..h
            },
            Hello {
                landing: RemoteSlot {
                    addr: u64::MAX - 100,
                    ..h.landing
                },
                ..h
            },
        ];
        for bad in refused {
            assert!(
                Hello::decode(&bad.encode(), Side::Requester, BLOCK).is_err(),
                "{bad:?}"
            );
        }
        let home = hello(Side::Home);
        let with_region = Hello {
            landing: h.landing,
            ..home
        };
        assert!(Hello::decode(&with_region.encode(), Side::Home, BLOCK).is_err());
        let mut bytes = h.encode();
        bytes[0] ^= 1;
        assert!(
            Hello::decode(&bytes, Side::Requester, BLOCK).is_err(),
            "magic"
        );
        let mut bytes = h.encode();
        bytes[4] = 9;
        assert!(
            Hello::decode(&bytes, Side::Requester, BLOCK).is_err(),
            "version"
        );
    }

    #[test]
    fn the_fewer_credits_of_the_two_ends_bound_the_connection() {
        let (a, b) = MemQp::pair();
        let mut requester = Requester::new(a, Params::new(8, BLOCK).expect("params")).expect("r");
        let home_addr = crate::neighbor::rdma::handshake::Endpoint::addr(&b);
        requester.connect(&home_addr, 3).expect("connect");
        assert_eq!(requester.credits_free(), 3);
        let wrong = QpAddr {
            qpn: 0x999,
            ..home_addr
        };
        let (a, _b) = MemQp::pair();
        let mut requester = Requester::new(a, Params::new(8, BLOCK).expect("params")).expect("r");
        assert!(requester.connect(&wrong, 3).is_err());
    }

    proptest::proptest! {
        /// Any bytes decode to a checked hello or an error, never a panic.
        #[test]
        fn arbitrary_hellos_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), HELLO_BYTES)) {
            let mut b = [0u8; HELLO_BYTES];
            b.copy_from_slice(&bytes);
            for side in [Side::Requester, Side::Home] {
                if let Ok(h) = Hello::decode(&b, side, BLOCK) {
                    proptest::prop_assert!(h.credits >= 1 && h.credits <= CREDITS_MAX);
                }
            }
        }
    }
}

mod driver {
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::Duration;

    use futures::FutureExt;

    use super::*;
    use crate::neighbor::rdma::driver::{serve, RdmaConn, ReadBlock, Served};

    use super::run;

    /// A connection to a home serving `blocks` after `delay_ms`; the most
    /// requests its engine saw at once.
    fn start(
        credits: u16,
        blocks: HashMap<BlockId, Vec<u8>>,
        delay_ms: u64,
    ) -> (Rc<RdmaConn<MemQp>>, Rc<Cell<usize>>) {
        let params = Params::new(credits, BLOCK).expect("params");
        let (a, b) = MemQp::pair();
        let requester = Requester::new(a, params).expect("requester");
        let home = Home::new(b, params, requester.landing()).expect("home");
        let (busy, most) = (Rc::new(Cell::new(0usize)), Rc::new(Cell::new(0usize)));
        let blocks = Rc::new(blocks);
        let seen = Rc::clone(&most);
        let read: ReadBlock = Rc::new(move |h: Header| {
            let (blocks, busy, most) = (Rc::clone(&blocks), Rc::clone(&busy), Rc::clone(&seen));
            async move {
                busy.set(busy.get() + 1);
                most.set(most.get().max(busy.get()));
                glommio::timer::sleep(Duration::from_millis(delay_ms)).await;
                busy.set(busy.get() - 1);
                match blocks.get(&BlockId::new(h.ino, h.index, h.block_version)) {
                    Some(data) => Served::Block(data.clone()),
                    None => Served::Missing,
                }
            }
            .boxed_local()
        });
        glommio::spawn_local(serve(home, read, futures::future::pending())).detach();
        (RdmaConn::new(2, requester), most)
    }

    #[test]
    fn concurrent_reads_on_a_shard_wait_for_credits_and_all_get_their_block() {
        run(|| async {
            let ids: Vec<BlockId> = (0..40).map(|i| BlockId::new(4, i, 1 << 16)).collect();
            let blocks: HashMap<_, _> = ids
                .iter()
                .map(|id| (*id, block(id.index as u8, 700)))
                .collect();
            let (conn, most) = start(4, blocks.clone(), 2);
            let reads = ids.iter().map(|id| conn.read(*id, None, 5_000));
            let got = futures::future::join_all(reads).await;
            for (id, got) in ids.iter().zip(got) {
                assert_eq!(&got.expect("a block"), &blocks[id]);
            }
            assert!(most.get() > 1, "requests overlapped");
            assert!(
                most.get() <= 4,
                "at most the credits at once: {}",
                most.get()
            );
            let missing = conn.read(BlockId::new(9, 9, 1 << 16), None, 5_000).await;
            assert!(matches!(missing, Err(NeighborError::Missing)));
            assert!(!conn.is_broken());
        });
    }

    #[test]
    fn a_home_that_does_not_answer_in_time_breaks_the_connection() {
        run(|| async {
            let id = BlockId::new(4, 0, 1 << 16);
            let (conn, _) = start(2, HashMap::from([(id, block(0, 10))]), 10_000);
            let got = conn.read(id, None, 50).await;
            assert!(matches!(got, Err(NeighborError::Timeout(_))), "{got:?}");
            assert!(conn.is_broken());
            assert!(conn.read(id, None, 50).await.is_err());
        });
    }
}
