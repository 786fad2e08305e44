//! `-o idle_poll=MICROS`: keeps idle CPUs from halting while requests
//! come, by spinning a `SCHED_IDLE` thread on each for that long after the
//! last request.
//!
//! Why: a single-threaded caller waits for every reply, so one of the
//! machine's CPUs is idle at each wake-up, and the scheduler likes to wake
//! the caller there. On a VM whose idle vCPUs halt at once
//! (`haltpoll.guest_halt_poll_ns=0`), that wake-up is a VM exit, slower
//! than the request itself: perf/RESULTS.md measured 2–3× more creates
//! and stats per second with spinners on such a VM. A `SCHED_IDLE` thread
//! runs only when nothing else wants its CPU, and a CPU that runs only
//! such threads still counts as idle when the scheduler places a task;
//! that task then preempts the spinner at once. So the spinners take no
//! time from any task, and a wake-up finds a running CPU.
//!
//! The cost: otherwise idle CPU time while requests keep coming (counted
//! against a container's CPU quota), hence off by default. Between
//! bursts the spinners sleep; the first request of a burst wakes them.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

/// The longest `idle_poll` accepted.
pub const IDLE_POLL_MAX: Duration = Duration::from_millis(10);
/// The cpuidle driver of a KVM guest that halts idle vCPUs, polling first
/// for the time in [`GUEST_HALT_POLL_NS`].
const CPUIDLE_DRIVER: &str = "/sys/devices/system/cpu/cpuidle/current_driver";
const GUEST_HALT_POLL_NS: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";

/// Whether this machine is a VM guest whose idle vCPUs halt without
/// polling first (`cpuidle` driver `haltpoll` with `guest_halt_poll_ns` 0),
/// read from the two files of `sys_root` (`/` in production).
pub(crate) fn vcpus_halt_at_once(sys_root: &std::path::Path) -> bool {
    let read = |path: &str| {
        std::fs::read_to_string(sys_root.join(path.trim_start_matches('/'))).unwrap_or_default()
    };
    read(CPUIDLE_DRIVER).trim() == "haltpoll" && read(GUEST_HALT_POLL_NS).trim() == "0"
}

/// Logs, once per mount without `idle_poll`, what helps on a VM whose idle
/// vCPUs halt at once.
pub(crate) fn hint_if_vcpus_halt(sys_root: &std::path::Path) {
    if vcpus_halt_at_once(sys_root) {
        tracing::info!(
            "idle vCPUs halt at once on this VM (cpuidle haltpoll, guest_halt_poll_ns 0): \
             every FUSE request that wakes one pays a VM exit, and single-threaded metadata \
             runs 2-3x slower; mount with -o idle_poll=200, or as root \
             `echo 200000 > {GUEST_HALT_POLL_NS}`"
        );
    }
}

struct Shared {
    window_ns: u64,
    epoch: Instant,
    /// When the last request came, in ns since `epoch`.
    last_ns: AtomicU64,
    /// Spinners waiting for the next burst.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether the last request is older than the window.
    fn quiet(&self) -> bool {
        self.now_ns()
            .saturating_sub(self.last_ns.load(Ordering::SeqCst))
            >= self.window_ns
    }
}

/// The spinners of one mount.
pub(crate) struct IdlePoll {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for IdlePoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdlePoll")
            .field("window_ns", &self.shared.window_ns)
            .finish_non_exhaustive()
    }
}

impl IdlePoll {
    /// Starts a spinner pinned to each of `cpus` that spins for `window`
    /// after each [`IdlePoll::activity`]. A spinner that cannot be made
    /// `SCHED_IDLE` ends at once (it never spins at normal priority).
    pub(crate) fn start(cpus: &[usize], window: Duration) -> Self {
        let shared = Arc::new(Shared {
            window_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
            epoch: Instant::now(),
            last_ns: AtomicU64::new(0),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let mut threads = Vec::with_capacity(cpus.len());
        for &cpu in cpus {
            let shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("dl-idle-poll-{cpu}"))
                .spawn(move || {
                    crate::mount::pin_to(cpu);
                    if let Err(e) = become_idle_class() {
                        warn!(cpu, error = %e, "cannot make an idle_poll thread SCHED_IDLE; it does not run");
                        return;
                    }
                    spin(&shared);
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => warn!(cpu, error = %e, "cannot start an idle_poll thread"),
            }
        }
        debug!(threads = threads.len(), ?window, "idle_poll started");
        Self {
            shared,
            threads: Mutex::new(threads),
        }
    }

    /// The spinners of a mount with `-o idle_poll=window` on `cpus`
    /// (`None` for a zero window, with a hint in the log on a VM where
    /// they would help).
    pub(crate) fn for_mount(cpus: &[usize], window: Duration) -> Option<Arc<Self>> {
        if window.is_zero() {
            hint_if_vcpus_halt(std::path::Path::new("/"));
            return None;
        }
        Some(Arc::new(Self::start(cpus, window)))
    }

    /// A request came: spin for the window from now.
    pub(crate) fn activity(&self) {
        let shared = &self.shared;
        shared.last_ns.store(shared.now_ns(), Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = shared.lock.lock().unwrap_or_else(PoisonError::into_inner);
            shared.wake.notify_all();
        }
    }

    /// Spinners sleeping until the next request (for tests).
    #[cfg(test)]
    fn sleepers(&self) -> usize {
        self.shared.sleepers.load(Ordering::SeqCst)
    }

    /// Ends the spinners and waits for them.
    pub(crate) fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _guard = self
                .shared
                .lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.shared.wake.notify_all();
        }
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for t in threads {
            if t.join().is_err() {
                warn!("an idle_poll thread panicked");
            }
        }
    }
}

impl Drop for IdlePoll {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Moves the calling thread to `SCHED_IDLE`.
fn become_idle_class() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param; 0 is the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &raw const param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn spin(shared: &Shared) {
    while !shared.stop.load(Ordering::SeqCst) {
        if !shared.quiet() {
            std::hint::spin_loop();
            continue;
        }
        let mut guard = shared.lock.lock().unwrap_or_else(PoisonError::into_inner);
        shared.sleepers.fetch_add(1, Ordering::SeqCst);
        // Checked after counting as a sleeper: a request stored before the
        // count is seen here, one after it notifies under the lock.
        while shared.quiet() && !shared.stop.load(Ordering::SeqCst) {
            guard = shared
                .wake
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        }
        shared.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The policy of thread `tid` of this process (field 41 of its stat).
    fn policy_of(tid: &str) -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
        // Fields after the command (which may hold spaces) start after ")".
        let rest = stat.rsplit_once(')')?.1;
        rest.split_whitespace().nth(38)?.parse().ok()
    }

    fn spinner_policies() -> Vec<i32> {
        std::fs::read_dir("/proc/self/task")
            .expect("tasks")
            .filter_map(|e| {
                let tid = e.ok()?.file_name().into_string().ok()?;
                let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).ok()?;
                comm.starts_with("dl-idle-poll")
                    .then(|| policy_of(&tid))
                    .flatten()
            })
            .collect()
    }

    #[test]
    fn spinners_are_idle_class_spin_after_requests_and_sleep_between() {
        let poll = IdlePoll::start(&[0, 0], Duration::from_millis(50));
        wait_until("both spinners asleep", || poll.sleepers() == 2);
        let policies = spinner_policies();
        assert_eq!(policies, vec![libc::SCHED_IDLE; 2], "{policies:?}");
        // Requests wake them; they sleep again once the window passed.
        // Requests keep coming until both spin: on a busy CPU an idle-class
        // thread may get its turn only after the other's window ended.
        wait_until("both spinning", || {
            poll.activity();
            poll.sleepers() == 0
        });
        wait_until("asleep again", || poll.sleepers() == 2);
        wait_until("spinning again", || {
            poll.activity();
            poll.sleepers() == 0
        });
        poll.stop();
        assert!(spinner_policies().is_empty(), "the spinners ended");
    }

    #[test]
    fn vms_whose_vcpus_halt_at_once_are_recognized() {
        let root = tempfile::tempdir().expect("tempdir");
        let write = |path: &str, text: &str| {
            let path = root.path().join(path.trim_start_matches('/'));
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        };
        assert!(!vcpus_halt_at_once(root.path()), "no cpuidle: not a guest");
        write(CPUIDLE_DRIVER, "haltpoll\n");
        write(GUEST_HALT_POLL_NS, "200000\n");
        assert!(!vcpus_halt_at_once(root.path()), "halt polling on");
        write(GUEST_HALT_POLL_NS, "0\n");
        assert!(vcpus_halt_at_once(root.path()));
        write(CPUIDLE_DRIVER, "intel_idle\n");
        assert!(!vcpus_halt_at_once(root.path()), "bare metal");
    }

    #[test]
    fn stop_ends_spinning_threads() {
        let poll = IdlePoll::start(&[0], Duration::from_secs(5));
        poll.activity();
        wait_until("spinning", || poll.sleepers() == 0);
        drop(poll);
    }
}
