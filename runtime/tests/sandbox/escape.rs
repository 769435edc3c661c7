//! Every escape attempt fails inside the guest and never reads or writes
//! outside the mounts: the secret appears in no output or log, the sentinel
//! tree is byte-identical, and no host path leaks into a log.

use cachet_testkit::snapshot;

use crate::{text, Sandbox, SECRET};

#[test]
fn escapes_fail_and_leave_the_outside_untouched() {
    for name in [
        "escape_dotdot",
        "escape_absolute",
        "escape_symlink_out",
        "write_readonly_pkg",
    ] {
        let sb = Sandbox::new(name);
        let mut policy = sb.policy();
        policy.env("SECRET_PATH", sb.secret_path().to_str().unwrap());
        // The scratch base is the runs' own area (an emptied scratch dir may be
        // kept there for reuse); everything else must be byte-identical.
        let outside = |sb: &Sandbox| {
            let mut s = snapshot(sb.root.path());
            s.retain(|path, _| !path.starts_with("scratch"));
            s
        };
        let outside_before = outside(&sb);
        let outcome = sb.run(name, &policy);
        assert!(
            outcome.status.passed(),
            "{name}: every attempt must fail inside the guest:\n{}",
            text(&outcome)
        );
        let out = text(&outcome);
        let log = outcome.log.render();
        assert!(
            !out.contains("TOP-SECRET") && !log.contains("TOP-SECRET"),
            "{name} leaked the secret"
        );
        let root = sb.root.path().to_str().unwrap();
        assert!(
            !log.contains(root),
            "{name}: a host path reached the log:\n{log}"
        );
        let outside_after = outside(&sb);
        assert_eq!(outside_before, outside_after, "{name} changed files");
        assert_eq!(std::fs::read_to_string(sb.secret_path()).unwrap(), SECRET);
        assert!(
            log.contains("denied ") || log.contains(" escapes") || name == "escape_absolute",
            "{name}:\n{log}"
        );
    }
}

#[test]
fn scratch_dirs_are_removed_after_each_run() {
    let sb = Sandbox::new("scratch_write_read");
    let policy = sb.policy();
    for _ in 0..3 {
        let outcome = sb.run("scratch_write_read", &policy);
        assert!(outcome.status.passed(), "{}", text(&outcome));
    }
    let left: Vec<_> = std::fs::read_dir(sb.root.path().join("scratch"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "scratch dirs left behind: {left:?}");
}
