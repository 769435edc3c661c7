//! The preview 2 linker: wasmtime-wasi's hosts, then cachet's over them;
//! and the hosts small enough to live here (`exit`, the environment,
//! socket creation).

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime::{StoreContextMut, WasmBacktrace};
use wasmtime_wasi::cli::{WasiCliCtxView, WasiCliView};
use wasmtime_wasi::p2::bindings::cli::environment;
use wasmtime_wasi::p2::bindings::clocks::{monotonic_clock, wall_clock};
use wasmtime_wasi::p2::bindings::random::{insecure, insecure_seed, random};
use wasmtime_wasi::p2::bindings::sockets::{network, tcp_create_socket};
use wasmtime_wasi::p2::bindings::sync::filesystem::{preopens, types as fs};
use wasmtime_wasi::p2::bindings::sync::io::poll;
use wasmtime_wasi::p2::bindings::sync::io::streams;
use wasmtime_wasi::p2::bindings::sync::sockets::udp_create_socket;
use wasmtime_wasi::p2::SocketResult;
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::WasiView;

use crate::recorder::Recorder;
use crate::state::RunState;

use super::clocks::{clocks, polls, Clocks, Poll};
use super::filesystem::{files, Files};
use super::random::{randomness, Random};
use super::streams::{streams_of, Streams};

/// `wasi:cli/exit` as wasmtime-wasi 48 defines it (its WIT's version; a
/// component importing any 0.2 version links to it).
const CLI_EXIT: &str = "wasi:cli/exit@0.2.12";

/// Adds WASI 0.2 with cachet's recording hosts over the stock ones.
pub(crate) fn add_to_linker(linker: &mut Linker<RunState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    fs::add_to_linker::<RunState, Files>(linker, files)?;
    preopens::add_to_linker::<RunState, Files>(linker, files)?;
    environment::add_to_linker::<RunState, Env>(linker, env)?;
    wall_clock::add_to_linker::<RunState, Clocks>(linker, clocks)?;
    monotonic_clock::add_to_linker::<RunState, Clocks>(linker, clocks)?;
    random::add_to_linker::<RunState, Random>(linker, randomness)?;
    insecure::add_to_linker::<RunState, Random>(linker, randomness)?;
    insecure_seed::add_to_linker::<RunState, Random>(linker, randomness)?;
    poll::add_to_linker::<RunState, Poll>(linker, polls)?;
    // `exit` carries no code in WASI 0.2, only success or failure: the
    // frames of a failing exit say who called it (libtest's child mode
    // passing, or a test calling `process::exit`; `libtest_child.rs`).
    linker.instance(CLI_EXIT)?.func_wrap(
        "exit",
        |mut store: StoreContextMut<'_, RunState>, (status,): (Result<(), ()>,)| {
            let code = match status {
                Ok(()) => 0,
                Err(()) => {
                    let trace = WasmBacktrace::force_capture(&store);
                    store.data_mut().exit_trace = Some(trace);
                    1
                }
            };
            Err::<(), _>(wasmtime::Error::new(I32Exit(code)))
        },
    )?;
    streams::add_to_linker::<RunState, Streams>(linker, streams_of)?;
    // No sockets: creating one is refused before the host makes one (the
    // stock host would open a host socket, refusing only its addresses,
    // and a guest could hold thousands). Name lookups stay the stock
    // host's, which a `WasiCtxBuilder` allows only when asked; cachet never
    // asks.
    tcp_create_socket::add_to_linker::<RunState, NoSockets>(linker, no_sockets)?;
    udp_create_socket::add_to_linker::<RunState, NoSockets>(linker, no_sockets)?;
    Ok(())
}

/// The host of `wasi:sockets/*-create-socket`: every socket is refused.
/// (It holds the table for what the interfaces' `network` types need.)
struct NoSockets<'a>(&'a mut ResourceTable);

impl HasData for NoSockets<'static> {
    type Data<'a> = NoSockets<'a>;
}

fn no_sockets(st: &mut RunState) -> NoSockets<'_> {
    NoSockets(st.wasi.ctx().table)
}

impl network::Host for NoSockets<'_> {
    fn convert_error_code(
        &mut self,
        e: wasmtime_wasi::p2::SocketError,
    ) -> wasmtime::Result<network::ErrorCode> {
        e.downcast()
    }

    fn network_error_code(
        &mut self,
        e: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<network::ErrorCode>> {
        let e = self.0.get(&e)?;
        Ok(e.downcast_ref::<std::io::Error>()
            .map(network::ErrorCode::from))
    }
}

impl network::HostNetwork for NoSockets<'_> {
    fn drop(&mut self, network: Resource<network::Network>) -> wasmtime::Result<()> {
        self.0.delete(network)?;
        Ok(())
    }
}

impl tcp_create_socket::Host for NoSockets<'_> {
    fn create_tcp_socket(
        &mut self,
        _: network::IpAddressFamily,
    ) -> SocketResult<Resource<wasmtime_wasi::p2::TcpSocket>> {
        Err(network::ErrorCode::AccessDenied.into())
    }
}

impl udp_create_socket::Host for NoSockets<'_> {
    fn create_udp_socket(
        &mut self,
        _: network::IpAddressFamily,
    ) -> SocketResult<Resource<wasmtime_wasi::p2::UdpSocket>> {
        Err(network::ErrorCode::AccessDenied.into())
    }
}

/// `wasi:cli/environment`: the whole environment is one input, `environ`,
/// as preview 1's `environ_get` (`cachet.getenv` has no preview 2 import).
struct Env<'a> {
    cli: WasiCliCtxView<'a>,
    recorder: &'a mut Recorder,
}

impl HasData for Env<'static> {
    type Data<'a> = Env<'a>;
}

fn env(st: &mut RunState) -> Env<'_> {
    Env {
        cli: st.wasi.cli(),
        recorder: &mut st.recorder,
    }
}

impl environment::Host for Env<'_> {
    fn get_environment(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        self.recorder.environ();
        environment::Host::get_environment(&mut self.cli)
    }

    fn get_arguments(&mut self) -> wasmtime::Result<Vec<String>> {
        environment::Host::get_arguments(&mut self.cli)
    }

    fn initial_cwd(&mut self) -> wasmtime::Result<Option<String>> {
        environment::Host::initial_cwd(&mut self.cli)
    }
}
