//! The raw limit of a link for request/response traffic: one TCP
//! connection (`TCP_NODELAY`), one request outstanding, a request of
//! `request` bytes answered with `response` bytes, timed at the client.
//! It is what a remote block read costs below any file system: the
//! reference the neighbor tier's latency is judged against.
//!
//! Wire: each request is `request` bytes (at least 8): its own length and
//! the response's (little endian u32 each), then filler; the server
//! answers with that many bytes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::latency::MAX_LATENCY_NS;

/// Largest response the server sends.
pub const RESPONSE_MAX: u32 = 64 << 20;

fn io(op: &'static str, addr: &str, e: std::io::Error) -> Error {
    Error::io(op, addr, e)
}

/// Serves request/response pairs on `listen` until the process ends; one
/// thread per connection.
pub fn serve(listen: &str) -> Result<()> {
    let listener = TcpListener::bind(listen).map_err(|e| io("listen on", listen, e))?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            let _ = answer(stream);
        });
    }
    Ok(())
}

/// Answers one connection's requests until it closes.
fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut request = Vec::new();
    let mut response = Vec::new();
    let mut head = [0u8; 8];
    loop {
        // A request: its size, the response's size, then the rest.
        stream.read_exact(&mut head)?;
        let size = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let wanted = u32::from_le_bytes([head[4], head[5], head[6], head[7]]).min(RESPONSE_MAX);
        request.resize(
            size.saturating_sub(head.len()).min(RESPONSE_MAX as usize),
            0,
        );
        stream.read_exact(&mut request)?;
        response.resize(wanted as usize, 0x5a);
        stream.write_all(&response)?;
    }
}

/// What a client run measured.
#[derive(Debug, Clone, Serialize)]
pub struct PingPong {
    /// Request bytes.
    pub request: u32,
    /// Response bytes.
    pub response: u32,
    /// Round trips made.
    pub round_trips: u64,
    /// Round trips per second.
    pub per_second: f64,
    /// Response bytes per second, in MiB.
    pub mib_per_second: f64,
    /// Round trip percentiles, microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
}

/// Makes round trips to `addr` for `duration`.
pub fn run(addr: &str, request: u32, response: u32, duration: Duration) -> Result<PingPong> {
    let resolved = addr
        .to_socket_addrs()
        .map_err(|e| io("resolve", addr, e))?
        .next()
        .ok_or_else(|| Error::InvalidValue {
            what: "address",
            value: addr.to_string(),
            reason: "resolves to nothing".into(),
        })?;
    if response > RESPONSE_MAX || request < 8 {
        return Err(Error::InvalidValue {
            what: "sizes",
            value: format!("{request}/{response}"),
            reason: format!("a request is at least 8 bytes, a response at most {RESPONSE_MAX}"),
        });
    }
    let mut stream = TcpStream::connect(resolved).map_err(|e| io("connect to", addr, e))?;
    stream
        .set_nodelay(true)
        .map_err(|e| io("set TCP_NODELAY on", addr, e))?;
    let mut out = vec![0u8; request as usize];
    out[..4].copy_from_slice(&request.to_le_bytes());
    out[4..8].copy_from_slice(&response.to_le_bytes());
    let mut back = vec![0u8; response as usize];
    let mut histogram = Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_NS, 3)
        .map_err(|e| Error::Histogram(e.to_string()))?;
    let start = Instant::now();
    while start.elapsed() < duration {
        let t = Instant::now();
        stream
            .write_all(&out)
            .and_then(|()| stream.read_exact(&mut back))
            .map_err(|e| io("round trip with", addr, e))?;
        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        histogram.saturating_record(ns.max(1));
    }
    let seconds = start.elapsed().as_secs_f64();
    let n = histogram.len();
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(PingPong {
        request,
        response,
        round_trips: n,
        per_second: n as f64 / seconds,
        mib_per_second: (n * u64::from(response)) as f64 / seconds / f64::from(1 << 20),
        p50_us: us(0.5),
        p99_us: us(0.99),
        p999_us: us(0.999),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_carry_the_sizes_asked_for() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || answer(stream));
            }
        });
        let result = run(&addr, 64, 100_000, Duration::from_millis(50)).expect("run");
        assert!(result.round_trips > 0);
        assert_eq!(result.response, 100_000);
        assert!(result.p50_us > 0.0 && result.p50_us <= result.p99_us);
        // A response of another size than asked would desynchronize the
        // stream: the next round trip with other sizes still works.
        let small = run(&addr, 8, 0, Duration::from_millis(20)).expect("run");
        assert!(small.round_trips > 0);
        assert!(run(&addr, 4, 10, Duration::from_millis(1)).is_err());
    }
}
