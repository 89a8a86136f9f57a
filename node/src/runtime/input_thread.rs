//! The decoder inputs' own thread: a single-threaded async runtime on a thread of its own, kept to
//! the cores where the spool's `fdatasync` ends (the spool writer's cores, see
//! [`super::spool_thread_cores`]).
//!
//! Why (issue 14, measured on the 2-core build VM): a passing's append ends in an `fdatasync`
//! whose completion interrupt arrives on the disk's interrupt core. A thread waiting on another
//! core is woken from there by an inter-processor interrupt, and on a virtual machine whose other
//! vCPU is halted that wake-up costs about 100 µs: the same paced 96-byte `fdatasync` measured
//! p50 262-264 µs kept to the interrupt core and 373-379 µs kept to the other one. On the runtime's
//! work-stealing workers a decoder's task, and the append it commits on its worker, land on
//! either core, so the node paid that wake-up for a share of its passings.
//!
//! Here the inputs' reads, framing and appends stay on the disk's core, and so does the spool's
//! writer thread. An append that finds the writer idle (a quiet track) commits right here
//! ([`spool::commit_appends_on_this_thread`]): the thread blocks for the journal write and its
//! sync, which saves the writer thread's wake-up (frame to hand-off 8 µs at p50 at 100/s,
//! against 12 µs on the workers). A busy writer (1,000/s) gets the append through its queue, a
//! wake-up on the same core, and the input reads on while it syncs. While a commit blocks the
//! thread, the other decoders' bytes wait in the kernel's buffers (a sync is ~0.3 ms; a line at
//! 115200 baud fills 4 KiB in a third of a second). Everything else runs on the runtime's workers
//! and the other cores: the display, the uplink, and the race projection, whose fold the node keeps
//! off this core ([`super::results_fold_cores`]).
//!
//! The thread runs at nice [`INPUT_NICE`] (-5), so that when a decoder's bytes wake it, it takes
//! its core from whatever ordinary thread holds it instead of queueing behind it. An ftrace of the
//! node bench at 1,000/s (2026-12-05) showed the read waiting that way: the tty layer's worker woke
//! the input, then yielded to the thread that had written the bytes, which ran on for ~7 µs
//! before the input got the core. In the bench that thread is the decoder player; on a box it is
//! whatever else is on this core when a passing arrives. At nice -5 the wake-up stage fell from
//! 23-24 to 15-20 µs at p50 in every pair of runs (8 pairs at 1,000/s). Lowering a thread's nice
//! below 0 takes `LimitNICE=-5` (the systemd unit has it) or `CAP_SYS_NICE`; without either the
//! thread stays at 0 and the node works as before.
//!
//! [`INPUT_THREAD_ENV`]`=workers` runs the inputs on the runtime's workers, as before 2026-12-03,
//! and [`INPUT_NICE_ENV`]`=0` keeps the thread at nice 0, as before 2026-12-05, so
//! `cargo bench -p node` measures each in one run.

use std::future::Future;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Set to `workers`, the decoder inputs run on the async runtime's workers (the node's placement
/// before 2026-12-03) instead of on a thread of their own ([`InputThread`]). Kept so
/// `cargo bench -p node` measures both in the same run; not for production.
pub const INPUT_THREAD_ENV: &str = "VENUE_NODE_INPUT_THREAD";

/// The inputs' thread's nice value: ahead of the node's other threads (0) when a decoder's bytes
/// wake it. See the module's documentation.
pub const INPUT_NICE: i32 = -5;

/// Set to a nice value (-20 to 19), the inputs' thread runs at it instead of [`INPUT_NICE`]; `0`
/// is the node before 2026-12-05. Kept so `cargo bench -p node` measures both in the same run.
pub const INPUT_NICE_ENV: &str = "VENUE_NODE_INPUT_NICE";

/// The inputs' thread's nice value, from [`INPUT_NICE_ENV`] ([`nice_from`]).
pub fn input_nice() -> i32 {
    nice_from(std::env::var(INPUT_NICE_ENV).ok().as_deref())
}

/// The nice value [`INPUT_NICE_ENV`]`=value` asks for; [`INPUT_NICE`] when unset, and when it is
/// not a nice value (-20 to 19), which is logged.
pub fn nice_from(value: Option<&str>) -> i32 {
    let Some(value) = value else {
        return INPUT_NICE;
    };
    match value.trim().parse::<i32>() {
        Ok(nice) if (-20..=19).contains(&nice) => nice,
        _ => {
            tracing::warn!(
                value,
                "{INPUT_NICE_ENV} is not a nice value (-20 to 19); using {INPUT_NICE}"
            );
            INPUT_NICE
        }
    }
}

/// Sets the calling thread's (`thread`'s) nice value; what could not be done is logged (at debug
/// when it was not permitted, the expected outcome without `LimitNICE` or `CAP_SYS_NICE`).
fn set_own_nice(thread: &'static str, nice: i32) {
    let tid = rustix::thread::gettid();
    match rustix::process::setpriority_process(Some(tid), nice) {
        Ok(()) => tracing::debug!(thread, nice, "thread priority set"),
        Err(e) if e == rustix::io::Errno::ACCESS || e == rustix::io::Errno::PERM => {
            tracing::debug!(
                thread,
                nice,
                error = %e,
                "the thread stays at its priority: a nice below 0 takes LimitNICE or CAP_SYS_NICE"
            );
        }
        Err(e) => tracing::warn!(thread, nice, error = %e, "cannot set the thread's priority"),
    }
}

/// Where the decoder inputs run, from [`INPUT_THREAD_ENV`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On a thread of their own (the default).
    OwnThread,
    /// On the runtime's workers (before 2026-12-03).
    Workers,
}

impl Placement {
    /// The placement the environment asks for; an unknown value is logged and ignored.
    pub fn from_env() -> Placement {
        match std::env::var(INPUT_THREAD_ENV).as_deref() {
            Ok("workers") => Placement::Workers,
            Ok("own") | Err(_) => Placement::OwnThread,
            Ok(other) => {
                tracing::warn!(
                    value = other,
                    "{INPUT_THREAD_ENV} is neither own nor workers; using own"
                );
                Placement::OwnThread
            }
        }
    }
}

/// The inputs' thread and its runtime. Tasks spawned here run until they end or the thread is
/// stopped ([`InputThread::stop`], or dropped: then it stops without waiting).
pub struct InputThread {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InputThread {
    /// Starts the thread, kept to `cores` when given (a warning, not an error, if it cannot be),
    /// at nice `nice` where it may be (see [`INPUT_NICE`]).
    pub fn start(cores: Option<Vec<usize>>, nice: i32) -> std::io::Result<InputThread> {
        // Its blocking jobs (opening a device, reading the spool as a decoder connects) run on
        // threads it starts, which would inherit its cores: they get the process's back, so the
        // disk's core stays with the inputs and the writer.
        // They would inherit its priority too: one above the node's others goes back to theirs.
        let anywhere = spool::allowed_cores();
        let own = rustix::process::getpriority_process(None).unwrap_or(0);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_start(move || {
                if let Some(all) = &anywhere {
                    spool::keep_thread_to("decoder-input-blocking", all);
                }
                if nice < own {
                    set_own_nice("decoder-input-blocking", own);
                }
            })
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("decoder-input".into())
            .spawn(move || {
                if let Some(cores) = cores {
                    spool::keep_thread_to("decoder-input", &cores);
                }
                if nice != 0 {
                    set_own_nice("decoder-input", nice);
                }
                spool::commit_appends_on_this_thread();
                // A current-thread runtime runs its spawned tasks while its thread is inside
                // `block_on`: this thread stays there until it is asked to stop.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Tasks still running are dropped with the runtime, here on its own thread.
            })?;
        Ok(InputThread {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Runs `task` on the inputs' thread; await the handle from any runtime.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(task)
    }

    /// Stops the thread and waits for it (this blocks: call it off the async workers). Tasks still
    /// running are dropped.
    pub fn stop(mut self) {
        self.stop.take().map(|s| s.send(()));
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the decoder inputs' thread panicked");
        }
    }
}

impl Drop for InputThread {
    fn drop(&mut self) {
        // Not joined here: a drop may happen on an async worker, which must not block.
        self.stop.take().map(|s| s.send(()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_run_on_the_inputs_thread_and_stop_ends_it() {
        let all = spool::allowed_cores().unwrap();
        let first = vec![all[0]];
        // A nice above 0, which any user may take (below 0 needs a privilege the tests may lack).
        let thread = InputThread::start(Some(first.clone()), 3).unwrap();
        let (name, cores, blocking_cores, nice) = thread
            .spawn(async {
                // A timer and a blocking call work there, as the inputs use both.
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                let blocking_cores = tokio::task::spawn_blocking(spool::allowed_cores)
                    .await
                    .unwrap();
                let name = std::thread::current().name().map(str::to_owned);
                let nice = rustix::process::getpriority_process(None).unwrap();
                (name, spool::allowed_cores(), blocking_cores, nice)
            })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("decoder-input"));
        assert_eq!(nice, 3, "the inputs' thread runs at the nice it was given");
        // The inputs keep to the cores given; their blocking jobs run anywhere.
        assert_eq!(cores, Some(first));
        assert_eq!(blocking_cores, Some(all));
        // A task that never ends is dropped when the thread stops, and stop returns.
        let forever = thread.spawn(std::future::pending::<()>());
        tokio::task::spawn_blocking(move || thread.stop())
            .await
            .unwrap();
        let ended = forever.await.unwrap_err();
        assert!(ended.is_cancelled(), "{ended}");
    }

    #[test]
    fn the_nice_is_the_environment_s_when_it_is_one() {
        for (value, want) in [
            (None, INPUT_NICE),
            (Some("0"), 0),
            (Some(" -10 "), -10),
            (Some("19"), 19),
            (Some("20"), INPUT_NICE),
            (Some("-21"), INPUT_NICE),
            (Some("fast"), INPUT_NICE),
        ] {
            assert_eq!(nice_from(value), want, "{value:?}");
        }
    }
}
