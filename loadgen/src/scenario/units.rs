//! The per-thread scaffolding the connection-per-unit scenarios share
//! (`ws-echo`, `msrp-relay`): one local task per unit (a connection, a
//! pair), all of a thread's tasks recording into the thread's latency
//! histograms, statistics and error log, connects limited by a semaphore.

use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::engine::{ErrorLog, ThreadCtx};
use crate::report::{self, SecondHists};

/// Latency histograms of one thread: the measured window's and the
/// per-second ones.
pub struct Hists {
    pub measured: Histogram<u64>,
    pub seconds: SecondHists,
}

/// What a thread's unit tasks record into (`S`: the scenario's counters).
pub struct Shared<S> {
    pub hist: RefCell<Hists>,
    pub stats: RefCell<S>,
    pub errors: RefCell<ErrorLog>,
}

/// A scenario's counters: summed over units, then over threads.
pub trait Counters: Default {
    fn add(&mut self, other: &Self);
}

/// One worker thread's results.
pub struct UnitsThread<S> {
    pub hist: Histogram<u64>,
    pub seconds: SecondHists,
    pub stats: S,
    pub errors: ErrorLog,
}

impl<S: Counters> UnitsThread<S> {
    /// All threads' results together, for the report.
    pub fn merge(threads: &[UnitsThread<S>]) -> UnitsThread<S> {
        let mut all = UnitsThread {
            hist: report::new_histogram(),
            seconds: SecondHists::default(),
            stats: S::default(),
            errors: ErrorLog::default(),
        };
        for t in threads {
            let _ = all.hist.add(&t.hist);
            all.seconds.merge(&t.seconds);
            all.stats.add(&t.stats);
            all.errors.merge(&t.errors);
        }
        all
    }
}

/// Runs `task(ctx, shared, connect permits, unit index)` for each of the
/// thread's units and returns what they recorded once all have ended.
pub async fn run_units<S, F, Fut>(
    ctx: ThreadCtx,
    connect_concurrency: usize,
    task: F,
) -> UnitsThread<S>
where
    S: Default + 'static,
    F: Fn(Rc<ThreadCtx>, Rc<Shared<S>>, Rc<Semaphore>, usize) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let ctx = Rc::new(ctx);
    let sh = Rc::new(Shared {
        hist: RefCell::new(Hists {
            measured: report::new_histogram(),
            seconds: SecondHists::default(),
        }),
        stats: RefCell::new(S::default()),
        errors: RefCell::new(ErrorLog::default()),
    });
    let sem = Rc::new(Semaphore::new(connect_concurrency.max(1)));
    let mut set = JoinSet::new();
    for idx in ctx.units.clone() {
        set.spawn_local(task(ctx.clone(), sh.clone(), sem.clone(), idx));
    }
    while set.join_next().await.is_some() {}
    drop(set);
    let sh = Rc::try_unwrap(sh).unwrap_or_else(|_| unreachable!("all tasks joined"));
    let h = sh.hist.into_inner();
    UnitsThread {
        hist: h.measured,
        seconds: h.seconds,
        stats: sh.stats.into_inner(),
        errors: sh.errors.into_inner(),
    }
}
