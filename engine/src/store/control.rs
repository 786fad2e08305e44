//! The control plane: a small tokio runtime on threads of its own, where
//! `object_store` (which only runs on tokio) and the journal's uploaders
//! live. Futures handed out are bridged by a oneshot channel, so glommio
//! executors and plain threads (`futures::executor::block_on`) await them.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use super::StoreError;

/// Worker threads of the control-plane runtime.
pub const CONTROL_THREADS: usize = 2;
/// How long shutdown waits for tasks to stop.
const SHUTDOWN_TIMEOUT_MS: u64 = 5_000;

/// Handle to the control-plane runtime; clones share it. The runtime stops
/// when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    handle: tokio::runtime::Handle,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ControlPlane {
    /// Starts the runtime.
    pub fn start() -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(CONTROL_THREADS)
            .thread_name("datenlord-control")
            .enable_all()
            .build()
            .map_err(|e| StoreError::io("start the control-plane runtime", "", e))?;
        let handle = runtime.handle().clone();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("datenlord-control-owner".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stop_rx.await;
                });
                runtime.shutdown_timeout(Duration::from_millis(SHUTDOWN_TIMEOUT_MS));
            })
            .map_err(|e| StoreError::io("start the control-plane thread", "", e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                handle,
                stop: Mutex::new(Some(stop_tx)),
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The runtime's handle (for drivers that spawn tasks).
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.inner.handle
    }

    /// Runs `task` on the control plane; the returned future completes on
    /// any executor. A stopped control plane answers [`StoreError::ShutDown`].
    pub fn run<F, T>(&self, task: F) -> impl Future<Output = Result<T, StoreError>> + Send + 'static
    where
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.inner.handle.spawn(async move {
            let _ = tx.send(task.await);
        });
        async move { rx.await.unwrap_or(Err(StoreError::ShutDown)) }
    }

    /// Runs blocking `work` (file IO) on the control plane's blocking pool.
    pub fn run_blocking<F, T>(
        &self,
        work: F,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static
    where
        F: FnOnce() -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let handle = self.inner.handle.clone();
        self.run(async move {
            handle
                .spawn_blocking(work)
                .await
                .unwrap_or(Err(StoreError::ShutDown))
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut stop) = self.stop.lock() {
            if let Some(stop) = stop.take() {
                let _ = stop.send(());
            }
        }
        // Joining from inside the runtime would wait for ourselves.
        if tokio::runtime::Handle::try_current().is_err() {
            if let Ok(mut thread) = self.thread.lock() {
                if let Some(thread) = thread.take() {
                    let _ = thread.join();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_tasks_from_plain_threads_and_glommio() {
        let control = ControlPlane::start().expect("start");
        let answer = futures::executor::block_on(control.run(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(42)
        }));
        assert_eq!(answer.expect("run"), 42);
        let blocking = futures::executor::block_on(control.run_blocking(|| Ok("done")));
        assert_eq!(blocking.expect("blocking"), "done");
        let c = control.clone();
        let from_glommio = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                c.run(async {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok(7)
                })
                .await
            })
            .expect("executor")
            .join()
            .expect("join");
        assert_eq!(from_glommio.expect("run"), 7);
    }
}
