//! How the kernel schedules deliver's threads.
//!
//! deliver is a throughput worker that shares the machine with the request
//! path (nginx, ingest) and Redis. Under the normal policy each response
//! that wakes a deliver thread may preempt whatever runs on that core, and
//! each request deliver writes wakes a receiver that preempts deliver in
//! turn: in the drain benchmark on two cores each runtime thread was
//! switched out 4,000–7,000 times a second. `SCHED_BATCH` tells Linux the
//! threads are not interactive: they get the same share of the CPU but do
//! not preempt on wake-up, so each turn is longer and handles more ready
//! responses, and the request path keeps its quick wake-ups. Drain of
//! 200,000 jobs, three alternating pairs: 0.355/0.385/0.334 of the sink
//! ceiling with the inherited policy, 0.365/0.444/0.501 with `SCHED_BATCH`.
//!
//! Set by the main thread before any other thread exists, so every thread
//! of the process inherits it. Changing between the normal and the batch
//! policy needs no privilege.

use std::io;

/// `DELIVER_CPU_POLICY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuPolicy {
    /// `SCHED_BATCH`: a CPU-bound worker that yields to interactive work.
    Batch,
    /// Leave the policy as the process was started with.
    Inherit,
}

impl CpuPolicy {
    /// The setting's value for this policy.
    pub fn as_str(self) -> &'static str {
        match self {
            CpuPolicy::Batch => "batch",
            CpuPolicy::Inherit => "inherit",
        }
    }
}

/// Puts the calling thread (and so every thread it starts afterwards)
/// under `policy`.
pub fn apply(policy: CpuPolicy) -> io::Result<()> {
    match policy {
        CpuPolicy::Inherit => Ok(()),
        CpuPolicy::Batch => set_batch(),
    }
}

#[cfg(target_os = "linux")]
fn set_batch() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the duration of the call;
    // pid 0 means the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn set_batch() -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "SCHED_BATCH exists only on Linux",
    ))
}
