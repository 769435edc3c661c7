//! Tiers: a module with no compiled code starts on Winch's code while
//! Cranelift compiles it in the background; a run still going when that is
//! ready starts over on it, unless something of the run escaped it.

use std::time::Duration;

use cachet_runtime::{Compiler, Policy, RunOutcome, Runtime, RuntimeConfig, Status, Tier};

/// Counts to `n` in wasm code, then exits with 0; `n` large enough that
/// it runs for a while on either compiler.
fn spinner(n: u64) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (local $i i64)
    (loop $again
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br_if $again (i64.lt_u (local.get $i) (i64.const {n}))))
    (call $exit (i32.const 0))))"#
    ))
    .unwrap()
}

fn auto() -> Runtime {
    Runtime::new(RuntimeConfig {
        tier: Tier::Auto,
        ..Default::default()
    })
    .unwrap()
}

/// Runs `bytes` under `policy` on a fresh `Tier::Auto` runtime until a run
/// starts on Winch's code (on a loaded machine, Cranelift's may be ready
/// before the run starts: then that run proves nothing, and it is tried
/// again); returns that runtime and outcome.
fn run_started_on_winch(bytes: &[u8], policy: &Policy) -> (Runtime, RunOutcome) {
    for _ in 0..10 {
        let rt = auto();
        let module = rt.load(bytes).unwrap();
        assert_eq!(
            module.compiler(),
            Compiler::Winch,
            "started at once on Winch"
        );
        let outcome = rt.run(&module, policy).unwrap();
        if outcome.compiler == Compiler::Winch || outcome.restarted {
            return (rt, outcome);
        }
    }
    panic!("Cranelift's code was ready before every one of 10 runs started");
}

#[test]
fn a_long_run_on_winch_starts_over_on_cranelift_when_it_is_ready() {
    let mut policy = Policy::new();
    policy.timeout(Duration::from_secs(120));
    let bytes = spinner(3_000_000_000);
    let (rt, outcome) = run_started_on_winch(&bytes, &policy);
    assert_eq!(outcome.status, Status::Exited(0));
    assert_eq!(outcome.compiler, Compiler::Cranelift);
    assert!(outcome.restarted, "the Winch start was given up");
    let s = rt.stats();
    assert_eq!((s.winch, s.compiled, s.upgraded), (1, 1, 1), "{s:?}");
    // Later runs start on Cranelift's code.
    assert_eq!(rt.load(&bytes).unwrap().compiler(), Compiler::Cranelift);
}

#[test]
fn a_run_that_wrote_outside_its_scratch_is_not_started_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut policy = Policy::new();
    policy
        .timeout(Duration::from_secs(120))
        .mount_read_write("out", dir.path(), &["/out"]);
    let (rt, outcome) = run_started_on_winch(&spinner(1_500_000_000), &policy);
    assert_eq!(outcome.status, Status::Exited(0));
    assert_eq!(
        (outcome.compiler, outcome.restarted),
        (Compiler::Winch, false)
    );
    rt.finish_background();
    assert_eq!(rt.stats().upgraded, 1);
}

#[test]
fn a_module_winch_cannot_compile_goes_to_cranelift() {
    // Tail calls: Cranelift only.
    let bytes = wat::parse_str(
        r#"(module
  (memory (export "memory") 1)
  (func $f (param i32) (result i32)
    (if (result i32) (i32.eqz (local.get 0))
      (then (i32.const 0))
      (else (return_call $f (i32.sub (local.get 0) (i32.const 1))))))
  (func (export "_start") (drop (call $f (i32.const 1000000)))))"#,
    )
    .unwrap();
    let rt = auto();
    let module = rt.load(&bytes).unwrap();
    assert_eq!(module.compiler(), Compiler::Cranelift);
    let outcome = rt.run(&module, &Policy::new()).unwrap();
    assert_eq!(outcome.status, Status::Exited(0));
    assert_eq!(rt.stats().winch, 0);
    let winch = Runtime::new(RuntimeConfig {
        tier: Tier::Winch,
        ..Default::default()
    })
    .unwrap();
    assert!(winch.load(&bytes).is_err(), "Winch alone refuses it");
}

#[test]
fn without_epoch_checks_auto_is_cranelift() {
    let rt = Runtime::new(RuntimeConfig {
        tier: Tier::Auto,
        uninterruptible: true,
        ..Default::default()
    })
    .unwrap();
    let module = rt.load(&spinner(10)).unwrap();
    assert_eq!(module.compiler(), Compiler::Cranelift);
}
