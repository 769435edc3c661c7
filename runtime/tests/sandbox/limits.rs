//! Limits end runs as distinct outcomes with one-line reasons, and the process
//! running them survives all of them.

use std::time::Duration;

use cachet_runtime::Status;

use crate::{text, Sandbox};

#[test]
fn every_limit_is_its_own_outcome_and_the_host_survives() {
    let sb = Sandbox::new("limit_spin_forever");
    let mut policy = sb.policy();
    policy.timeout(Duration::from_millis(200));
    let spin = sb.run("limit_spin_forever", &policy);
    assert_eq!(spin.status, Status::Timeout(Duration::from_millis(200)));
    assert!(
        spin.elapsed < Duration::from_secs(5),
        "stopped late: {:?}",
        spin.elapsed
    );

    let sb = Sandbox::new("limit_memory_bomb");
    let mut policy = sb.policy();
    policy.memory_limit(48 << 20);
    let bomb = sb.run("limit_memory_bomb", &policy);
    assert_eq!(
        bomb.status,
        Status::MemoryLimit(48 << 20),
        "{}",
        text(&bomb)
    );

    let sb = Sandbox::new("limit_output_flood");
    let mut policy = sb.policy();
    policy.output_limit(32 << 10);
    let flood = sb.run("limit_output_flood", &policy);
    assert_eq!(flood.status, Status::OutputOverflow(32 << 10));
    assert_eq!(flood.output.len(), 32 << 10, "output is kept up to the cap");

    let reasons: Vec<String> = [&spin, &bomb, &flood]
        .iter()
        .map(|o| o.status.to_string())
        .collect();
    for r in &reasons {
        assert!(!r.contains('\n'), "one line: {r}");
    }
    assert_eq!(reasons[0], "ran too long: stopped after 200ms");
    assert_eq!(
        reasons[1],
        "memory limit: tried to grow linear memory past 48 MiB"
    );
    assert_eq!(reasons[2], "output limit: wrote more than 32 KiB of output");

    // Still healthy: a normal run right after.
    let sb = Sandbox::new("fs_reads_testdata");
    assert!(sb.run("fs_reads_testdata", &sb.policy()).status.passed());
}

#[test]
fn panics_and_exit_codes_are_failures_with_their_message() {
    let sb = Sandbox::new("fails_panic");
    let outcome = sb.run("fails_panic", &sb.policy());
    assert!(
        matches!(outcome.status, Status::Trapped { .. }),
        "{:?}",
        outcome.status
    );
    assert!(
        text(&outcome).contains("the answer is wrong"),
        "{}",
        text(&outcome)
    );
    let sb = Sandbox::new("fails_exit_nonzero");
    assert_eq!(
        sb.run("fails_exit_nonzero", &sb.policy()).status,
        Status::Exited(3)
    );
}
