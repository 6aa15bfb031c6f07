//! The CPU engine's crew: helper threads that join a call's items while the calling thread
//! works on them too, for calls of a few hundred µs (a 20 ms chunk's LRR product) where
//! handing the whole call to the worker pool and parking the caller costs more than it
//! saves on a virtual machine (a sleeping thread takes tens of µs to wake).
//!
//! A call posts its job (the item function, the item count, a shared counter) in the crew's
//! one slot and takes items from the counter at once; each helper that is awake, or wakes,
//! joins and takes items too; the caller then withdraws the job and waits for the helpers
//! still inside it, so nothing of the call outlives it. A helper that finishes a job looks
//! for the next one for [`SPIN`] before it sleeps. Nothing is allocated per call. A call that
//! finds the slot taken (another thread's call) runs alone on its own thread.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::engine::worker_threads;

/// How long a helper keeps looking for the next job before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

/// A posted call: `f(i)` for each `i < n` taken from `next`.
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync + 'static),
    n: usize,
    next: *const AtomicUsize,
    panicked: *const Panicked,
    epoch: u64,
}

/// The payload of a panic in an item run on a helper, re-raised on the caller.
type Panicked = Mutex<Option<Box<dyn Any + Send>>>;

// SAFETY: a helper dereferences a job's pointers only between joining it (under the slot's
// lock, while the job is posted, counted in `Crew::active`) and leaving it (`active` back
// down, with release ordering); the caller that owns the pointees withdraws the job under
// the lock and waits for `active` to reach zero (acquire) before they go out of scope.
unsafe impl Send for Job {}

struct Slot {
    job: Option<Job>,
    sleepers: usize,
}

struct Crew {
    slot: Mutex<Slot>,
    wake: Condvar,
    /// Bumped (under the lock) each time a job is posted; helpers spin on it.
    epoch: AtomicU64,
    /// Helpers inside the posted job.
    active: AtomicUsize,
}

/// The crew ([`worker_threads`] − 1 helpers, started on first use), or `None` with one
/// worker thread or when no helper could be started.
fn crew() -> Option<&'static Crew> {
    static CREW: OnceLock<Option<&'static Crew>> = OnceLock::new();
    *CREW.get_or_init(|| {
        let helpers = worker_threads().saturating_sub(1);
        if helpers == 0 {
            return None;
        }
        let crew: &'static Crew = Box::leak(Box::new(Crew {
            slot: Mutex::new(Slot {
                job: None,
                sleepers: 0,
            }),
            wake: Condvar::new(),
            epoch: AtomicU64::new(0),
            active: AtomicUsize::new(0),
        }));
        let started = (0..helpers)
            .filter(|i| {
                std::thread::Builder::new()
                    .name(format!("neurokernels-crew-{i}"))
                    .spawn(move || crew.serve())
                    .is_ok()
            })
            .count();
        (started > 0).then_some(crew)
    })
}

/// Takes items from `next` until none are left.
fn run_items(f: &(dyn Fn(usize) + Sync), n: usize, next: &AtomicUsize) {
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        f(i);
    }
}

/// `f(i)` for every `i < n`, each exactly once, on the calling thread and the crew's
/// helpers; returns when all are done. Runs on the calling thread alone for `n < 2`, with
/// one worker thread, or while another thread's call holds the crew.
pub(crate) fn crew_for(n: usize, f: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    let panicked = Mutex::new(None);
    let f: &(dyn Fn(usize) + Sync) = &f;
    let posted = match crew() {
        Some(crew) if n > 1 => crew.post(f, n, &next, &panicked),
        _ => None,
    };
    run_items(f, n, &next);
    drop(posted);
}

/// `f(0), …, f(n − 1)` in order, computed by [`crew_for`] (the calling thread and the crew's
/// helpers). Allocates the `n` results.
pub(crate) fn crew_map<R: Send>(n: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let slots: Vec<Mutex<Option<R>>> = (0..n).map(|_| Mutex::new(None)).collect();
    crew_for(n, |i| {
        let r = f(i);
        if let Ok(mut s) = slots[i].lock() {
            *s = Some(r);
        }
    });
    // `crew_for` ran every item exactly once before it returned.
    slots
        .into_iter()
        .filter_map(|s| s.into_inner().ok().flatten())
        .collect()
}

/// A posted job: dropping it (also while unwinding) withdraws the job and waits for the
/// helpers inside it.
struct Posted<'a> {
    crew: &'a Crew,
    epoch: u64,
    panicked: &'a Panicked,
}

impl Drop for Posted<'_> {
    fn drop(&mut self) {
        let mut g = self.crew.lock();
        if g.job.is_some_and(|j| j.epoch == self.epoch) {
            g.job = None;
        }
        drop(g);
        let mut spins = 0u32;
        while self.crew.active.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < 1 << 12 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if std::thread::panicking() {
            return;
        }
        let payload = self.panicked.lock().ok().and_then(|mut p| p.take());
        if let Some(payload) = payload {
            std::panic::resume_unwind(payload);
        }
    }
}

impl Crew {
    /// The slot (no code panics while holding it; a poisoned lock is taken as it is).
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Posts `f` over `n` items if the slot is free and no helper is still inside an
    /// earlier job.
    fn post<'a>(
        &'a self,
        f: &(dyn Fn(usize) + Sync),
        n: usize,
        next: &AtomicUsize,
        panicked: &'a Panicked,
    ) -> Option<Posted<'a>> {
        let mut g = self.lock();
        if g.job.is_some() || self.active.load(Ordering::Acquire) != 0 {
            return None;
        }
        let epoch = self.epoch.load(Ordering::Relaxed) + 1;
        // SAFETY: only the trait object's lifetime changes; the `Posted` returned here
        // withdraws the job and waits for every helper to leave it before `f` goes (see
        // `Job`).
        let f: *const (dyn Fn(usize) + Sync + 'static) =
            unsafe { std::mem::transmute(f as *const (dyn Fn(usize) + Sync + '_)) };
        g.job = Some(Job {
            f,
            n,
            next,
            panicked,
            epoch,
        });
        self.epoch.store(epoch, Ordering::Release);
        let sleepers = g.sleepers;
        drop(g);
        if sleepers > 0 {
            self.wake.notify_all();
        }
        Some(Posted {
            crew: self,
            epoch,
            panicked,
        })
    }

    /// A helper's loop: join each new job, run its items, leave it.
    fn serve(&self) {
        let mut seen = 0;
        loop {
            let job = self.next_job(&mut seen);
            // SAFETY: joined and not yet left (see `Job`).
            let f = unsafe { &*job.f };
            let next = unsafe { &*job.next };
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| run_items(f, job.n, next))) {
                // SAFETY: as above.
                if let Ok(mut p) = unsafe { &*job.panicked }.lock() {
                    p.get_or_insert(payload);
                }
            }
            self.active.fetch_sub(1, Ordering::Release);
        }
    }

    /// Joins the posted job if it is newer than `seen`.
    fn join(&self, g: &mut Slot, seen: &mut u64) -> Option<Job> {
        let job = g.job.filter(|j| j.epoch != *seen)?;
        *seen = job.epoch;
        self.active.fetch_add(1, Ordering::Relaxed);
        Some(job)
    }

    /// Waits for a job newer than `seen` and joins it: spins on the epoch for [`SPIN`],
    /// then sleeps until a post wakes it.
    fn next_job(&self, seen: &mut u64) -> Job {
        let until = Instant::now() + SPIN;
        let mut polls = 0u32;
        loop {
            if self.epoch.load(Ordering::Acquire) != *seen {
                let mut g = self.lock();
                if let Some(job) = self.join(&mut g, seen) {
                    return job;
                }
                // That job came and went.
                *seen = self.epoch.load(Ordering::Relaxed);
            }
            polls += 1;
            if !polls.is_multiple_of(64) || Instant::now() < until {
                std::hint::spin_loop();
                continue;
            }
            let mut g = self.lock();
            loop {
                if let Some(job) = self.join(&mut g, seen) {
                    return job;
                }
                g.sleepers += 1;
                g = self.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                g.sleepers -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item runs exactly once, calls from several threads at once included.
    #[test]
    fn every_item_runs_once() {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    for round in 0..300 {
                        let n = (t * 7 + round) % 40;
                        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                        crew_for(n, |i| {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                            if i % 5 == 0 {
                                std::thread::sleep(Duration::from_micros(20));
                            }
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
    }

    /// `crew_map` returns every result in item order.
    #[test]
    fn map_keeps_item_order() {
        for n in [0, 1, 2, 7, 33] {
            let got = crew_map(n, |i| i * i + 1);
            assert_eq!(got, (0..n).map(|i| i * i + 1).collect::<Vec<_>>());
        }
    }

    /// An item that panics on a helper or on the caller makes the call panic (the helper's
    /// payload re-raised on the caller), and the crew serves the next call.
    #[test]
    fn a_panicking_item_panics_the_call() {
        for _ in 0..20 {
            let r = catch_unwind(|| {
                crew_for(8, |i| {
                    if i == 3 {
                        panic!("item 3");
                    }
                    std::thread::sleep(Duration::from_micros(50));
                })
            });
            assert!(r.is_err());
        }
        let done = AtomicUsize::new(0);
        crew_for(16, |_| {
            done.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(done.load(Ordering::Relaxed), 16);
    }
}
