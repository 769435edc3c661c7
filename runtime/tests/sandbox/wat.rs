//! Hand-written modules for what Rust guests cannot easily do: bad input to
//! the loader, and the raw `cachet.getenv` ABI at its edges.

use cachet_runtime::{LoadError, Policy, Status};

use crate::runtime;

fn module(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}

use cachet_testkit::{with_find_dev, HELLO_WAT as HELLO};

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
    // A component is loaded as preview 2; a bare header is not one, and
    // one importing an interface cachet does not provide fails to link.
    let empty = b"\0asm\x0d\x00\x01\x00";
    let e = rt.load(empty).unwrap_err();
    assert!(matches!(e, LoadError::NotCommand(_)), "{e}");
    let foreign =
        module(r#"(component (import "example:nope/thing@1.0.0" (instance (export "f" (func)))))"#);
    let e = rt.load(&foreign).unwrap_err();
    assert!(matches!(e, LoadError::Link(_)), "{e}");
    assert!(e.to_string().contains("example:nope/thing"), "{e}");
    for e in [
        rt.load(truncated).unwrap_err(),
        rt.load(&unknown).unwrap_err(),
        rt.load(&foreign).unwrap_err(),
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

/// A guest that attacks the devices (`Policy::devices`) and cachet's own
/// `fd_readdir`: rights the device drops, pointers out of bounds, a file
/// made beside the devices. Each call must fail with an errno (the guest
/// traps if one succeeds) and leave the devices' files as they were.
const DEVICE_ATTACKS: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $prestat (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_dir_name" (func $name (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_allocate" (func $allocate (param i32 i64 i64) (result i32)))
  (import "wasi_snapshot_preview1" "fd_filestat_set_size" (func $set_size (param i32 i64) (result i32)))
  (import "wasi_snapshot_preview1" "fd_readdir" (func $readdir (param i32 i32 i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  ;; 0: iovec; 16: count; 20: opened fd; 40: prestat; 64: a name;
  ;; 128: "null"; 136: "zero"; 144: "evil"; 160: "ok\n"
  (data (i32.const 128) "null")
  (data (i32.const 136) "zero")
  (data (i32.const 144) "evil")
  (data (i32.const 160) "ok\0a")
  (func $fails (param $errno i32)
    (if (i32.eqz (local.get $errno)) (then unreachable)))
  (func $open_dev (param $dev i32) (param $path i32) (param $oflags i32) (param $rights i64) (result i32)
    (call $open (local.get $dev) (i32.const 0) (local.get $path) (i32.const 4)
      (local.get $oflags) (local.get $rights) (i64.const 0) (i32.const 0) (i32.const 20)))
  ;; FIND_DEV
  (func (export "_start") (local $dev i32) (local $null i32) (local $zero i32)
    (local.set $dev (call $find_dev))
    ;; null, asking for read, write, allocate and set_size, with O_TRUNC
    (if (call $open_dev (local.get $dev) (i32.const 128) (i32.const 8) (i64.const 0x400142))
      (then unreachable))
    (local.set $null (i32.load (i32.const 20)))
    (call $fails (call $allocate (local.get $null) (i64.const 0) (i64.const 100)))
    (call $fails (call $set_size (local.get $null) (i64.const 100)))
    ;; iovecs out of bounds, and an iovec whose buffer is
    (call $fails (call $write (local.get $null) (i32.const 65532) (i32.const 1) (i32.const 16)))
    (if (call $open_dev (local.get $dev) (i32.const 136) (i32.const 0) (i64.const 2))
      (then unreachable))
    (local.set $zero (i32.load (i32.const 20)))
    (i32.store (i32.const 0) (i32.const 65530))
    (i32.store (i32.const 4) (i32.const 100))
    (call $fails (call $read (local.get $zero) (i32.const 0) (i32.const 1) (i32.const 16)))
    (call $fails (call $read (local.get $zero) (i32.const 65532) (i32.const 1) (i32.const 16)))
    (call $fails (call $read (local.get $zero) (i32.const 0) (i32.const 1) (i32.const 65534)))
    ;; a file made beside the devices, and a listing into no memory
    (call $fails (call $open_dev (local.get $dev) (i32.const 144) (i32.const 1) (i64.const 0x42)))
    (call $fails (call $readdir (local.get $dev) (i32.const 65530) (i32.const 100) (i64.const 0) (i32.const 16)))
    (call $fails (call $readdir (local.get $dev) (i32.const 256) (i32.const 100) (i64.const 0) (i32.const 65534)))
    (i32.store (i32.const 0) (i32.const 160))
    (i32.store (i32.const 4) (i32.const 3))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))
"#;

#[test]
fn devices_and_listings_refuse_hostile_calls() {
    let dir = tempfile::tempdir().unwrap();
    for name in cachet_runtime::DEVICE_FILES {
        std::fs::write(dir.path().join(name), b"").unwrap();
    }
    let m = runtime()
        .load(&module(&with_find_dev(DEVICE_ATTACKS)))
        .unwrap();
    let mut policy = Policy::new();
    policy
        .mount_read_only("dev", dir.path(), &["/dev"])
        .devices("dev");
    let outcome = runtime().run(&m, &policy).unwrap();
    assert_eq!(outcome.status, Status::Exited(0), "{:?}", outcome.status);
    assert_eq!(outcome.output, b"ok\n");
    let mut left: Vec<(String, u64)> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    left.sort();
    let want: Vec<(String, u64)> = ["null", "random", "urandom", "zero"]
        .iter()
        .map(|n| (n.to_string(), 0))
        .collect();
    assert_eq!(left, want);
}
