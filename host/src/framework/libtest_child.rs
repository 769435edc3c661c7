//! Rust's libtest in its child mode. A test binary built with
//! `-Zpanic-abort-tests` (cachet builds the cargo packages it runs so) runs
//! one test when `__RUST_TEST_INVOKE` names it: libtest's own panic hook
//! and `#[should_panic(expected = "...")]` check judge it, and it exits 50
//! when the test passed, or prints libtest's message ("test did not panic
//! as expected") and aborts. It is how libtest itself runs tests under
//! `panic = "abort"` (the parent spawns one child per test), and the only
//! way a `#[should_panic]` test runs on wasm, where a panic cannot be
//! caught. cachet runs one instance per case anyway, so it is the parent.
//!
//! Listing, `cachet exec`'s invocations and the native report are
//! libtest's; only how a case runs and what its outcome means differ.

use cachet_runtime::{RunOutcome, Status, Wasi};

use super::invocation::{Invocation, Native};
use super::libtest::{Libtest, LibtestNative};
use super::{contains, stop_reason, CaseOutput, Framework, Harness};
use super::{CaseResult, Verdict};

pub struct LibtestChild;

/// The variable that names the one test a child runs (libtest's
/// `SECONDARY_TEST_INVOKER_VAR`).
const INVOKE: &str = "__RUST_TEST_INVOKE";

/// A child's exit status when its test passed (libtest's `TR_OK`).
const TR_OK: i32 = 50;

/// Lines libtest prints for a test it failed without a panic of its own.
const LIBTEST_VERDICTS: [&str; 3] = [
    "test did not panic as expected",
    "panic did not contain expected string",
    "expected panic with string value",
];

impl Harness for LibtestChild {
    fn name(&self) -> &'static str {
        "libtest-child"
    }

    /// A libtest binary that can run in child mode: `test_main_static_abort`
    /// (linked only with `-Zpanic-abort-tests`) carries its own messages.
    fn detect(&self, module: &[u8]) -> bool {
        Libtest.detect(module) && contains(module, b"couldn't find a test with the provided name")
    }

    fn list_args(&self) -> Option<Vec<String>> {
        Libtest.list_args()
    }

    fn ignored_list_args(&self) -> Option<Vec<String>> {
        Libtest.ignored_list_args()
    }

    fn parse_list(&self, output: &str) -> Vec<String> {
        Libtest.parse_list(output)
    }

    fn case_env(&self, cases: &[String]) -> Vec<(String, String)> {
        cases
            .first()
            .map(|c| vec![(INVOKE.to_string(), c.clone())])
            .unwrap_or_default()
    }

    fn one_case_per_instance(&self) -> bool {
        true
    }

    /// A child prints only what its test prints (and libtest's message).
    fn case_output(&self, _case: &str, raw: &str) -> CaseOutput {
        CaseOutput {
            body: raw.trim_matches('\n').to_string(),
            skipped: false,
        }
    }

    /// Exit 50 passes; another exit fails, as libtest's parent fails it
    /// ("got unexpected return code"); an abort fails with libtest's own message,
    /// or, for a panic inside `catch_unwind`, with why it could not be
    /// caught.
    fn case_result(&self, name: &str, outcome: &RunOutcome, raw: &str) -> CaseResult {
        let body = self.case_output(name, raw).body;
        let (timed_out, mut reason) = stop_reason(&outcome.status, raw);
        let verdict = match &outcome.status {
            Status::Exited(TR_OK) => {
                reason = None;
                Verdict::Pass
            }
            // WASI 0.2's `exit` carries success or failure, not a code:
            // libtest's exit 50 arrives as failure, status 1, as does a
            // test's own `process::exit(3)`. Who called exit tells them
            // apart (libtest's failures abort: a trap).
            Status::Exited(1)
                if outcome.wasi == Wasi::P2 && libtest_exited(&outcome.exit_frames) =>
            {
                reason = None;
                Verdict::Pass
            }
            Status::Exited(1) if outcome.wasi == Wasi::P2 => {
                reason = Some(format!(
                    "the test exited with failure, from {} (a preview 2 exit carries no status code: a test libtest runs alone ends with libtest's own exit when it passes)",
                    exit_caller(&outcome.exit_frames).unwrap_or("an unnamed function")
                ));
                Verdict::Fail
            }
            Status::Exited(code) => {
                reason = Some(format!(
                    "exit status {code} (a test libtest runs alone exits {TR_OK} when it passes: did it call process::exit?)"
                ));
                Verdict::Fail
            }
            Status::Trapped { catch_unwind, .. } => {
                if *catch_unwind {
                    reason = Some(
                        "the test panicked inside catch_unwind, which needs unwinding: panics abort on wasm32-wasip1 and wasm32-wasip2, so it cannot catch them there".into(),
                    );
                } else if LIBTEST_VERDICTS.iter().any(|m| raw.contains(m)) {
                    reason = None;
                }
                Verdict::Fail
            }
            _ => Verdict::Fail,
        };
        CaseResult {
            timed_out,
            reason,
            ..CaseResult::new(
                name,
                Framework::LibtestChild,
                verdict,
                outcome.elapsed,
                body,
            )
        }
    }

    fn invocation(&self, args: &[String]) -> Option<Invocation> {
        Libtest.invocation(args)
    }

    fn native(&self) -> Option<&'static dyn Native> {
        Some(&LibtestNative)
    }
}

/// The function that called `std::process::exit`, by a failing exit's
/// innermost frames (`RunOutcome::exit_frames`).
fn exit_caller(frames: &[String]) -> Option<&str> {
    let exit = frames.iter().rposition(|f| f == "std::process::exit")?;
    frames.get(exit + 1).map(String::as_str)
}

/// Whether a failing preview 2 exit is libtest's own exit of a passing
/// child (`process::exit(TR_OK)` in `run_test_in_spawned_subprocess`).
/// A module without function names cannot say: its exit is taken as
/// libtest's (docs/design/sandbox.md, "Preview 2").
fn libtest_exited(frames: &[String]) -> bool {
    let named = frames.iter().any(|f| !f.starts_with("wasm function "));
    match exit_caller(frames) {
        Some(caller) => caller.starts_with("test::run_test_in_spawned_subprocess"),
        None => !named,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cachet_runtime::InputLog;
    use std::time::Duration;

    fn outcome(status: Status) -> RunOutcome {
        outcome_of(status, Wasi::P1)
    }

    fn outcome_of(status: Status, wasi: Wasi) -> RunOutcome {
        RunOutcome {
            status,
            output: Vec::new(),
            elapsed: Duration::ZERO,
            log: InputLog::default(),
            changed_during_run: None,
            cleanup_error: None,
            collected: None,
            compiler: cachet_runtime::Compiler::Cranelift,
            restarted: false,
            wasi,
            exit_frames: Vec::new(),
        }
    }

    fn trapped(catch_unwind: bool) -> Status {
        Status::Trapped {
            message: "wasm `unreachable` instruction executed".into(),
            frames: vec!["abort".into()],
            catch_unwind,
        }
    }

    #[test]
    fn exit_50_passes_and_libtest_explains_its_own_failures() {
        let pass = LibtestChild.case_result("t", &outcome(Status::Exited(TR_OK)), "hi\n");
        assert_eq!((pass.verdict, pass.output.as_str()), (Verdict::Pass, "hi"));
        assert!(pass.reason.is_none());
        let zero = LibtestChild.case_result("t", &outcome(Status::Exited(0)), "");
        assert_eq!(zero.verdict, Verdict::Fail);
        assert!(zero.reason.unwrap().starts_with("exit status 0 ("));
        let no_panic = "test did not panic as expected at src/lib.rs:3:5\n";
        let r = LibtestChild.case_result("t", &outcome(trapped(false)), no_panic);
        assert_eq!(r.verdict, Verdict::Fail);
        assert!(r.reason.is_none(), "libtest's line says it all");
        let r = LibtestChild.case_result("t", &outcome(trapped(false)), "");
        assert!(r.reason.unwrap().contains("unreachable"), "a bare trap");
        let r = LibtestChild.case_result("t", &outcome(trapped(true)), "panicked at x\n");
        assert!(r.reason.unwrap().contains("catch_unwind"));
    }

    fn exited_from(caller: &str) -> RunOutcome {
        let mut o = outcome_of(Status::Exited(1), Wasi::P2);
        o.exit_frames = [
            "exit_exit",
            "_Exit",
            "exit",
            "std::sys::exit::exit",
            "std::process::exit",
            caller,
            "test::run_test_in_spawned_subprocess",
        ]
        .map(String::from)
        .to_vec();
        o
    }

    #[test]
    fn under_preview_2_status_1_is_the_exit_50_of_a_pass_when_libtest_called_exit() {
        let libtest = exited_from("test::run_test_in_spawned_subprocess::{closure#0}");
        let pass = LibtestChild.case_result("t", &libtest, "");
        assert_eq!(pass.verdict, Verdict::Pass);
        let own = LibtestChild.case_result("t", &exited_from("pkg::exits_nonzero"), "");
        assert_eq!(own.verdict, Verdict::Fail);
        assert!(own.reason.unwrap().contains("from pkg::exits_nonzero"));
        let fail = LibtestChild.case_result("t", &outcome_of(Status::Exited(1), Wasi::P1), "");
        assert_eq!(fail.verdict, Verdict::Fail);
        let abort = LibtestChild.case_result("t", &outcome_of(trapped(false), Wasi::P2), "");
        assert_eq!(abort.verdict, Verdict::Fail);
    }

    #[test]
    fn the_child_is_named_by_its_variable() {
        assert_eq!(
            LibtestChild.case_env(&["a::b".into()]),
            [(INVOKE.to_string(), "a::b".to_string())]
        );
        let both = b"RUST_TEST_THREADS --format couldn't find a test with the provided name";
        assert_eq!(Framework::detect(both), Framework::LibtestChild);
        assert_eq!(
            Framework::chosen(Some(Framework::Libtest), Framework::LibtestChild),
            Framework::LibtestChild
        );
    }
}
