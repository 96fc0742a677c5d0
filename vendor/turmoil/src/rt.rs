use std::cell::Cell;
use std::future::Future;
use std::mem;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use rand::rngs::SmallRng;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio::task::LocalSet;
use tokio::time::{sleep, Duration, Instant};

use super::Result;

// To support re-creation, we need to store a factory of the future that
// represents the software. This is somewhat annoying in that it requires
// boxxing to avoid generics.
type Software<'a> = Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result>>> + 'a>;

/// Runtime kinds.
pub enum Kind<'a> {
    /// A runtime for executing test code.
    Client,

    /// A runtime that is running simulated host software.
    Host { software: Software<'a> },

    /// A runtime without any software. The network topology uses this for
    /// time tracking and message delivery.
    NoSoftware,
}

/// Runtime configuration.
#[derive(Clone, Default)]
pub struct Config {
    /// Whether io is enabled on the runtime.
    pub enable_io: bool,

    /// Rng used to seed the tokio runtime.
    ///
    /// Only used if the `tokio_unstable` cfg flag is set.
    #[cfg_attr(not(tokio_unstable), expect(dead_code))]
    pub rng: Option<SmallRng>,
}

/// Per host simulated runtime.
///
/// The tokio runtime is paused (see [`Builder::start_paused`]), which gives us
/// control over when and how to advance time. In particular, see [`Rt::tick`],
/// which lets the runtime do a bit more work.
pub struct Rt<'a> {
    pub kind: Kind<'a>,

    /// Handle to the Tokio runtime driving this simulated host. Each runtime
    /// may have a different sense of "now" which simulates clock skew.
    tokio: Runtime,

    /// Local task set used for running !Send tasks.
    local: LocalSet,

    /// A user readable name to identify the node.
    pub nodename: Arc<str>,

    /// Optional handle to a host's software. When software finishes, the handle is
    /// consumed to check for error, which is propagated up to fail the simulation.
    handle: Option<JoinHandle<Result>>,

    /// Runtime configuration.
    config: Config,

    /// Idle skipping (see [`Rt::can_idle`]): what a tick needs to know.
    idle: Idle,
}

/// What [`Rt::can_idle`] needs to tell that driving the runtime for a tick
/// would do nothing.
struct Idle {
    /// Set whenever the host's `LocalSet` is woken (a message delivered, a
    /// timer fired for one of its tasks, a task left ready by the `LocalSet`'s
    /// own budget), and when the runtime is (re)created. Cleared when a tick
    /// starts and when the `LocalSet` is about to run its ready tasks (the poll
    /// of `run_until` that ends the tick runs none, and keeps it): after a tick
    /// it says whether a task was woken that has not run since.
    woken: Arc<AtomicBool>,

    /// The runtime's clock when its last tick ended, and its earliest timer
    /// then. Only the runtime's own tasks set timers, and they run only in its
    /// ticks, so between ticks neither changes (a timer cancelled meanwhile
    /// only makes `next_timer` early, which is safe).
    #[cfg_attr(not(tokio_unstable), allow(dead_code))]
    clock: Option<Instant>,
    #[cfg_attr(not(tokio_unstable), allow(dead_code))]
    next_timer: Option<Instant>,

    /// The waker `block_on` polls a tick with (the runtime's own), and the
    /// one handed to the `LocalSet` in its place, which also sets `woken`.
    wakers: Option<(Waker, Waker)>,

    /// Simulated time the host has idled through without its runtime being
    /// driven; its clock catches up when the next tick starts.
    lag: Duration,

    /// The runtime's metrics, for its queue depths (made once per runtime:
    /// `Handle::metrics` clones the handle).
    #[cfg(tokio_unstable)]
    metrics: tokio::runtime::RuntimeMetrics,
}

impl Idle {
    fn new(_tokio: &Runtime) -> Self {
        Idle {
            woken: Arc::new(AtomicBool::new(true)),
            clock: None,
            next_timer: None,
            wakers: None,
            lag: Duration::ZERO,
            #[cfg(tokio_unstable)]
            metrics: _tokio.metrics(),
        }
    }
}

/// Sets `woken`, then wakes what `block_on` gave.
struct FlagWaker {
    woken: Arc<AtomicBool>,
    inner: Waker,
}

impl Wake for FlagWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        self.inner.wake_by_ref();
    }
}

/// Polls a tick's `run_until` with a waker that sets `woken` (so wakes of
/// the `LocalSet` are seen), leaving `block_on`'s own waker in `outer` for
/// the tick's sleep (so the end of the tick is not taken for work).
struct Watched<'w, F> {
    inner: Pin<&'w mut F>,
    idle: &'w mut Idle,
    outer: &'w Cell<Option<Waker>>,
}

impl<F: Future> Future for Watched<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let me = &mut *self;
        let flagging = match &me.idle.wakers {
            Some((outer, flagging)) if outer.will_wake(cx.waker()) => flagging.clone(),
            _ => {
                let flagging = Waker::from(Arc::new(FlagWaker {
                    woken: me.idle.woken.clone(),
                    inner: cx.waker().clone(),
                }));
                me.idle.wakers = Some((cx.waker().clone(), flagging.clone()));
                flagging
            }
        };
        me.outer.set(Some(cx.waker().clone()));
        // `run_until` runs the `LocalSet`'s ready tasks after polling the tick's
        // sleep, unless the sleep is over: a wake before this poll is then still
        // owed a run, one before a poll that runs tasks is not.
        let before = me.idle.woken.swap(false, Ordering::SeqCst);
        let polled = me.inner.as_mut().poll(&mut Context::from_waker(&flagging));
        if before && polled.is_ready() {
            me.idle.woken.store(true, Ordering::SeqCst);
        }
        polled
    }
}

impl<'a> Rt<'a> {
    pub(crate) fn client<F>(nodename: Arc<str>, client: F, mut config: Config) -> Self
    where
        F: Future<Output = Result> + 'static,
    {
        let (tokio, local) = init(&mut config);

        let handle = with(&tokio, &local, || tokio::task::spawn_local(client));
        let idle = Idle::new(&tokio);

        Self {
            kind: Kind::Client,
            tokio,
            local,
            nodename,
            handle: Some(handle),
            config,
            idle,
        }
    }

    pub(crate) fn host<F, Fut>(nodename: Arc<str>, software: F, mut config: Config) -> Self
    where
        F: Fn() -> Fut + 'a,
        Fut: Future<Output = Result> + 'static,
    {
        let (tokio, local) = init(&mut config);

        let software: Software = Box::new(move || Box::pin(software()));
        let handle = with(&tokio, &local, || tokio::task::spawn_local(software()));
        let idle = Idle::new(&tokio);

        Self {
            kind: Kind::Host { software },
            tokio,
            local,
            nodename,
            handle: Some(handle),
            config,
            idle,
        }
    }

    pub(crate) fn no_software() -> Self {
        let mut config = Config::default();
        let (tokio, local) = init(&mut config);
        let idle = Idle::new(&tokio);

        Self {
            kind: Kind::NoSoftware,
            tokio,
            local,
            nodename: String::new().into(),
            handle: None,
            config,
            idle,
        }
    }

    pub(crate) fn is_client(&self) -> bool {
        matches!(self.kind, Kind::Client)
    }

    fn is_host(&self) -> bool {
        matches!(self.kind, Kind::Host { .. })
    }

    pub(crate) fn is_software_running(&self) -> bool {
        self.handle.is_some()
    }

    /// The host's time: its runtime's clock, plus the time it has idled
    /// through without being driven (see [`Rt::idle`]).
    pub(crate) fn now(&self) -> Instant {
        // Between ticks the paused clock stands still: the one read when the
        // last tick ended is still right.
        #[cfg(tokio_unstable)]
        if let Some(clock) = self.idle.clock {
            return clock + self.idle.lag;
        }
        self.read_clock() + self.idle.lag
    }

    /// The runtime's clock, read from the runtime.
    fn read_clock(&self) -> Instant {
        let _guard = self.tokio.enter();
        Instant::now()
    }

    /// Whether driving the runtime for `duration` would do nothing at all:
    /// nothing woke its `LocalSet` since its last tick and that tick left no
    /// task of it woken, no task of the runtime's own scheduler is queued, and
    /// no timer is due before the tick would end. Such a host can [`idle`]
    /// instead: what it would see is the same, only its clock has to catch up.
    ///
    /// Without `tokio_unstable` the runtime cannot be looked into: never.
    ///
    /// [`idle`]: Rt::idle
    pub(crate) fn can_idle(&self, duration: Duration) -> bool {
        #[cfg(tokio_unstable)]
        {
            if self.idle.woken.load(Ordering::SeqCst) {
                return false;
            }
            let Some(clock) = self.idle.clock else {
                return false;
            };
            if self.idle.next_timer.is_some_and(|t| t <= clock + self.idle.lag + duration) {
                return false;
            }
            let metrics = &self.idle.metrics;
            metrics.global_queue_depth() == 0 && metrics.worker_local_queue_depth(0) == 0
        }
        #[cfg(not(tokio_unstable))]
        {
            let _ = duration;
            false
        }
    }

    /// Lets `duration` pass without driving the runtime; only valid when
    /// [`Rt::can_idle`] said so. The next [`Rt::tick`] moves the clock on by
    /// the time idled through before anything runs.
    pub(crate) fn idle(&mut self, duration: Duration) {
        self.idle.lag += duration;
    }

    // This method is called by [`Sim::run`], which iterates through all the
    // runtimes and ticks each one. The magic of this method is described in the
    // documentation for [`LocalSet::run_until`], but it may not be entirely
    // obvious how things fit together.
    //
    // A [`LocalSet`] tracks the tasks to run, which may in turn spawn more
    // tasks. `run_until` drives a top level task to completion, but not its
    // children. If you look below, you may be confused. The task we run here
    // just sleeps and has no children! However, it's the _same `LocalSet`_ that
    // is used to run software on the host.
    //
    // In this way, every time `tick` is called, the following unfolds:
    //
    // 1. Time advances on the runtime
    // 2. We schedule a new task that simply sleeps
    // 3. Other tasks on the `LocalSet` get a chance to run
    // 4. The sleep finishes
    // 5. The runtime pauses
    //
    // Returns whether the software has finished successfully or the error
    // that caused failure. Subsequent calls do not return the error as it is
    // expected to fail the simulation.
    //
    // A host that idled (see [`Rt::idle`]) first catches its clock up, before
    // anything runs: no timer was due in the time it idled through, so the
    // clock can jump. The tick's sleep is polled with `block_on`'s own waker,
    // every task wake with one that also marks the host as not idle.
    pub(crate) fn tick(&mut self, duration: Duration) -> Result<bool> {
        let lag = mem::take(&mut self.idle.lag);
        if !lag.is_zero() {
            #[cfg(tokio_unstable)]
            self.tokio.handle().advance_paused_clock(lag);
        }
        self.idle.woken.store(false, Ordering::SeqCst);
        let outer: Cell<Option<Waker>> = Cell::new(None);
        let run = pin!(self.local.run_until(async {
            let mut sleep = pin!(sleep(duration));
            std::future::poll_fn(|_| {
                let waker = outer.take().expect("tick polled outside `Watched`");
                let polled = sleep.as_mut().poll(&mut Context::from_waker(&waker));
                outer.set(Some(waker));
                polled
            })
            .await
        }));
        self.tokio.block_on(Watched {
            inner: run,
            idle: &mut self.idle,
            outer: &outer,
        });
        #[cfg(tokio_unstable)]
        {
            self.idle.clock = Some(self.read_clock());
            self.idle.next_timer = self.tokio.handle().next_timer_deadline();
        }

        // pull for software completion
        match &self.handle {
            Some(handle) if handle.is_finished() => {
                // Consume handle to extract task result
                if let Some(h) = self.handle.take() {
                    match self.tokio.block_on(h) {
                        // If the host was crashed the JoinError is cancelled, which
                        // needs to be handled to not fail the simulation.
                        Err(je) if je.is_cancelled() => {}
                        res => res??,
                    }
                };
                Ok(true)
            }
            Some(_) => Ok(false),
            None => Ok(true),
        }
    }

    pub(crate) fn crash(&mut self) {
        if !self.is_host() {
            panic!("can only crash host's software");
        }

        if self.handle.take().is_some() {
            self.cancel_tasks();
        };
    }

    pub(crate) fn bounce(&mut self) {
        if !self.is_host() {
            panic!("can only bounce host's software");
        }

        self.cancel_tasks();

        if let Kind::Host { software } = &self.kind {
            let handle = with(&self.tokio, &self.local, || {
                tokio::task::spawn_local(software())
            });
            self.handle.replace(handle);
        };
    }

    /// Cancel all tasks within the [`Rt`] by dropping the current tokio
    /// [`Runtime`].
    ///
    /// Dropping the runtime blocks the calling thread until all futures have
    /// completed, which is desired here to ensure host software completes and
    /// all resources are dropped.
    ///
    /// Both the [`Runtime`] and [`LocalSet`] are replaced with new instances.
    fn cancel_tasks(&mut self) {
        let (tokio, local) = init(&mut self.config);

        _ = mem::replace(&mut self.tokio, tokio);
        drop(mem::replace(&mut self.local, local));
        self.idle = Idle::new(&self.tokio);
    }
}

fn init(config: &mut Config) -> (Runtime, LocalSet) {
    let mut tokio_builder = tokio::runtime::Builder::new_current_thread();

    #[cfg(tokio_unstable)]
    tokio_builder.unhandled_panic(tokio::runtime::UnhandledPanic::ShutdownRuntime);

    if config.enable_io {
        tokio_builder.enable_io();
    }

    #[cfg(tokio_unstable)]
    if let Some(rng) = &mut config.rng {
        let bytes: [u8; 32] = rand::Rng::random(rng);
        let seed = tokio::runtime::RngSeed::from_bytes(&bytes);
        tokio_builder.rng_seed(seed);
    }

    let tokio = tokio_builder
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();

    tokio.block_on(async {
        // Sleep to "round" `Instant::now()` to the closest `ms`
        tokio::time::sleep(Duration::from_millis(1)).await;
    });

    (tokio, new_local())
}

fn new_local() -> LocalSet {
    #[cfg(not(tokio_unstable))]
    let local = LocalSet::new();

    #[cfg(tokio_unstable)]
    let mut local = LocalSet::new();

    #[cfg(tokio_unstable)]
    local.unhandled_panic(tokio::runtime::UnhandledPanic::ShutdownRuntime);

    local
}

fn with<R>(tokio: &Runtime, local: &LocalSet, f: impl FnOnce() -> R) -> R {
    tokio.block_on(async { local.run_until(async { f() }).await })
}
