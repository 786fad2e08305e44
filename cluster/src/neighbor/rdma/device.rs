//! The verbs on a real RDMA device (cargo feature `rdma`): rdma-core's
//! libibverbs through `rdma-mummy-sys`, whose static shim `dlopen`s
//! `libibverbs.so.1` when the process starts (a C constructor) and, when
//! it is absent, fails every verb with `EOPNOTSUPP`: a binary built with
//! the feature starts on machines without rdma-core (and uses TCP).
//!
//! The only module with `unsafe` code of the transport: every call into
//! the C library is here, each with why it is sound. Memory regions are
//! page-aligned allocations this module owns, registered with the
//! device's protection domain and deregistered before they are freed; a
//! region is read or written by the CPU only where no posted work
//! request covers it (the transport's rule, [`super::verbs::Verbs`]).

use std::alloc::Layout;
use std::collections::HashMap;
use std::ffi::CStr;
use std::ptr::{self, NonNull};
use std::rc::Rc;

use rdma_mummy_sys as ibv;
use tracing::debug;

use super::handshake::{Endpoint, QpAddr};
use super::verbs::{
    in_region, Completion, Opcode, Region, RemoteSlot, Verbs, VerbsError, WcStatus, WrId,
};
use super::RdmaError;

/// The port used (the first; rdma-core numbers them from 1).
pub const PORT: u8 = 1;
/// The GID index used: 0 is the port's first (on RoCE the link-local
/// address of its netdev; soft-RoCE on eth0 has it).
pub const GID_INDEX: u8 = 0;
/// Work requests each queue of a queue pair holds (receives: credits;
/// sends: a WRITE and a SEND per credit).
pub const QUEUE_DEPTH: u32 = 2 * super::CREDITS_MAX as u32 + 8;
/// Page alignment of registered memory.
const PAGE_BYTES: usize = 4096;

/// The names of this machine's RDMA devices, or why there are none (no
/// rdma-core library, no device): [`super::FALLBACK_MESSAGE`] and the
/// reason.
pub fn discover() -> Result<Vec<String>, RdmaError> {
    let mut n: i32 = 0;
    // SAFETY: `n` is a valid place for the count; the list returned is
    // freed below, once, after its names were copied.
    let list = unsafe { ibv::ibv_get_device_list(&raw mut n) };
    if list.is_null() {
        let e = std::io::Error::last_os_error();
        return Err(RdmaError::NoDevice(format!(
            "{}: rdma-core's libibverbs.so.1 did not list devices ({e}); install rdma-core (Debian: libibverbs1, ibverbs-providers)",
            super::FALLBACK_MESSAGE
        )));
    }
    let mut names = Vec::new();
    for i in 0..usize::try_from(n).unwrap_or(0) {
        // SAFETY: the list holds `n` device pointers (then a null).
        let dev = unsafe { *list.add(i) };
        if dev.is_null() {
            break;
        }
        names.extend(device_name(dev));
    }
    // SAFETY: `list` came from ibv_get_device_list and is freed once.
    unsafe { ibv::ibv_free_device_list(list) };
    if names.is_empty() {
        return Err(RdmaError::NoDevice(format!(
            "{}: rdma-core lists no device (on a machine without one, soft-RoCE: `rdma link add rxe0 type rxe netdev eth0`)",
            super::FALLBACK_MESSAGE
        )));
    }
    Ok(names)
}

/// The name of `dev`, a non-null device of a list not yet freed.
fn device_name(dev: *mut ibv::ibv_device) -> Option<String> {
    // SAFETY: `dev` is a listed device (the caller's contract); its name
    // is a NUL-terminated string that lives as long as the list, or null.
    let name = unsafe { ibv::ibv_get_device_name(dev) };
    if name.is_null() {
        return None;
    }
    // SAFETY: as above; copied before the list is freed.
    Some(
        unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// An open device: its context and the port's address.
#[derive(Debug)]
pub struct Device {
    name: String,
    ctx: NonNull<ibv::ibv_context>,
    lid: u16,
    gid: [u8; 16],
    mtu: u8,
}

impl Device {
    /// Opens the device called `name`, or the first one.
    pub fn open(name: Option<&str>) -> Result<Rc<Self>, RdmaError> {
        let names = discover()?;
        let want = name.unwrap_or(&names[0]).to_string();
        let mut n: i32 = 0;
        // SAFETY: as in `discover`; the list is freed before returning.
        let list = unsafe { ibv::ibv_get_device_list(&raw mut n) };
        if list.is_null() {
            return Err(RdmaError::NoDevice(super::FALLBACK_MESSAGE.into()));
        }
        let mut ctx = ptr::null_mut();
        for i in 0..usize::try_from(n).unwrap_or(0) {
            // SAFETY: the list holds `n` device pointers (then a null).
            let dev = unsafe { *list.add(i) };
            if dev.is_null() {
                break;
            }
            if device_name(dev).as_deref() == Some(want.as_str()) {
                // SAFETY: `dev` is a listed device; opening it before the
                // list is freed is what rdma-core documents.
                ctx = unsafe { ibv::ibv_open_device(dev) };
                break;
            }
        }
        // SAFETY: freed once; the context opened stays valid after.
        unsafe { ibv::ibv_free_device_list(list) };
        let ctx = NonNull::new(ctx).ok_or_else(|| {
            RdmaError::NoDevice(format!(
                "{}: cannot open RDMA device {want}",
                super::FALLBACK_MESSAGE
            ))
        })?;
        let mut device = Self {
            name: want,
            ctx,
            lid: 0,
            gid: [0; 16],
            mtu: 0,
        };
        device.query_port()?;
        debug!(device = %device.name, lid = device.lid, mtu = device.mtu, "RDMA device open");
        Ok(Rc::new(device))
    }

    fn query_port(&mut self) -> Result<(), RdmaError> {
        // SAFETY: all-zero bytes are a valid ibv_port_attr (integers).
        let mut attr: ibv::ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: an open context and a place for the attributes.
        if unsafe { ibv::ibv_query_port(self.ctx.as_ptr(), PORT, &raw mut attr) } != 0 {
            return Err(os_error("querying the RDMA port"));
        }
        // SAFETY: all-zero bytes are a valid GID.
        let mut gid: ibv::ibv_gid = unsafe { std::mem::zeroed() };
        // SAFETY: an open context, a port it has, a place for the GID.
        if unsafe {
            ibv::ibv_query_gid(self.ctx.as_ptr(), PORT, i32::from(GID_INDEX), &raw mut gid)
        } != 0
        {
            return Err(os_error("querying the RDMA port's GID"));
        }
        self.lid = attr.lid;
        // SAFETY: every bit pattern is a valid byte array.
        self.gid = unsafe { gid.raw };
        self.mtu = u8::try_from(attr.active_mtu).unwrap_or(1).clamp(1, 5);
        Ok(())
    }

    /// A new RC queue pair with its completion queue and a protection
    /// domain of its own, in the INIT state (ready to register memory and
    /// post receives; connected by the handshake). Its own domain: an
    /// rkey is valid on every queue pair of its domain, so a shared one
    /// would let any connected peer write any connection's landing slots.
    pub fn endpoint(self: &Rc<Self>) -> Result<DeviceQp, RdmaError> {
        // SAFETY: an open context.
        let pd = NonNull::new(unsafe { ibv::ibv_alloc_pd(self.ctx.as_ptr()) })
            .ok_or_else(|| os_error("allocating a protection domain"))?;
        self.queue_pair(pd)
    }

    /// A queue pair in `pd`, which it owns from here on (released with
    /// it, or here when it cannot be made).
    fn queue_pair(self: &Rc<Self>, pd: NonNull<ibv::ibv_pd>) -> Result<DeviceQp, RdmaError> {
        let depth = i32::try_from(QUEUE_DEPTH).unwrap_or(i32::MAX);
        // SAFETY: an open context; no completion channel, vector 0.
        let cq = unsafe {
            ibv::ibv_create_cq(
                self.ctx.as_ptr(),
                depth * 2,
                ptr::null_mut(),
                ptr::null_mut(),
                0,
            )
        };
        let Some(cq) = NonNull::new(cq) else {
            let e = os_error("creating a completion queue");
            // SAFETY: allocated by the caller; nothing was made in it.
            unsafe { ibv::ibv_dealloc_pd(pd.as_ptr()) };
            return Err(e);
        };
        // SAFETY: all-zero bytes are a valid ibv_qp_init_attr (null
        // pointers, zero integers), filled in below.
        let mut init: ibv::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = cq.as_ptr();
        init.recv_cq = cq.as_ptr();
        init.cap.max_send_wr = QUEUE_DEPTH;
        init.cap.max_recv_wr = QUEUE_DEPTH;
        init.cap.max_send_sge = 1;
        init.cap.max_recv_sge = 1;
        init.qp_type = ibv::ibv_qp_type::IBV_QPT_RC;
        init.sq_sig_all = 1;
        // SAFETY: a protection domain of this device and valid attributes.
        let qp = NonNull::new(unsafe { ibv::ibv_create_qp(pd.as_ptr(), &raw mut init) });
        let Some(qp) = qp else {
            let e = os_error("creating a queue pair");
            // SAFETY: the queue was created above and is used by nothing;
            // then the domain, which holds nothing.
            unsafe {
                ibv::ibv_destroy_cq(cq.as_ptr());
                ibv::ibv_dealloc_pd(pd.as_ptr());
            }
            return Err(e);
        };
        let mut endpoint = DeviceQp {
            device: Rc::clone(self),
            pd,
            cq,
            qp,
            regions: Vec::new(),
            posted: HashMap::new(),
            psn: psn(),
            error: false,
        };
        // SAFETY: all-zero bytes are a valid ibv_qp_attr.
        let mut attr: ibv::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv::ibv_qp_state::IBV_QPS_INIT;
        attr.port_num = PORT;
        attr.pkey_index = 0;
        attr.qp_access_flags = (ibv::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
            | ibv::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE)
            .0;
        let mask = ibv::ibv_qp_attr_mask::IBV_QP_STATE
            | ibv::ibv_qp_attr_mask::IBV_QP_PKEY_INDEX
            | ibv::ibv_qp_attr_mask::IBV_QP_PORT
            | ibv::ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS;
        endpoint.modify(&mut attr, mask, "INIT")?;
        Ok(endpoint)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: every queue pair holds an Rc of the device, so none is
        // left; closed once.
        unsafe {
            ibv::ibv_close_device(self.ctx.as_ptr());
        }
    }
}

/// A C `int` of flag bits.
fn bits(flags: u32) -> i32 {
    i32::from_ne_bytes(flags.to_ne_bytes())
}

fn os_error(what: &str) -> RdmaError {
    RdmaError::Verbs(VerbsError::Resource(format!(
        "{what}: {}",
        std::io::Error::last_os_error()
    )))
}

/// A first packet sequence number: 24 bits, not predictable from the
/// outside (the clock's low bits and the process id).
fn psn() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos ^ std::process::id().rotate_left(12)) & super::handshake::QPN_MAX
}

/// A registered region: memory this module allocated, and its MR.
#[derive(Debug)]
struct DeviceRegion {
    buf: NonNull<u8>,
    layout: Layout,
    mr: NonNull<ibv::ibv_mr>,
    remote: bool,
}

/// One RC queue pair on a device, with its completion queue and memory.
#[derive(Debug)]
pub struct DeviceQp {
    device: Rc<Device>,
    pd: NonNull<ibv::ibv_pd>,
    cq: NonNull<ibv::ibv_cq>,
    qp: NonNull<ibv::ibv_qp>,
    regions: Vec<DeviceRegion>,
    /// What each posted work request is: an error completion does not
    /// say (only its id and status are valid).
    posted: HashMap<WrId, Opcode>,
    psn: u32,
    error: bool,
}

impl DeviceQp {
    fn modify(
        &mut self,
        attr: &mut ibv::ibv_qp_attr,
        mask: ibv::ibv_qp_attr_mask,
        state: &str,
    ) -> Result<(), RdmaError> {
        // SAFETY: a queue pair of this module and attributes the mask
        // says are set.
        let rc = unsafe { ibv::ibv_modify_qp(self.qp.as_ptr(), attr, bits(mask.0)) };
        if rc != 0 {
            return Err(RdmaError::Handshake(format!(
                "moving the queue pair to {state}: {}",
                std::io::Error::from_raw_os_error(rc)
            )));
        }
        Ok(())
    }

    fn region(&self, region: Region) -> Result<&DeviceRegion, VerbsError> {
        self.regions
            .get(region.0 as usize)
            .ok_or_else(|| VerbsError::Resource(format!("no region {region:?}")))
    }

    /// A scatter-gather entry for `len` bytes at `offset` of `region`.
    fn sge(&self, region: Region, offset: usize, len: usize) -> Result<ibv::ibv_sge, VerbsError> {
        let r = self.region(region)?;
        let range = in_region(region, offset, len, r.layout.size())?;
        // SAFETY: the MR is registered (its lkey is valid to read).
        let lkey = unsafe { (*r.mr.as_ptr()).lkey };
        Ok(ibv::ibv_sge {
            addr: r.buf.as_ptr() as u64 + range.start as u64,
            length: u32::try_from(len).map_err(|_| VerbsError::QueueFull)?,
            lkey,
        })
    }

    fn post(
        &mut self,
        wr_id: WrId,
        opcode: Opcode,
        mut sge: ibv::ibv_sge,
        to: Option<RemoteSlot>,
    ) -> Result<(), VerbsError> {
        if self.posted.len() >= 2 * QUEUE_DEPTH as usize {
            return Err(VerbsError::QueueFull);
        }
        let rc = if opcode == Opcode::Recv {
            // SAFETY: all-zero bytes are a valid receive request.
            let mut wr: ibv::ibv_recv_wr = unsafe { std::mem::zeroed() };
            wr.wr_id = wr_id;
            wr.sg_list = &raw mut sge;
            wr.num_sge = 1;
            let mut bad = ptr::null_mut();
            // SAFETY: a queue pair of this module; the request and its
            // entry live across the call (the device copies them), and
            // the entry's bytes are registered memory this end owns.
            unsafe { ibv::ibv_post_recv(self.qp.as_ptr(), &raw mut wr, &raw mut bad) }
        } else {
            // SAFETY: all-zero bytes are a valid send request.
            let mut wr: ibv::ibv_send_wr = unsafe { std::mem::zeroed() };
            wr.wr_id = wr_id;
            wr.sg_list = &raw mut sge;
            wr.num_sge = 1;
            wr.send_flags = ibv::ibv_send_flags::IBV_SEND_SIGNALED.0;
            if let Some(to) = to {
                wr.opcode = ibv::ibv_wr_opcode::IBV_WR_RDMA_WRITE;
                wr.wr.rdma = ibv::rdma_t {
                    remote_addr: to.addr,
                    rkey: to.rkey,
                };
            } else {
                wr.opcode = ibv::ibv_wr_opcode::IBV_WR_SEND;
            }
            let mut bad = ptr::null_mut();
            // SAFETY: as for receives; a WRITE names remote memory the
            // peer's HCA checks (rkey, bounds), not this process's.
            unsafe { ibv::ibv_post_send(self.qp.as_ptr(), &raw mut wr, &raw mut bad) }
        };
        if rc != 0 {
            return Err(VerbsError::Resource(format!(
                "posting a work request: {}",
                std::io::Error::from_raw_os_error(rc)
            )));
        }
        self.posted.insert(wr_id, opcode);
        Ok(())
    }
}

fn status(s: ibv::ibv_wc_status::Type) -> WcStatus {
    use ibv::ibv_wc_status as st;
    match s {
        st::IBV_WC_SUCCESS => WcStatus::Success,
        st::IBV_WC_LOC_PROT_ERR => WcStatus::LocalProtection,
        st::IBV_WC_LOC_LEN_ERR => WcStatus::LocalLength,
        st::IBV_WC_REM_ACCESS_ERR => WcStatus::RemoteAccess,
        st::IBV_WC_REM_INV_REQ_ERR => WcStatus::RemoteInvalidRequest,
        st::IBV_WC_RNR_RETRY_EXC_ERR => WcStatus::ReceiverNotReady,
        st::IBV_WC_RETRY_EXC_ERR => WcStatus::RetryExceeded,
        st::IBV_WC_WR_FLUSH_ERR => WcStatus::Flushed,
        other => WcStatus::Other(other),
    }
}

impl Verbs for DeviceQp {
    fn register(&mut self, len: usize, remote: bool) -> Result<Region, VerbsError> {
        let layout = Layout::from_size_align(len.max(1), PAGE_BYTES)
            .map_err(|e| VerbsError::Resource(e.to_string()))?;
        // SAFETY: a layout of non-zero size.
        let buf = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
            .ok_or_else(|| VerbsError::Resource(format!("allocating {len} bytes")))?;
        let mut access = ibv::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE;
        if remote {
            access |= ibv::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE;
        }
        // SAFETY: `buf` is `layout.size()` bytes this module owns until
        // the region is deregistered (Drop), then freed.
        let mr = unsafe {
            ibv::ibv_reg_mr(
                self.pd.as_ptr(),
                buf.as_ptr().cast(),
                layout.size(),
                bits(access.0),
            )
        };
        let Some(mr) = NonNull::new(mr) else {
            // SAFETY: allocated above with this layout, not registered.
            unsafe { std::alloc::dealloc(buf.as_ptr(), layout) };
            return Err(VerbsError::Resource(format!(
                "registering {len} bytes: {} (raise `ulimit -l`)",
                std::io::Error::last_os_error()
            )));
        };
        self.regions.push(DeviceRegion {
            buf,
            layout,
            mr,
            remote,
        });
        Ok(Region(self.regions.len() as u32 - 1))
    }

    fn remote(&self, region: Region) -> Option<RemoteSlot> {
        let r = self.region(region).ok().filter(|r| r.remote)?;
        // SAFETY: a registered MR's rkey is valid to read.
        let rkey = unsafe { (*r.mr.as_ptr()).rkey };
        Some(RemoteSlot {
            addr: r.buf.as_ptr() as u64,
            rkey,
            len: u32::try_from(r.layout.size()).ok()?,
        })
    }

    fn load(&self, region: Region, offset: usize, out: &mut [u8]) -> Result<(), VerbsError> {
        let r = self.region(region)?;
        let range = in_region(region, offset, out.len(), r.layout.size())?;
        // SAFETY: `range` is inside the allocation (checked); the
        // transport reads only bytes no posted work request covers.
        unsafe {
            ptr::copy_nonoverlapping(r.buf.as_ptr().add(range.start), out.as_mut_ptr(), out.len());
        };
        Ok(())
    }

    fn store(&mut self, region: Region, offset: usize, data: &[u8]) -> Result<(), VerbsError> {
        let r = self.region(region)?;
        let range = in_region(region, offset, data.len(), r.layout.size())?;
        // SAFETY: as in `load`, for writing.
        unsafe {
            ptr::copy_nonoverlapping(data.as_ptr(), r.buf.as_ptr().add(range.start), data.len());
        };
        Ok(())
    }

    fn post_recv(
        &mut self,
        wr_id: WrId,
        region: Region,
        offset: usize,
        len: usize,
    ) -> Result<(), VerbsError> {
        let sge = self.sge(region, offset, len)?;
        self.post(wr_id, Opcode::Recv, sge, None)
    }

    fn post_send(
        &mut self,
        wr_id: WrId,
        region: Region,
        offset: usize,
        len: usize,
    ) -> Result<(), VerbsError> {
        let sge = self.sge(region, offset, len)?;
        self.post(wr_id, Opcode::Send, sge, None)
    }

    fn post_write(
        &mut self,
        wr_id: WrId,
        region: Region,
        offset: usize,
        len: usize,
        to: RemoteSlot,
    ) -> Result<(), VerbsError> {
        let sge = self.sge(region, offset, len)?;
        self.post(wr_id, Opcode::Write, sge, Some(to))
    }

    fn poll(&mut self, out: &mut Vec<Completion>, max: usize) -> Result<usize, VerbsError> {
        const BATCH: usize = 16;
        // SAFETY: all-zero bytes are valid work completions.
        let mut wcs: [ibv::ibv_wc; BATCH] = unsafe { std::mem::zeroed() };
        let want = i32::try_from(max.min(BATCH)).unwrap_or(0);
        // SAFETY: a completion queue of this module and room for `want`.
        let n = unsafe { ibv::ibv_poll_cq(self.cq.as_ptr(), want, wcs.as_mut_ptr()) };
        let Ok(n) = usize::try_from(n) else {
            self.error = true;
            return Err(VerbsError::Resource(format!(
                "polling the completion queue failed ({n})"
            )));
        };
        for wc in &wcs[..n.min(BATCH)] {
            let Some(opcode) = self.posted.remove(&wc.wr_id) else {
                continue;
            };
            let status = status(wc.status);
            if status != WcStatus::Success {
                self.error = true;
            }
            out.push(Completion {
                wr_id: wc.wr_id,
                opcode,
                status,
                byte_len: wc.byte_len,
            });
        }
        Ok(n)
    }

    fn shut(&mut self) {
        if self.error {
            return;
        }
        self.error = true;
        // SAFETY: all-zero bytes are a valid ibv_qp_attr.
        let mut attr: ibv::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv::ibv_qp_state::IBV_QPS_ERR;
        let _ = self.modify(&mut attr, ibv::ibv_qp_attr_mask::IBV_QP_STATE, "ERR");
    }
}

impl Endpoint for DeviceQp {
    fn addr(&self) -> QpAddr {
        QpAddr {
            // SAFETY: a created queue pair's number is valid to read.
            qpn: unsafe { (*self.qp.as_ptr()).qp_num },
            psn: self.psn,
            lid: self.device.lid,
            gid: self.device.gid,
            mtu: self.device.mtu,
        }
    }

    fn connect(&mut self, peer: &QpAddr) -> Result<(), RdmaError> {
        // SAFETY: all-zero bytes are a valid ibv_qp_attr.
        let mut attr: ibv::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv::ibv_qp_state::IBV_QPS_RTR;
        attr.path_mtu = u32::from(peer.mtu.min(self.device.mtu));
        attr.dest_qp_num = peer.qpn;
        attr.rq_psn = peer.psn;
        attr.max_dest_rd_atomic = 1;
        attr.min_rnr_timer = 12;
        attr.ah_attr.dlid = peer.lid;
        attr.ah_attr.port_num = PORT;
        // RoCE needs the global route (the GID); InfiniBand takes it too.
        attr.ah_attr.is_global = 1;
        attr.ah_attr.grh.dgid = ibv::ibv_gid { raw: peer.gid };
        attr.ah_attr.grh.sgid_index = GID_INDEX;
        attr.ah_attr.grh.hop_limit = 1;
        let rtr = ibv::ibv_qp_attr_mask::IBV_QP_STATE
            | ibv::ibv_qp_attr_mask::IBV_QP_AV
            | ibv::ibv_qp_attr_mask::IBV_QP_PATH_MTU
            | ibv::ibv_qp_attr_mask::IBV_QP_DEST_QPN
            | ibv::ibv_qp_attr_mask::IBV_QP_RQ_PSN
            | ibv::ibv_qp_attr_mask::IBV_QP_MAX_DEST_RD_ATOMIC
            | ibv::ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER;
        self.modify(&mut attr, rtr, "RTR")?;
        attr.qp_state = ibv::ibv_qp_state::IBV_QPS_RTS;
        attr.sq_psn = self.psn;
        attr.timeout = 14;
        attr.retry_cnt = 7;
        // Finite: a SEND with no receive posted is an error, never a hang
        // (credits keep receives posted; a peer that overruns them breaks).
        attr.rnr_retry = 6;
        attr.max_rd_atomic = 1;
        let rts = ibv::ibv_qp_attr_mask::IBV_QP_STATE
            | ibv::ibv_qp_attr_mask::IBV_QP_TIMEOUT
            | ibv::ibv_qp_attr_mask::IBV_QP_RETRY_CNT
            | ibv::ibv_qp_attr_mask::IBV_QP_RNR_RETRY
            | ibv::ibv_qp_attr_mask::IBV_QP_SQ_PSN
            | ibv::ibv_qp_attr_mask::IBV_QP_MAX_QP_RD_ATOMIC;
        self.modify(&mut attr, rts, "RTS")
    }
}

impl Drop for DeviceQp {
    fn drop(&mut self) {
        // SAFETY: the queue pair goes before the queue it completes to,
        // each region is deregistered before its memory is freed, and the
        // protection domain goes last, empty; each once. No work request
        // is posted after this (we own the pair).
        unsafe {
            ibv::ibv_destroy_qp(self.qp.as_ptr());
            ibv::ibv_destroy_cq(self.cq.as_ptr());
            for r in &self.regions {
                ibv::ibv_dereg_mr(r.mr.as_ptr());
                std::alloc::dealloc(r.buf.as_ptr(), r.layout);
            }
            ibv::ibv_dealloc_pd(self.pd.as_ptr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::neighbor::rdma::home::{Home, Outcome};
    use crate::neighbor::rdma::requester::Requester;
    use crate::neighbor::rdma::Params;
    use datenlord_engine::BlockId;

    /// On this machine (no device, no soft-RoCE) discovery says so, with
    /// the fallback's words; on one with a device, it names them.
    #[test]
    fn discovery_names_the_devices_or_says_there_is_none() {
        match discover() {
            Err(RdmaError::NoDevice(message)) => {
                assert!(
                    message.starts_with("no RDMA device; using TCP"),
                    "{message}"
                );
            }
            Err(other) => panic!("discovery failed otherwise: {other}"),
            Ok(devices) => {
                assert!(devices.iter().all(|d| !d.is_empty()), "{devices:?}");
                eprintln!("RDMA devices here: {devices:?} (the no-device path is not exercised)");
            }
        }
    }

    /// Asking for RDMA on a machine without a device gives TCP and says
    /// why, in one sentence (not the fallback's words twice).
    #[test]
    fn asking_for_rdma_without_a_device_uses_tcp_and_says_why() {
        if discover().is_ok() {
            eprintln!("this machine has an RDMA device: the fallback is not exercised");
            return;
        }
        let (fabric, why) =
            crate::neighbor::rdma::choose(crate::neighbor::rdma::Transport::Rdma, true);
        assert!(fabric.is_none());
        let why = why.expect("a reason");
        let fallback = crate::neighbor::rdma::FALLBACK_MESSAGE;
        assert!(why.starts_with(fallback), "{why}");
        assert_eq!(why.matches(fallback).count(), 1, "{why}");
    }

    /// A block read over two queue pairs of the first device, connected
    /// to each other in this process.
    #[test]
    #[ignore = "needs an RDMA device (this machine has none): with soft-RoCE (`rdma link add rxe0 type rxe netdev eth0`) run `cargo nextest run -p datenlord-cluster --features rdma --lib rdma --run-ignored all` (ARCHITECTURE.md)"]
    fn a_block_is_read_over_a_real_device() {
        let device = Device::open(None).expect("an RDMA device");
        let params = Params::new(4, 64 << 10).expect("params");
        let (a, mut b) = (
            device.endpoint().expect("qp"),
            device.endpoint().expect("qp"),
        );
        let (addr_a, addr_b) = (a.addr(), b.addr());
        b.connect(&addr_a).expect("connect");
        let mut requester = Requester::new(a, params).expect("requester");
        let mut home = Home::new(b, params, requester.landing()).expect("home");
        requester.connect(&addr_b, params.credits).expect("connect");
        let id = BlockId::new(1, 2, 1 << 16);
        let data: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
        let request = requester.start(id, None, 0, 5_000).expect("start");
        let started = std::time::Instant::now();
        let answer = loop {
            for r in home.poll().expect("home") {
                home.answer(r, Outcome::Block(&data)).expect("answer");
            }
            let now = started.elapsed().as_millis() as u64;
            if let Some((n, answer)) = requester.progress(now).pop() {
                assert_eq!(n, request);
                break answer;
            }
        };
        assert_eq!(answer.expect("the block"), data);
    }
}

/// The node's RDMA device as its shards' fabric: each shard opens the
/// device on its own thread.
#[derive(Clone, Debug)]
pub struct DeviceFabric {
    /// The device's name (the first device when `None`).
    pub name: Option<String>,
}

impl super::fabric::Fabric for DeviceFabric {
    fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| "the first RDMA device".into())
    }

    fn open(&self) -> Result<Rc<dyn super::fabric::ShardFabric>, RdmaError> {
        Ok(Rc::new(DeviceShard(Device::open(self.name.as_deref())?)))
    }
}

/// A shard's open device.
struct DeviceShard(Rc<Device>);

impl super::fabric::ShardFabric for DeviceShard {
    fn endpoint(&self) -> Result<super::fabric::Qp, RdmaError> {
        Ok(Box::new(self.0.endpoint()?))
    }
}
