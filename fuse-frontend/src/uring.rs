//! FUSE over io_uring (Linux 6.14+, `enable_uring`): requests served on
//! per-CPU queues. The kernel puts a request on the queue of the CPU its
//! caller runs on and hands it to that queue's ring entries; one thread per
//! CPU, pinned there, owns an io_uring with `RING_DEPTH` entries for its
//! queue, so a request is fetched, served and answered without waking a
//! thread on another CPU. A reply and the fetch of the next request are one
//! `IORING_OP_URING_CMD` (`COMMIT_AND_FETCH`), and all the commits of one
//! round of completions go in with one `io_uring_enter`.
//!
//! How it starts: the INIT request still comes over /dev/fuse (as do
//! FORGET and INTERRUPT for the whole mount: the classic loops keep
//! running). When the mount wants the ring, the classic loop that reads
//! INIT lets fuse-backend-rs answer it into a buffer, turns
//! `FUSE_OVER_IO_URING` on in the reply if the kernel offered it, writes it,
//! and tells `mount` ([`InitGate`]), which starts the ring threads; each
//! registers its entries (`REGISTER`). Until every queue has an entry the
//! kernel holds new requests back; if a registration fails, it goes back
//! to /dev/fuse for good.
//!
//! A ring entry's reply must come through that entry, so a request answered
//! by another thread keeps its entry until that thread is done, and sends
//! the answer to the ring thread (a channel and an eventfd the ring reads),
//! which commits it. Two kinds go that way: a blocking lock (`FUSE_SETLKW`,
//! answered by its waiter thread) and `FUSE_RELEASE` (answered by the
//! ring's helper thread: the kernel does not wait for it, and it costs the
//! daemon a metadata command, so serving it inline would hold up the next
//! request from the same CPU). At most `RING_HELD_MAX` entries of a queue
//! are held; past that a blocking lock fails `ENOLCK` and a release is
//! served inline.
//!
//! How it ends: unmount or abort makes the kernel complete every entry it
//! holds with `ENOTCONN`; the thread ends when none is left in the kernel.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use tracing::{debug, info, warn};

use crate::copy_range;
use crate::dispatch::{answer_into, route, Route, Served};
use crate::error::FuseError;
use crate::lock_wait::{self, IN_HEADER_BYTES, OUT_HEADER_BYTES};
use crate::options::UringMode;
use crate::passthrough::Passthrough;
use crate::stats::LoopHook;
use crate::uring_abi::{self as abi, RingRequest};

/// Ring entries per CPU queue: requests of one CPU in flight at once.
pub const RING_DEPTH: usize = 16;
/// Most entries of one ring thread held for answers from other threads.
const RING_HELD_MAX: usize = RING_DEPTH / 2;
/// `FUSE_RELEASE`.
const OPCODE_RELEASE: u32 = 18;
/// Bytes in front of the payload in an entry's data buffer: room for the
/// in header and op header of a request, or the out header of a reply, so
/// fuse-backend-rs sees one contiguous message without copying the payload.
const PREFIX_BYTES: usize = 256;
const _: () = assert!(PREFIX_BYTES >= IN_HEADER_BYTES + abi::OP_AREA_BYTES);
/// `user_data` of the read on the wake eventfd (entries use their index).
const WAKE_USER_DATA: u64 = u64::MAX;
/// How long `mount` waits for the kernel's INIT, and for the rings to
/// register.
pub const INIT_WAIT_MS: u64 = 10_000;
/// Consecutive failed `io_uring_enter` calls after which a queue gives up.
const ENTER_FAILURES_MAX: u32 = 100;
/// The switch: `Y` lets the kernel offer FUSE over io_uring.
pub const ENABLE_PARAMETER: &str = "/sys/module/fuse/parameters/enable_uring";
/// The kernel makes one queue per possible CPU.
const POSSIBLE_CPUS: &str = "/sys/devices/system/cpu/possible";

/// Whether `enable_uring` is on (`None`: the kernel has no FUSE over
/// io_uring).
pub fn kernel_enabled() -> Option<bool> {
    let value = std::fs::read_to_string(ENABLE_PARAMETER).ok()?;
    Some(matches!(value.trim(), "Y" | "y" | "1"))
}

/// Whether this mount should ask for the ring; `On` without kernel
/// support is an error that says how to get it.
pub(crate) fn wanted(mode: UringMode) -> Result<bool, FuseError> {
    match (mode, kernel_enabled()) {
        (UringMode::Off, _) => Ok(false),
        (UringMode::Auto, enabled) => Ok(enabled == Some(true)),
        (UringMode::On, Some(true)) => Ok(true),
        (UringMode::On, Some(false)) => Err(FuseError::Uring(format!(
            "FUSE over io_uring is disabled in the kernel ({ENABLE_PARAMETER} is N): \
             enable it with `echo Y > {ENABLE_PARAMETER}` (as root), or mount with -o no_uring"
        ))),
        (UringMode::On, None) => Err(FuseError::Uring(format!(
            "this kernel has no FUSE over io_uring ({ENABLE_PARAMETER} is missing): it needs \
             Linux 6.14+ built with CONFIG_FUSE_IO_URING; mount with -o no_uring"
        ))),
    }
}

/// What INIT decided, as `mount` learns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InitOutcome {
    /// The kernel offered FUSE over io_uring.
    pub offered: bool,
    /// The reply turned it on: `payload_bytes` is the payload buffer each
    /// entry must have.
    pub accepted: Option<usize>,
}

/// Where the classic loop that answers INIT leaves the outcome for `mount`.
#[derive(Debug, Default)]
pub(crate) struct InitGate {
    /// The mount has ring queues ready: accept FUSE over io_uring.
    uring: bool,
    /// Accept FUSE passthrough (and turn it on here).
    passthrough: Option<Arc<Passthrough>>,
    outcome: Mutex<Option<InitOutcome>>,
    ready: Condvar,
}

impl InitGate {
    pub(crate) fn new(uring: bool, passthrough: Option<Arc<Passthrough>>) -> Self {
        Self {
            uring,
            passthrough,
            ..Self::default()
        }
    }

    fn publish(&self, outcome: InitOutcome) {
        *self
            .outcome
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(outcome);
        self.ready.notify_all();
    }

    /// The outcome, or `None` if INIT did not come within `wait`.
    pub(crate) fn wait(&self, wait: Duration) -> Option<InitOutcome> {
        let guard = self
            .outcome
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (guard, _) = self
            .ready
            .wait_timeout_while(guard, wait, |o| o.is_none())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard
    }
}

fn page_bytes() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// Answers a `FUSE_INIT` on the classic path: fuse-backend-rs writes the
/// reply into `reply`, `FUSE_OVER_IO_URING` is turned on in it if the
/// kernel offered it, and it goes out on `device`; then `gate` learns what
/// was agreed.
pub(crate) fn answer_init(
    served: &Served,
    hook: &LoopHook,
    gate: &InitGate,
    device: &File,
    sink: RawFd,
    message: &mut [u8],
    reply: &mut [u8],
) {
    let offered = abi::init_offers_uring(message);
    let passthrough = gate
        .passthrough
        .as_ref()
        .filter(|_| abi::init_offers_passthrough(message));
    if gate.passthrough.is_some() && passthrough.is_none() {
        warn!("-o passthrough: the kernel does not offer FUSE passthrough (CONFIG_FUSE_PASSTHROUGH); reads go through the daemon");
    }
    let unique = lock_wait::u64_at(message, 8).unwrap_or(0);
    let mut passthrough_on = false;
    let (len, accepted) = if let Some(len) = answer_into(served, hook, message, reply, sink) {
        let accepted = (offered && gate.uring)
            .then(|| abi::accept_uring(&mut reply[..len], page_bytes()))
            .flatten();
        passthrough_on = passthrough.is_some() && abi::accept_passthrough(&mut reply[..len]);
        (len, accepted)
    } else {
        warn!("fuse-backend-rs made no INIT reply; answering EPROTO");
        reply[..OUT_HEADER_BYTES].copy_from_slice(&abi::out_header(unique, -libc::EPROTO));
        (OUT_HEADER_BYTES, None)
    };
    // SAFETY: `reply[..len]` is a valid buffer of that length.
    let n = unsafe { libc::write(device.as_raw_fd(), reply.as_ptr().cast(), len) };
    let accepted = if n < 0 {
        warn!(error = %io::Error::last_os_error(), "the INIT reply was not delivered");
        None
    } else {
        if let (true, Some(p)) = (passthrough_on, passthrough) {
            p.enable();
        }
        accepted
    };
    gate.publish(InitOutcome { offered, accepted });
}

/// The ring queues of one mount, created before INIT (so a failure can
/// still leave the ring off) and started after it.
pub(crate) struct Queues {
    rings: Vec<PreparedRing>,
}

struct PreparedRing {
    cpu: Option<usize>,
    qids: Vec<u16>,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    /// Created disabled: enabled by its thread, which becomes its only
    /// submitter (`IORING_SETUP_SINGLE_ISSUER`).
    disabled: bool,
}

fn possible_cpus() -> usize {
    std::fs::read_to_string(POSSIBLE_CPUS)
        .ok()
        .and_then(|list| abi::cpu_list_count(&list))
        .unwrap_or_else(|| {
            // SAFETY: sysconf has no preconditions.
            let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
            usize::try_from(n).unwrap_or(1).clamp(1, abi::QUEUES_MAX)
        })
}

fn build_ring(entries: u32) -> io::Result<(IoUring<squeue::Entry128, cqueue::Entry>, bool)> {
    // Completions run when the thread waits for them (DEFER_TASKRUN), on
    // its own CPU; older kernels get a plain ring.
    let tuned = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_r_disabled()
        .build(entries);
    match tuned {
        Ok(ring) => Ok((ring, true)),
        Err(e) => {
            debug!(error = %e, "a tuned io_uring is refused; using a plain one");
            IoUring::<squeue::Entry128, cqueue::Entry>::builder()
                .build(entries)
                .map(|ring| (ring, false))
        }
    }
}

/// Creates one io_uring per ring thread: a thread per allowed CPU, every
/// possible CPU's queue served by one of them.
pub(crate) fn prepare(allowed: &[usize]) -> io::Result<Queues> {
    let plan = abi::plan_queues(possible_cpus(), allowed);
    let mut rings = Vec::with_capacity(plan.len());
    for (cpu, qids) in plan {
        // Every entry and the wake read in flight at once.
        let entries = u32::try_from((qids.len() * RING_DEPTH + 1).next_power_of_two())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let (ring, disabled) = build_ring(entries)?;
        rings.push(PreparedRing {
            cpu,
            qids,
            ring,
            disabled,
        });
    }
    Ok(Queues { rings })
}

/// What the started ring threads are.
pub(crate) struct Started {
    pub threads: Vec<std::thread::JoinHandle<()>>,
    /// Why a queue could not register, if one could not.
    pub failure: Option<String>,
}

/// Starts the ring threads (each on its own cloned /dev/fuse fd from
/// `clone_device`) and waits until each has registered its entries.
pub(crate) fn start(
    queues: Queues,
    served: &Served,
    sink: &Arc<File>,
    payload_bytes: usize,
    mut clone_device: impl FnMut() -> io::Result<File>,
) -> Started {
    let (report_tx, report_rx) = mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::with_capacity(queues.rings.len());
    let mut failure = None;
    for (n, prepared) in queues.rings.into_iter().enumerate() {
        let device = match clone_device() {
            Ok(d) => d,
            Err(e) => {
                failure = Some(format!("cloning the /dev/fuse fd for a ring: {e}"));
                break;
            }
        };
        let served = served.clone();
        let sink = Arc::clone(sink);
        let report = report_tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("dl-fuse-ring-{n}"))
            .spawn(move || {
                if let Some(cpu) = prepared.cpu {
                    crate::mount::pin_to(cpu);
                }
                match RingQueue::new(prepared, device, served, sink, payload_bytes) {
                    Ok(queue) => queue.run(&report),
                    Err(e) => {
                        let _ = report.send(Err(e));
                    }
                }
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                failure = Some(format!("cannot start a ring thread: {e}"));
                break;
            }
        }
    }
    drop(report_tx);
    let deadline = std::time::Instant::now() + Duration::from_millis(INIT_WAIT_MS);
    for _ in 0..threads.len() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match report_rx.recv_timeout(left) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(_) => {
                failure.get_or_insert_with(|| "a ring queue did not register in time".into());
                break;
            }
        }
    }
    Started { threads, failure }
}

/// An eventfd other threads write to wake a ring thread.
struct Wake(OwnedFd);

impl Wake {
    fn new() -> io::Result<Self> {
        // SAFETY: eventfd has no pointer arguments.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor owned by nobody else.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: `one` is a valid 8-byte buffer.
        let n = unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if n < 0 {
            debug!(error = %io::Error::last_os_error(), "cannot wake a ring queue");
        }
    }
}

/// An answer made by another thread, sent to the ring thread holding its
/// entry.
#[derive(Debug)]
struct Deferred {
    slot: usize,
    unique: u64,
    reply: DeferredReply,
}

#[derive(Debug)]
enum DeferredReply {
    /// No body: 0 or a negative errno (lock waits).
    Status(i32),
    /// A whole reply (out header first), or none if none was made.
    Bytes(Option<Vec<u8>>),
}

/// A request handed to the helper thread.
struct Offloaded {
    slot: usize,
    unique: u64,
    message: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// An SQE for it is in the kernel (`registering`: a REGISTER).
    InKernel { registering: bool },
    /// A blocking lock's waiter owes its reply.
    Held { unique: u64 },
    /// Refused or torn down by the kernel.
    Dead,
}

/// One ring entry and its buffers (boxed: the kernel keeps their
/// addresses).
struct Slot {
    qid: u16,
    header: Box<[u8]>,
    /// `PREFIX_BYTES`, then the payload buffer.
    data: Box<[u8]>,
    iov: Box<[libc::iovec; 2]>,
    state: SlotState,
}

/// One ring thread's state.
struct RingQueue {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    /// Its cloned /dev/fuse fd: the URING_CMDs are on it.
    device: File,
    slots: Vec<Slot>,
    served: Served,
    hook: LoopHook,
    sink: Arc<File>,
    payload_bytes: usize,
    /// In header and op header of a request without payload.
    front: Box<[u8]>,
    /// Replies to requests with payload (the payload buffer holds the
    /// request while it is served).
    reply: Box<[u8]>,
    done_tx: mpsc::Sender<Deferred>,
    done_rx: mpsc::Receiver<Deferred>,
    /// The helper thread serving offloaded requests (`None` if it could
    /// not start: they are served inline).
    helper: Option<(mpsc::Sender<Offloaded>, std::thread::JoinHandle<()>)>,
    wake: Arc<Wake>,
    wake_buf: Box<[u8; 8]>,
    in_kernel: usize,
    held: usize,
    /// The kernel ended the connection.
    gone: bool,
}

/// How a served request's reply was made.
enum Answer {
    /// In the data buffer in front of the payload, `len` bytes in all.
    InPlace(Option<usize>),
    /// In the thread's reply buffer.
    Copied(Option<usize>),
    /// Bytes to send (intercepted requests, errors).
    Bytes([u8; copy_range::REPLY_BYTES_MAX], usize),
    /// A lock waiter answers later.
    Held,
}

impl RingQueue {
    fn new(
        prepared: PreparedRing,
        device: File,
        served: Served,
        sink: Arc<File>,
        payload_bytes: usize,
    ) -> Result<Self, String> {
        if prepared.disabled {
            prepared
                .ring
                .submitter()
                .register_enable_rings()
                .map_err(|e| format!("enabling a ring: {e}"))?;
        }
        let wake = Wake::new().map_err(|e| format!("creating a ring's eventfd: {e}"))?;
        let mut slots = Vec::with_capacity(prepared.qids.len() * RING_DEPTH);
        for &qid in &prepared.qids {
            for _ in 0..RING_DEPTH {
                let mut header = vec![0u8; abi::RING_HEADER_BYTES].into_boxed_slice();
                let mut data = vec![0u8; PREFIX_BYTES + payload_bytes].into_boxed_slice();
                let iov = Box::new([
                    libc::iovec {
                        iov_base: header.as_mut_ptr().cast(),
                        iov_len: header.len(),
                    },
                    libc::iovec {
                        iov_base: data[PREFIX_BYTES..].as_mut_ptr().cast(),
                        iov_len: payload_bytes,
                    },
                ]);
                slots.push(Slot {
                    qid,
                    header,
                    data,
                    iov,
                    state: SlotState::Dead,
                });
            }
        }
        let (done_tx, done_rx) = mpsc::channel();
        let hook = LoopHook::new(served.stats.clone());
        let wake = Arc::new(wake);
        let helper = spawn_helper(&served, &sink, payload_bytes, &done_tx, &wake);
        Ok(Self {
            ring: prepared.ring,
            device,
            slots,
            served,
            hook,
            sink,
            payload_bytes,
            front: vec![0u8; IN_HEADER_BYTES + abi::OP_AREA_BYTES].into_boxed_slice(),
            reply: vec![0u8; OUT_HEADER_BYTES + payload_bytes].into_boxed_slice(),
            done_tx,
            done_rx,
            helper,
            wake,
            wake_buf: Box::new([0u8; 8]),
            in_kernel: 0,
            held: 0,
            gone: false,
        })
    }

    /// Queues `sqe`; `false` if the submission queue stays full (the
    /// kernel keeps refusing to take what is queued).
    fn push(&mut self, sqe: &squeue::Entry128) -> bool {
        for _ in 0..ENTER_FAILURES_MAX {
            // SAFETY: every buffer an SQE names (iovecs, entry buffers, the
            // wake buffer) is owned by `self` and outlives the ring.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return true;
            }
            // Full (the ring is sized for everything in flight, so only
            // after a failed submit): hand the kernel what is queued.
            if let Err(e) = self.ring.submit() {
                debug!(error = %e, "io_uring submit while the queue is full");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        warn!("the io_uring submission queue stays full; an SQE is dropped");
        false
    }

    /// Sends `cmd` for slot `i`.
    fn send(&mut self, i: usize, cmd: u32, commit_id: u64) {
        let slot = &mut self.slots[i];
        let sqe = opcode::UringCmd80::new(types::Fd(self.device.as_raw_fd()), cmd)
            .cmd(abi::cmd_req(commit_id, slot.qid))
            .addr(Some(slot.iov.as_ptr() as u64))
            .build()
            .user_data(i as u64);
        let sqe = with_len(sqe, abi::ENTRY_IOVECS);
        if self.push(&sqe) {
            self.slots[i].state = SlotState::InKernel {
                registering: cmd == abi::CMD_REGISTER,
            };
            self.in_kernel += 1;
        } else {
            self.slots[i].state = SlotState::Dead;
        }
    }

    fn arm_wake(&mut self) {
        let sqe = opcode::Read::new(
            types::Fd(self.wake.0.as_raw_fd()),
            self.wake_buf.as_mut_ptr(),
            8,
        )
        .build()
        .user_data(WAKE_USER_DATA);
        // Without it, answers from other threads wait for the next request.
        let _ = self.push(&squeue::Entry128::from(sqe));
    }

    fn run(mut self, report: &mpsc::Sender<Result<(), String>>) {
        for i in 0..self.slots.len() {
            self.send(i, abi::CMD_REGISTER, 0);
        }
        self.arm_wake();
        if let Err(e) = self.ring.submit() {
            let _ = report.send(Err(format!("submitting the ring registrations: {e}")));
            return;
        }
        // A refused registration completes at once.
        let early: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        let refused = early
            .iter()
            .find(|&&(user_data, result)| user_data != WAKE_USER_DATA && result < 0);
        let _ = report.send(match refused {
            None => Ok(()),
            Some(&(_, result)) => Err(format!(
                "the kernel refused a ring entry (FUSE_IO_URING_CMD_REGISTER): {}",
                io::Error::from_raw_os_error(-result)
            )),
        });
        for (user_data, result) in early {
            self.complete(user_data, result);
        }
        let mut qids: Vec<u16> = self.slots.iter().map(|s| s.qid).collect();
        qids.dedup();
        debug!(queues = ?qids, "ring thread serving");
        let mut completions = Vec::with_capacity(self.slots.len() + 1);
        let mut failures = 0u32;
        while self.in_kernel > 0 || (!self.gone && self.held > 0) {
            match self.ring.submit_and_wait(1) {
                Ok(_) => failures = 0,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(e) => {
                    failures += 1;
                    if failures >= ENTER_FAILURES_MAX {
                        warn!(error = %e, "io_uring_enter keeps failing; the ring queue stops");
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            completions.clear();
            completions.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            for &(user_data, result) in &completions {
                self.complete(user_data, result);
            }
        }
        // Offloaded requests still queued are served (their handles
        // closed) before the mount shuts the file system down.
        if let Some((helper, thread)) = self.helper.take() {
            drop(helper);
            if thread.join().is_err() {
                warn!("a ring helper thread panicked");
            }
        }
        debug!(queues = ?qids, "ring thread ended");
    }

    fn complete(&mut self, user_data: u64, result: i32) {
        if user_data == WAKE_USER_DATA {
            if result < 0 && result != -libc::ECANCELED {
                debug!(errno = -result, "ring wake read failed");
            }
            self.finish_deferred();
            if !self.gone && result != -libc::ECANCELED {
                self.arm_wake();
            }
            return;
        }
        let Some(state) = usize::try_from(user_data)
            .ok()
            .and_then(|i| self.slots.get(i))
            .map(|s| s.state)
        else {
            warn!(user_data, "a completion for no ring entry");
            return;
        };
        let i = user_data as usize;
        let SlotState::InKernel { registering } = state else {
            warn!(
                user_data,
                ?state,
                "a completion for a ring entry not in the kernel"
            );
            return;
        };
        self.in_kernel -= 1;
        if result >= 0 {
            if self.gone {
                self.slots[i].state = SlotState::Dead;
                return;
            }
            self.serve(i);
            return;
        }
        let errno = -result;
        if matches!(
            errno,
            libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED | libc::ENODEV
        ) {
            // Unmounted or aborted: the kernel hands every entry back.
            self.gone = true;
            self.slots[i].state = SlotState::Dead;
        } else if registering {
            warn!(error = %io::Error::from_raw_os_error(errno), "the kernel refused a ring entry");
            self.slots[i].state = SlotState::Dead;
        } else {
            // The kernel lost the request (e.g. ENOENT): the entry is
            // stuck on its side, so hand it in anew to keep the depth.
            warn!(error = %io::Error::from_raw_os_error(errno), "a ring commit was refused; registering the entry again");
            self.send(i, abi::CMD_REGISTER, 0);
        }
    }

    /// Commits the answers other threads made.
    fn finish_deferred(&mut self) {
        while let Ok(done) = self.done_rx.try_recv() {
            let Some(slot) = self.slots.get_mut(done.slot) else {
                continue;
            };
            if slot.state
                != (SlotState::Held {
                    unique: done.unique,
                })
            {
                warn!(
                    unique = done.unique,
                    "an answer for a ring entry that does not wait"
                );
                continue;
            }
            self.held -= 1;
            if self.gone {
                slot.state = SlotState::Dead;
                continue;
            }
            let staged = match done.reply {
                DeferredReply::Status(error) => {
                    let out = abi::out_header(done.unique, error);
                    abi::put_reply_header(&mut slot.header, &out, 0);
                    true
                }
                DeferredReply::Bytes(Some(reply)) => {
                    let body = reply.len().saturating_sub(OUT_HEADER_BYTES);
                    if body <= self.payload_bytes {
                        slot.data[PREFIX_BYTES..PREFIX_BYTES + body]
                            .copy_from_slice(&reply[reply.len() - body..]);
                        stage(&mut slot.header, &reply, reply.len(), done.unique)
                    } else {
                        false
                    }
                }
                DeferredReply::Bytes(None) => false,
            };
            if !staged {
                let out = abi::out_header(done.unique, -libc::EIO);
                abi::put_reply_header(&mut slot.header, &out, 0);
            }
            self.send(done.slot, abi::CMD_COMMIT_AND_FETCH, done.unique);
        }
    }

    /// Serves the request the kernel put in slot `i` and commits its reply
    /// (or leaves it to a lock waiter).
    fn serve(&mut self, i: usize) {
        self.served.stats.count_ring_request();
        let request = match abi::decode_request(&self.slots[i].header, self.payload_bytes) {
            Ok(r) => r,
            Err((commit_id, why)) => {
                warn!(why, commit_id, "an undecodable ring request; answered EIO");
                let out = abi::out_header(commit_id, -libc::EIO);
                abi::put_reply_header(&mut self.slots[i].header, &out, 0);
                self.send(i, abi::CMD_COMMIT_AND_FETCH, commit_id);
                return;
            }
        };
        let answer = self.answer(i, request);
        let slot = &mut self.slots[i];
        let staged = match answer {
            Answer::Held => return,
            Answer::InPlace(Some(len)) => {
                let out = &slot.data[PREFIX_BYTES - OUT_HEADER_BYTES..PREFIX_BYTES];
                stage(&mut slot.header, out, len, request.commit_id)
            }
            Answer::Copied(Some(len)) => {
                let body = len - OUT_HEADER_BYTES;
                slot.data[PREFIX_BYTES..PREFIX_BYTES + body]
                    .copy_from_slice(&self.reply[OUT_HEADER_BYTES..len]);
                stage(
                    &mut slot.header,
                    &self.reply[..OUT_HEADER_BYTES],
                    len,
                    request.commit_id,
                )
            }
            Answer::Bytes(bytes, len) => {
                let body = len - OUT_HEADER_BYTES;
                slot.data[PREFIX_BYTES..PREFIX_BYTES + body]
                    .copy_from_slice(&bytes[OUT_HEADER_BYTES..len]);
                stage(
                    &mut slot.header,
                    &bytes[..OUT_HEADER_BYTES],
                    len,
                    request.commit_id,
                )
            }
            Answer::InPlace(None) | Answer::Copied(None) => false,
        };
        if !staged {
            let out = abi::out_header(request.commit_id, -libc::EIO);
            abi::put_reply_header(&mut slot.header, &out, 0);
        }
        self.send(i, abi::CMD_COMMIT_AND_FETCH, request.commit_id);
    }

    /// Routes the request and lets it be answered. A request without
    /// payload is assembled in `front` and answered in place (a read's
    /// data lands in the payload buffer); one with payload is assembled in
    /// front of its payload and answered into the reply buffer.
    fn answer(&mut self, i: usize, request: RingRequest) -> Answer {
        let front_bytes = IN_HEADER_BYTES + request.op_bytes;
        let slot = &mut self.slots[i];
        let (message, out, in_place) = if request.payload_bytes == 0 {
            let front = &mut self.front[..front_bytes];
            abi::copy_request_front(&slot.header, request.op_bytes, front);
            (
                front,
                &mut slot.data[PREFIX_BYTES - OUT_HEADER_BYTES..],
                true,
            )
        } else {
            let start = PREFIX_BYTES - front_bytes;
            abi::copy_request_front(
                &slot.header,
                request.op_bytes,
                &mut slot.data[start..PREFIX_BYTES],
            );
            (
                &mut slot.data[start..PREFIX_BYTES + request.payload_bytes],
                &mut self.reply[..],
                false,
            )
        };
        let route = route(&self.served, message);
        if route == Route::Server
            && lock_wait::opcode(message) == Some(OPCODE_RELEASE)
            && self.held < RING_HELD_MAX
        {
            if let Some((helper, _)) = &self.helper {
                let unique = request.commit_id;
                let offloaded = Offloaded {
                    slot: i,
                    unique,
                    message: message.to_vec(),
                };
                if helper.send(offloaded).is_ok() {
                    self.slots[i].state = SlotState::Held { unique };
                    self.held += 1;
                    return Answer::Held;
                }
            }
        }
        match route {
            Route::Server => {
                let len = answer_into(
                    &self.served,
                    &self.hook,
                    message,
                    out,
                    self.sink.as_raw_fd(),
                );
                if in_place {
                    Answer::InPlace(len)
                } else {
                    Answer::Copied(len)
                }
            }
            Route::Copied { unique, result } => {
                let (bytes, len) = copy_range::encode_reply(unique, result);
                Answer::Bytes(bytes, len)
            }
            Route::Lock(wait) => {
                if self.held >= RING_HELD_MAX {
                    let mut bytes = [0u8; copy_range::REPLY_BYTES_MAX];
                    bytes[..OUT_HEADER_BYTES]
                        .copy_from_slice(&abi::out_header(wait.unique, -libc::ENOLCK));
                    return Answer::Bytes(bytes, OUT_HEADER_BYTES);
                }
                self.slots[i].state = SlotState::Held {
                    unique: wait.unique,
                };
                self.held += 1;
                let (done_tx, wake) = (self.done_tx.clone(), Arc::clone(&self.wake));
                lock_wait::spawn_waiter(
                    Arc::clone(&self.served.fs),
                    &self.served.waiters,
                    wait,
                    move |error| {
                        let done = Deferred {
                            slot: i,
                            unique: wait.unique,
                            reply: DeferredReply::Status(error),
                        };
                        if done_tx.send(done).is_ok() {
                            wake.signal();
                        }
                    },
                );
                Answer::Held
            }
        }
    }
}

/// Starts the helper thread of a ring thread: it answers offloaded
/// requests into its own buffer and sends the replies back.
fn spawn_helper(
    served: &Served,
    sink: &Arc<File>,
    payload_bytes: usize,
    done_tx: &mpsc::Sender<Deferred>,
    wake: &Arc<Wake>,
) -> Option<(mpsc::Sender<Offloaded>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel::<Offloaded>();
    let (served, sink, done_tx, wake) = (
        served.clone(),
        Arc::clone(sink),
        done_tx.clone(),
        Arc::clone(wake),
    );
    let spawned = std::thread::Builder::new()
        .name("dl-fuse-ring-help".into())
        .spawn(move || {
            let hook = LoopHook::new(served.stats.clone());
            let mut out = vec![0u8; OUT_HEADER_BYTES + payload_bytes];
            while let Ok(mut job) = rx.recv() {
                let len = answer_into(&served, &hook, &mut job.message, &mut out, sink.as_raw_fd());
                let done = Deferred {
                    slot: job.slot,
                    unique: job.unique,
                    reply: DeferredReply::Bytes(len.map(|len| out[..len].to_vec())),
                };
                if done_tx.send(done).is_ok() {
                    wake.signal();
                }
            }
        });
    match spawned {
        Ok(thread) => Some((tx, thread)),
        Err(e) => {
            warn!(error = %e, "cannot start a ring helper thread; releases are served inline");
            None
        }
    }
}

/// Puts a reply of `len` bytes (out header `out`, body already in the
/// payload buffer) into the entry's header; `false` if it is not a reply
/// to `commit_id`.
fn stage(header: &mut [u8], out: &[u8], len: usize, commit_id: u64) -> bool {
    let unique = lock_wait::u64_at(out, 8);
    if unique != Some(commit_id) || len < OUT_HEADER_BYTES {
        warn!(
            commit_id,
            ?unique,
            "a reply for another request; answered EIO"
        );
        return false;
    }
    let Ok(body) = u32::try_from(len - OUT_HEADER_BYTES) else {
        return false;
    };
    abi::put_reply_header(header, out, body);
    true
}

/// Sets `sqe->len` (the io-uring crate's `UringCmd80` leaves it 0; a
/// FUSE REGISTER needs the number of iovecs there).
fn with_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    /// `len` in `struct io_uring_sqe`.
    const LEN_AT: usize = 24;
    // SAFETY: `Entry128` is `repr(C)`: the kernel's 64-byte `io_uring_sqe`
    // followed by the 64 bytes of the big SQE's command area, 128 bytes
    // with no padding and no invalid bit patterns.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute::<squeue::Entry128, [u8; 128]>(sqe) };
    raw[LEN_AT..LEN_AT + 4].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: as above; only the `len` field changed.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

/// Logs how the mount talks to the kernel.
pub(crate) fn log_started(queues: usize, payload_bytes: usize) {
    info!(
        ring_threads = queues,
        depth = RING_DEPTH,
        payload_bytes,
        "FUSE over io_uring"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sqe_length_is_set_and_nothing_else_changes() {
        let cmd = abi::cmd_req(5, 1);
        let sqe = opcode::UringCmd80::new(types::Fd(7), abi::CMD_REGISTER)
            .cmd(cmd)
            .addr(Some(0x1000))
            .build()
            .user_data(3);
        // SAFETY: see `with_len`.
        let before: [u8; 128] = unsafe { std::mem::transmute(sqe.clone()) };
        let after: [u8; 128] = unsafe { std::mem::transmute(with_len(sqe, 2)) };
        assert_eq!(&after[24..28], &2u32.to_ne_bytes());
        assert_eq!(before[..24], after[..24]);
        assert_eq!(before[28..], after[28..]);
        assert_eq!(&after[4..8], &7i32.to_ne_bytes(), "fd");
        assert_eq!(&after[16..24], &0x1000u64.to_ne_bytes(), "addr");
        assert_eq!(&after[32..40], &3u64.to_ne_bytes(), "user_data");
        assert_eq!(&after[48..128], &cmd[..], "the command area");
    }

    #[test]
    fn forcing_the_ring_without_the_kernel_switch_says_how_to_turn_it_on() {
        assert!(!wanted(UringMode::Off).expect("off"));
        match kernel_enabled() {
            Some(true) => assert!(wanted(UringMode::On).expect("on")),
            Some(false) => {
                let err = wanted(UringMode::On).expect_err("disabled").to_string();
                assert!(
                    err.contains("echo Y > /sys/module/fuse/parameters/enable_uring"),
                    "{err}"
                );
                assert!(!wanted(UringMode::Auto).expect("auto"));
            }
            None => {
                let err = wanted(UringMode::On).expect_err("missing").to_string();
                assert!(err.contains("6.14"), "{err}");
            }
        }
    }
}
