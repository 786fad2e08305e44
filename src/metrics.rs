//! The Prometheus endpoint of a node (`--metrics-addr`): a small HTTP
//! server on its own thread that renders the text exposition format from
//! the components' counters at each scrape. Nothing on the data path waits
//! for it: components keep their own counters (shard-owned or atomic) and
//! are only read here.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read as _, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tracing::{debug, info};

/// Longest request head read from a scraper.
const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// A scraper that sends nothing for this long is dropped.
const SCRAPE_TIMEOUT_MS: u64 = 5_000;

/// A text exposition under construction.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

/// Label pairs of one sample.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('"', "\\\"")
}

fn label_text(labels: Labels<'_>, extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{}\"", escape(v)));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// A histogram's cumulative buckets (upper bound in seconds, count at or
/// below it), total and sum, as the exposition wants them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramSample {
    /// `(le_seconds, cumulative_count)`, increasing.
    pub buckets: Vec<(f64, u64)>,
    /// Observations.
    pub count: u64,
    /// Sum of the observations in seconds.
    pub sum_seconds: f64,
}

impl HistogramSample {
    /// From cumulative buckets with upper bounds in microseconds, and the
    /// sum in nanoseconds.
    pub fn from_micros(buckets: &[(u64, u64)], count: u64, sum_ns: u64) -> Self {
        Self {
            buckets: buckets
                .iter()
                .map(|&(le_us, n)| (le_us as f64 / 1e6, n))
                .collect(),
            count,
            sum_seconds: sum_ns as f64 / 1e9,
        }
    }
}

impl Exposition {
    /// Starts a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample of a counter or gauge.
    pub fn sample(&mut self, name: &str, labels: Labels<'_>, value: f64) {
        let _ = writeln!(self.text, "{name}{} {value}", label_text(labels, None));
    }

    /// The samples of one histogram.
    pub fn histogram(&mut self, name: &str, labels: Labels<'_>, h: &HistogramSample) {
        for (le, count) in &h.buckets {
            let le = le.to_string();
            let _ = writeln!(
                self.text,
                "{name}_bucket{} {count}",
                label_text(labels, Some(("le", &le)))
            );
        }
        let _ = writeln!(
            self.text,
            "{name}_bucket{} {}",
            label_text(labels, Some(("le", "+Inf"))),
            h.count
        );
        let _ = writeln!(
            self.text,
            "{name}_sum{} {}",
            label_text(labels, None),
            h.sum_seconds
        );
        let _ = writeln!(
            self.text,
            "{name}_count{} {}",
            label_text(labels, None),
            h.count
        );
    }

    /// The finished text.
    pub fn finish(self) -> String {
        self.text
    }
}

/// Renders the current metrics (called per scrape, on the endpoint thread).
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// A running endpoint; stops when dropped.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Endpoint {
    /// Binds `addr` and serves `GET /metrics` from `render`.
    pub fn start(addr: SocketAddr, render: Render) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).with_context(|| {
            format!("cannot serve metrics on {addr} (--metrics-addr): is the port in use?")
        })?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        if let Err(e) = serve(conn, &render) {
                            debug!(error = %e, "metrics scrape failed");
                        }
                    }
                }
            })
            .context("starting the metrics thread")?;
        info!(%addr, "serving Prometheus metrics at /metrics");
        Ok(Self { addr, stop })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve(conn: TcpStream, render: &Render) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_millis(SCRAPE_TIMEOUT_MS)))?;
    // A scraper that stops reading must not hold the endpoint's thread.
    conn.set_write_timeout(Some(Duration::from_millis(SCRAPE_TIMEOUT_MS)))?;
    // At most REQUEST_HEAD_BYTES_MAX of request, however long its lines.
    let mut head = BufReader::new(conn.try_clone()?.take(REQUEST_HEAD_BYTES_MAX as u64));
    let mut request_line = String::new();
    head.read_line(&mut request_line)?;
    let mut head_bytes = request_line.len();
    loop {
        let mut line = String::new();
        let n = head.read_line(&mut line)?;
        head_bytes += n;
        if n == 0 || line == "\r\n" || line == "\n" || head_bytes > REQUEST_HEAD_BYTES_MAX {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, content_type, body) = if method != "GET" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "use GET /metrics\n".to_string(),
        )
    } else if path == "/metrics" || path.starts_with("/metrics?") {
        (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(),
        )
    } else {
        (
            "404 Not Found",
            "text/plain",
            "metrics are at /metrics\n".to_string(),
        )
    };
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn exposition_escapes_labels_and_closes_histograms() {
        let mut e = Exposition::default();
        e.family("dl_ops_total", "counter", "Requests.");
        e.sample("dl_ops_total", &[("op", "read\"x")], 3.0);
        e.family("dl_op_seconds", "histogram", "Latency.");
        e.histogram(
            "dl_op_seconds",
            &[("op", "read")],
            &HistogramSample {
                buckets: vec![(0.001, 2), (0.01, 3)],
                count: 4,
                sum_seconds: 0.5,
            },
        );
        let text = e.finish();
        assert!(text.contains("dl_ops_total{op=\"read\\\"x\"} 3"), "{text}");
        assert!(
            text.contains("dl_op_seconds_bucket{op=\"read\",le=\"0.001\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("dl_op_seconds_bucket{op=\"read\",le=\"+Inf\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("dl_op_seconds_count{op=\"read\"} 4"),
            "{text}"
        );
    }

    #[test]
    fn endpoint_serves_metrics_and_refuses_other_paths() {
        let render: Render = Arc::new(|| "dl_up 1\n".to_string());
        let endpoint =
            Endpoint::start("127.0.0.1:0".parse().expect("addr"), render).expect("start");
        let get = |path: &str| {
            let mut conn = TcpStream::connect(endpoint.addr()).expect("connect");
            write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
            let mut answer = String::new();
            conn.read_to_string(&mut answer).expect("read");
            answer
        };
        let ok = get("/metrics");
        assert!(
            ok.starts_with("HTTP/1.1 200") && ok.ends_with("dl_up 1\n"),
            "{ok}"
        );
        assert!(get("/other").starts_with("HTTP/1.1 404"));
        // A head without an end is read up to its limit, then answered
        // (or the connection reset, the rest of it left unread): never
        // waited for, nor held in memory.
        let mut conn = TcpStream::connect(endpoint.addr()).expect("connect");
        let endless = vec![b'a'; 4 * REQUEST_HEAD_BYTES_MAX];
        let _ = conn.write_all(b"GET /metrics HTTP/1.1\r\nX-Long: ");
        let _ = conn.write_all(&endless);
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut answer = String::new();
        match conn.read_to_string(&mut answer) {
            Ok(_) => assert!(answer.starts_with("HTTP/1.1 200"), "{answer}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
        assert!(get("/metrics").starts_with("HTTP/1.1 200"), "still serving");
    }
}
