//! Hand-written hostile modules (`fixtures/wat/*.wat`): traps, recursion,
//! sleeps and calls shaped to break the host. Each ends as its own outcome,
//! within its time limit, with the cause and frames of a trap; the process
//! running them survives every one. A `.wat` file without an entry fails.

use std::time::{Duration, Instant};

use cachet_runtime::{Compiler, Policy, Status};
use cachet_testkit::repo_root;

use crate::{runtime, winch_runtime};

#[derive(Debug, Clone, Copy)]
enum Want {
    Exit(i32),
    /// A trap with this cause, whose innermost frame is this function.
    Trap(&'static str, &'static str),
    StackOverflow(&'static str),
    Timeout,
    Invalid(&'static str),
}

const WAT: &[(&str, Want)] = &[
    ("fuel_first_call", Want::Exit(0)),
    ("fuel_many_paths", Want::Exit(0)),
    (
        "no_memory_export",
        Want::Invalid("the module exports no memory, which WASI calls need"),
    ),
    ("poll_clock_and_fd", Want::Exit(0)),
    ("poll_sleep_max", Want::Timeout),
    ("spin_forever", Want::Timeout),
    (
        "trap_divide_by_zero",
        Want::Trap("integer divide by zero", "divide"),
    ),
    (
        "trap_null_call",
        Want::Trap("uninitialized element", "dispatch"),
    ),
    (
        "trap_out_of_bounds",
        Want::Trap("out of bounds memory access", "read_far"),
    ),
    ("trap_stack_overflow", Want::StackOverflow("recurse")),
    (
        "trap_unreachable",
        Want::Trap("wasm `unreachable` instruction executed", "boom"),
    ),
];

const LIMIT: Duration = Duration::from_secs(2);

fn wat_dir() -> std::path::PathBuf {
    repo_root().join("fixtures/wat")
}

#[test]
fn every_wat_fixture_has_an_expected_outcome() {
    for entry in std::fs::read_dir(wat_dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let stem = name.strip_suffix(".wat").unwrap_or(&name);
        assert!(
            WAT.iter().any(|(n, _)| *n == stem),
            "fixtures/wat/{name} has no entry in WAT"
        );
    }
}

/// On both compilers alike: the same outcomes, causes, frames and limits.
#[test]
fn hostile_modules_end_as_their_own_outcomes_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (&(name, want), (runtime, compiler)) in WAT.iter().flat_map(|w| {
        [
            (w, (runtime(), Compiler::Cranelift)),
            (w, (winch_runtime(), Compiler::Winch)),
        ]
    }) {
        let bytes = wat::parse_file(wat_dir().join(format!("{name}.wat"))).unwrap();
        let module = runtime.load(&bytes).unwrap();
        assert_eq!(module.compiler(), compiler);
        let name = format!("{name} ({compiler:?})");
        // Only the modules that must be stopped get the short limit: the
        // others (200,000 host calls) may take longer on a loaded machine.
        let limit = match want {
            Want::Timeout => LIMIT,
            _ => Duration::from_secs(120),
        };
        let mut policy = Policy::new();
        policy
            .mount_read_only("pkg", dir.path(), &["."])
            .timeout(limit);
        let start = Instant::now();
        let outcome = runtime.run(&module, &policy).unwrap();
        let took = start.elapsed();
        let s = &outcome.status;
        let ok = match want {
            Want::Exit(c) => *s == Status::Exited(c),
            Want::Trap(cause, frame) => {
                matches!(s, Status::Trapped { message, frames, .. } if message == cause && frames.first().is_some_and(|f| f == frame))
            }
            Want::StackOverflow(frame) => {
                matches!(s, Status::StackOverflow { frames, .. } if frames.first().is_some_and(|f| f == frame))
            }
            Want::Timeout => *s == Status::Timeout(LIMIT),
            Want::Invalid(msg) => matches!(s, Status::Invalid(m) if m.starts_with(msg)),
        };
        if !ok {
            failures.push(format!("{name}: want {want:?}, got {s:?}"));
        }
        if took > limit + Duration::from_secs(1) {
            failures.push(format!(
                "{name}: took {took:?}, past its {limit:?} limit + 1 s"
            ));
        }
        assert!(!s.to_string().contains('\n'), "{name}: one line: {s}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
