//! The log is exact: one byte changes one observation, mtimes change nothing,
//! unread files are absent, and a change during the run is caught.

use std::time::{Duration, SystemTime};

use cachet_runtime::{first_change, reobserve, Entry, ReadOp};

use crate::Sandbox;

#[test]
fn one_changed_byte_changes_that_entry_and_nothing_else() {
    let sb = Sandbox::new("fs_reads_testdata");
    let policy = sb.policy();
    let before = sb.run("fs_reads_testdata", &policy);
    assert!(before.status.passed());
    let words = sb.pkg.join("testdata/words.txt");
    let mut bytes = std::fs::read(&words).unwrap();
    bytes[1] ^= 0x20; // "alpha" -> "aLpha": same size
    std::fs::write(&words, &bytes).unwrap();
    let after = sb.run("fs_reads_testdata", &policy);
    assert!(!after.status.passed(), "the guest asserts on the content");
    assert_eq!(before.log.entries.len(), after.log.entries.len());
    let differing: Vec<String> = before
        .log
        .entries
        .iter()
        .zip(&after.log.entries)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.subject())
        .collect();
    assert_eq!(differing, ["open pkg/testdata/words.txt"]);
}

#[test]
fn mtime_only_changes_nothing_and_unread_files_are_absent() {
    let sb = Sandbox::new("fs_reads_testdata");
    let policy = sb.policy();
    let before = sb.run("fs_reads_testdata", &policy);
    for f in [
        "testdata/words.txt",
        "testdata/unread.txt",
        "testdata",
        "src/lib.rs",
    ] {
        let file = std::fs::File::open(sb.pkg.join(f)).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(86_400 * 400))
            .unwrap();
    }
    let after = sb.run("fs_reads_testdata", &policy);
    assert_eq!(before.log, after.log);
    let rendered = after.log.render();
    assert!(!rendered.contains("unread"), "{rendered}");
    assert!(!rendered.contains("lib.rs"), "{rendered}");
}

#[test]
fn stat_sees_virtual_metadata_and_size_changes() {
    let sb = Sandbox::new("fs_stat");
    let policy = sb.policy();
    let before = sb.run("fs_stat", &policy);
    assert!(before.status.passed(), "{}", crate::text(&before));
    std::fs::write(sb.pkg.join("testdata/data.bin"), vec![b'y'; 101]).unwrap();
    let now = reobserve(&before.log, &policy.world());
    let change = first_change(&before.log, &now).unwrap();
    assert_eq!(
        change.to_string(),
        "stat pkg/testdata/data.bin: size changed (was file size=100, now file size=101)"
    );
}

#[test]
fn reobserving_an_unchanged_world_gives_the_same_digest() {
    for name in [
        "fs_lists_dir",
        "fs_readlink_inside",
        "env_with_shim",
        "env_without_shim",
        "escape_symlink_out",
    ] {
        let sb = Sandbox::new(name);
        let policy = sb.policy();
        let outcome = sb.run(name, &policy);
        assert!(outcome.status.passed(), "{name}: {}", crate::text(&outcome));
        let now = reobserve(&outcome.log, &policy.world());
        assert_eq!(now.inputs_digest(), outcome.log.inputs_digest(), "{name}");
    }
}

#[test]
fn env_reads_are_precise_with_the_shim_and_coarse_without() {
    let sb = Sandbox::new("env_with_shim");
    let mut policy = sb.policy();
    let base = sb.run("env_with_shim", &policy);
    assert!(
        !base
            .log
            .entries
            .iter()
            .any(|e| matches!(e, Entry::Environ(_))),
        "{}",
        base.log.render()
    );
    policy.env("UNRELATED", "1");
    let unrelated = sb.run("env_with_shim", &policy);
    assert_eq!(
        base.log.inputs_digest(),
        unrelated.log.inputs_digest(),
        "an unread variable is no input"
    );
    policy.env("GREETING", "bye");
    let changed = reobserve(&base.log, &policy.world());
    assert_eq!(
        first_change(&base.log, &changed).unwrap().subject,
        "env GREETING"
    );

    let sb = Sandbox::new("env_without_shim");
    let mut policy = sb.policy();
    let base = sb.run("env_without_shim", &policy);
    assert!(base
        .log
        .entries
        .iter()
        .any(|e| matches!(e, Entry::Environ(_))));
    policy.env("UNRELATED", "1");
    let now = reobserve(&base.log, &policy.world());
    assert_eq!(first_change(&base.log, &now).unwrap().subject, "environ");
}

#[test]
fn symlink_retarget_and_new_dir_entries_are_seen() {
    let sb = Sandbox::new("fs_readlink_inside");
    let policy = sb.policy();
    let base = sb.run("fs_readlink_inside", &policy);
    let link = sb.pkg.join("testdata/link.txt");
    std::fs::write(sb.pkg.join("testdata/other.txt"), "linked\n").unwrap();
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("other.txt", &link).unwrap();
    let now = reobserve(&base.log, &policy.world());
    let change = first_change(&base.log, &now).unwrap();
    assert_eq!(change.subject, "readlink pkg/testdata/link.txt");

    let sb = Sandbox::new("fs_lists_dir");
    let policy = sb.policy();
    let base = sb.run("fs_lists_dir", &policy);
    std::fs::write(sb.pkg.join("testdata/new.txt"), "").unwrap();
    let now = reobserve(&base.log, &policy.world());
    assert_eq!(
        first_change(&base.log, &now).unwrap().subject,
        "readdir pkg/testdata"
    );
}

#[test]
fn a_missing_file_that_appears_is_a_change() {
    let sb = Sandbox::new("fs_reads_missing");
    let policy = sb.policy();
    let base = sb.run("fs_reads_missing", &policy);
    assert!(base.log.entries.iter().any(|e| matches!(e, Entry::Read { op: ReadOp::Open, path, .. } if path == "pkg/testdata/absent.txt")));
    std::fs::write(sb.pkg.join("testdata/absent.txt"), "here").unwrap();
    let change = first_change(&base.log, &reobserve(&base.log, &policy.world())).unwrap();
    assert!(
        change
            .to_string()
            .starts_with("open pkg/testdata/absent.txt: now exists"),
        "{change}"
    );
}

#[test]
fn a_log_survives_its_text_form() {
    let sb = Sandbox::new("fs_lists_dir");
    let outcome = sb.run("fs_lists_dir", &sb.policy());
    let text = outcome.log.render();
    assert_eq!(cachet_runtime::InputLog::parse(&text).unwrap(), outcome.log);
}
