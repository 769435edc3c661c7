//! `wasi:clocks` (`uses clock`, the virtual clock under `--hermetic`) and
//! `wasi:io/poll` (a waiting guest stops at its deadline or Ctrl-C).

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{HasData, Resource, ResourceTable};
use wasmtime::Trap;
use wasmtime_wasi::clocks::{WasiClocksCtxView, WasiClocksView};
use wasmtime_wasi::p2::bindings::clocks::{monotonic_clock, wall_clock};
use wasmtime_wasi::p2::bindings::io::poll as async_poll;
use wasmtime_wasi::p2::bindings::sync::io::poll;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::runtime::in_tokio;
use wasmtime_wasi::WasiView;

use crate::clock::{GuestClock, Interrupt, Stop, HERMETIC_TICK_NS};
use crate::log::Fact;
use crate::recorder::Recorder;
use crate::state::RunState;

/// `wasi:clocks`: `uses clock`, and the virtual clock under `--hermetic`.
pub(super) struct Clocks<'a> {
    view: WasiClocksCtxView<'a>,
    recorder: &'a mut Recorder,
    clock: &'a mut GuestClock,
    interrupt: &'a Interrupt,
}

impl HasData for Clocks<'static> {
    type Data<'a> = Clocks<'a>;
}

pub(super) fn clocks(st: &mut RunState) -> Clocks<'_> {
    Clocks {
        view: st.wasi.clocks(),
        recorder: &mut st.recorder,
        clock: &mut st.clock,
        interrupt: &st.interrupt,
    }
}

/// WASI clock ids of `GuestClock::read_virtual`.
const REALTIME: u32 = 0;
const MONOTONIC: u32 = 1;

impl Clocks<'_> {
    /// Lets `ns` of virtual time pass, and gives a pollable ready at once.
    fn virtual_sleep(&mut self, ns: u64) -> wasmtime::Result<Resource<DynPollable>> {
        if let Err(stop) = self.clock.sleep(ns, self.interrupt, None) {
            debug_assert_eq!(stop, Stop::Interrupted);
            return Err(wasmtime::Error::new(Trap::Interrupt));
        }
        monotonic_clock::Host::subscribe_duration(&mut self.view, 0)
    }
}

impl wall_clock::Host for Clocks<'_> {
    fn now(&mut self) -> wasmtime::Result<wall_clock::Datetime> {
        self.recorder.uses(Fact::Clock);
        match self.clock.read_virtual(REALTIME) {
            Some(ns) => Ok(wall_clock::Datetime {
                seconds: ns / 1_000_000_000,
                nanoseconds: (ns % 1_000_000_000) as u32,
            }),
            None => wall_clock::Host::now(&mut self.view),
        }
    }

    fn resolution(&mut self) -> wasmtime::Result<wall_clock::Datetime> {
        self.recorder.uses(Fact::Clock);
        match self.clock.is_virtual() {
            true => Ok(wall_clock::Datetime {
                seconds: 0,
                nanoseconds: HERMETIC_TICK_NS as u32,
            }),
            false => wall_clock::Host::resolution(&mut self.view),
        }
    }
}

impl monotonic_clock::Host for Clocks<'_> {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        self.recorder.uses(Fact::Clock);
        match self.clock.read_virtual(MONOTONIC) {
            Some(ns) => Ok(ns),
            None => monotonic_clock::Host::now(&mut self.view),
        }
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        self.recorder.uses(Fact::Clock);
        match self.clock.is_virtual() {
            true => Ok(HERMETIC_TICK_NS),
            false => monotonic_clock::Host::resolution(&mut self.view),
        }
    }

    fn subscribe_instant(
        &mut self,
        when: monotonic_clock::Instant,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.recorder.uses(Fact::Clock);
        match self.clock.now_virtual(MONOTONIC) {
            Some(now) => self.virtual_sleep(when.saturating_sub(now)),
            None => monotonic_clock::Host::subscribe_instant(&mut self.view, when),
        }
    }

    fn subscribe_duration(
        &mut self,
        ns: monotonic_clock::Duration,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.recorder.uses(Fact::Clock);
        match self.clock.is_virtual() {
            true => self.virtual_sleep(ns),
            false => monotonic_clock::Host::subscribe_duration(&mut self.view, ns),
        }
    }
}

/// `wasi:io/poll`: a guest blocked in `poll` or `block` (a sleep, a wait
/// on stdin) stops at its deadline or on Ctrl-C, as in preview 1's
/// `poll_oneoff`: wasm code is stopped by epochs, a host call by itself.
pub(super) struct Poll<'a> {
    table: &'a mut ResourceTable,
    interrupt: Arc<Interrupt>,
    deadline: Option<Instant>,
    stop: &'a mut Option<Stop>,
}

impl HasData for Poll<'static> {
    type Data<'a> = Poll<'a>;
}

pub(super) fn polls(st: &mut RunState) -> Poll<'_> {
    Poll {
        table: st.wasi.ctx().table,
        interrupt: st.interrupt.clone(),
        deadline: st.deadline,
        stop: &mut st.stop,
    }
}

/// How often a blocked guest's deadline and Ctrl-C are checked.
const POLL_CHECK: std::time::Duration = std::time::Duration::from_millis(10);

impl Poll<'_> {
    /// Runs `wait` until it ends or the run must stop.
    fn until_stopped<R>(
        interrupt: &Interrupt,
        deadline: Option<Instant>,
        stop: &mut Option<Stop>,
        wait: impl std::future::Future<Output = wasmtime::Result<R>>,
    ) -> wasmtime::Result<R> {
        let stopped = in_tokio(async {
            tokio::pin!(wait);
            loop {
                if let Some(s) = interrupt.check(deadline) {
                    return Err(s);
                }
                if let Ok(done) = tokio::time::timeout(POLL_CHECK, &mut wait).await {
                    return Ok(done);
                }
            }
        });
        match stopped {
            Ok(done) => done,
            Err(s) => {
                *stop = Some(s);
                Err(wasmtime::Error::new(Trap::Interrupt))
            }
        }
    }
}

impl poll::Host for Poll<'_> {
    fn poll(&mut self, list: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        let Poll {
            table,
            interrupt,
            deadline,
            stop,
        } = self;
        Self::until_stopped(
            interrupt,
            *deadline,
            stop,
            async_poll::Host::poll(*table, list),
        )
    }
}

impl poll::HostPollable for Poll<'_> {
    fn ready(&mut self, p: Resource<DynPollable>) -> wasmtime::Result<bool> {
        poll::HostPollable::ready(self.table, p)
    }

    fn block(&mut self, p: Resource<DynPollable>) -> wasmtime::Result<()> {
        let Poll {
            table,
            interrupt,
            deadline,
            stop,
        } = self;
        Self::until_stopped(
            interrupt,
            *deadline,
            stop,
            async_poll::HostPollable::block(*table, p),
        )
    }

    fn drop(&mut self, p: Resource<DynPollable>) -> wasmtime::Result<()> {
        poll::HostPollable::drop(self.table, p)
    }
}
