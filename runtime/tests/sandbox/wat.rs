//! Hand-written modules for what Rust guests cannot easily do: bad input to
//! the loader, and the raw `cachet.getenv` ABI at its edges.

use cachet_runtime::{LoadError, Policy, Status};

use crate::runtime;

fn module(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}

use cachet_testkit::HELLO_WAT as HELLO;

#[test]
fn a_trivial_command_runs_and_writes() {
    let m = runtime().load(&module(HELLO)).unwrap();
    let outcome = runtime().run(&m, &Policy::new()).unwrap();
    assert_eq!(outcome.status, Status::Exited(0));
    assert_eq!(outcome.output, b"ok\n");
    assert!(outcome.log.entries.is_empty());
}

#[test]
fn bad_modules_are_one_line_load_errors() {
    let rt = runtime();
    assert!(matches!(
        rt.load(b"not wasm at all"),
        Err(LoadError::NotWasm)
    ));
    let truncated = &module(HELLO)[..40];
    let e = rt.load(truncated).unwrap_err();
    assert!(matches!(e, LoadError::Compile(_)), "{e}");
    let unknown = module(
        r#"(module (import "env" "nope" (func)) (memory (export "memory") 1) (func (export "_start")))"#,
    );
    let e = rt.load(&unknown).unwrap_err();
    assert!(matches!(e, LoadError::Link(_)), "{e}");
    assert!(e.to_string().contains("env::nope"), "{e}");
    let component = b"\0asm\x0d\x00\x01\x00";
    assert!(matches!(rt.load(component), Err(LoadError::Component)));
    for e in [
        rt.load(truncated).unwrap_err(),
        rt.load(&unknown).unwrap_err(),
    ] {
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}

#[test]
fn a_module_without_start_is_invalid_not_a_crash() {
    let m = runtime()
        .load(&module(r#"(module (memory (export "memory") 1))"#))
        .unwrap();
    let outcome = runtime().run(&m, &Policy::new()).unwrap();
    assert!(
        matches!(outcome.status, Status::Invalid(ref r) if r.contains("_start")),
        "{:?}",
        outcome.status
    );
}

/// Calls getenv(name="GREETING", buf=64, len) and exits with the result,
/// after storing the value at 64.
fn getenv_module(name_ptr: i64, buf_ptr: i64, buf_len: i64) -> Vec<u8> {
    module(&format!(
        r#"(module
  (import "cachet" "getenv" (func $getenv (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "GREETING")
  (func (export "_start")
    (call $exit (i32.add (i32.const 10) (call $getenv (i32.const {name_ptr}) (i32.const 8) (i32.const {buf_ptr}) (i32.const {buf_len}))))))"#
    ))
}

#[test]
fn getenv_abi_edges() {
    let mut policy = Policy::new();
    policy.env("GREETING", "hello");
    let run =
        |bytes: Vec<u8>, p: &Policy| runtime().run(&runtime().load(&bytes).unwrap(), p).unwrap();
    // Value fits: returns its length (exit 10 + 5).
    let ok = run(getenv_module(0, 64, 64), &policy);
    assert_eq!(ok.status, Status::Exited(15));
    assert_eq!(
        ok.log.render().lines().nth(1),
        Some(
            format!(
                "env GREETING {}",
                cachet_runtime::Sha256Digest::of(b"hello")
            )
            .as_str()
        )
    );
    // Buffer too small: still the full length, so the guest can retry.
    assert_eq!(
        run(getenv_module(0, 64, 2), &policy).status,
        Status::Exited(15)
    );
    // Unset: -1.
    let unset = run(getenv_module(0, 64, 64), &Policy::new());
    assert_eq!(unset.status, Status::Exited(9));
    assert_eq!(
        unset.log.render().lines().nth(1),
        Some("env GREETING unset")
    );
    // Buffer out of bounds: -2, no host panic.
    assert_eq!(
        run(getenv_module(0, 65534, 64), &policy).status,
        Status::Exited(8)
    );
    // Name out of bounds: -2.
    assert_eq!(
        run(getenv_module(70000, 64, 64), &policy).status,
        Status::Exited(8)
    );
}
