//! Bad input: one clear line on stderr, exit 2, and every other package still
//! runs and is reported.

use crate::{cachet, cachet_in, normalize, stderr, stdout};

#[test]
fn bad_flags_are_one_line_and_exit_2() {
    for (args, want) in [
        (vec!["test", "--bogus"], "cachet: unexpected argument '--bogus' found; see `cachet test --help`\n"),
        (vec!["test", "--run", "("], "cachet: invalid --run regular expression \"(\": regex parse error: ( ^ error: unclosed group\n"),
        (vec!["test", "--timeout", "10 minutes"], "cachet: invalid --timeout \"10 minutes\": use Go duration syntax such as 10m, 1m30s or 500ms\n"),
        (vec!["test", "--memory", "lots"], "cachet: invalid --memory \"lots\": use bytes or a size such as 512MiB or 2G\n"),
        (vec!["exec", "--bogus", "m.wasm"], "cachet: unexpected argument '--bogus' found; see `cachet exec --help`\n"),
        (vec!["exec", "missing.wasm"], "cachet exec: missing.wasm: no such file\n"),
        (vec!["test", "--partition", "1/4"], "cachet: invalid --partition \"1/4\": use count:K/N or hash:K/N with 1 <= K <= N, such as hash:1/4\n"),
        (vec!["test", "--remote-cache", "cache.example"], "cachet: invalid --remote-cache \"cache.example\": give an http:// or https:// URL such as http://cache.example:8080/cachet\n"),
    ] {
        let o = cachet(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert_eq!(stderr(&o), want, "{args:?}");
        assert_eq!(stdout(&o), "");
    }
}

#[test]
fn bad_packages_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("text.wasm"), "this is not wasm").unwrap();
    let good = wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "_start")))"#)
        .unwrap();
    std::fs::write(d.join("truncated.wasm"), &good[..good.len() - 3]).unwrap();
    std::fs::write(d.join("component.wasm"), b"\0asm\x0d\x00\x01\x00").unwrap();
    let imports = wat::parse_str(r#"(module (import "env" "host_magic" (func)) (memory (export "memory") 1) (func (export "_start")))"#).unwrap();
    std::fs::write(d.join("imports.wasm"), imports).unwrap();
    std::fs::write(d.join("good.wasm"), good).unwrap();
    let o = cachet_in(
        d,
        &[
            "test",
            "-p",
            "1",
            "missing.wasm",
            "text.wasm",
            "truncated.wasm",
            "component.wasm",
            "imports.wasm",
            "good.wasm",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        normalize(&stdout(&o)),
        "FAIL\tmissing.wasm [setup failed]\nFAIL\ttext.wasm [setup failed]\nFAIL\ttruncated.wasm [setup failed]\nFAIL\tcomponent.wasm [setup failed]\nFAIL\timports.wasm [setup failed]\nok  \tgood.wasm\tX.XXXs\nFAIL\n"
    );
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 5, "{err}");
    assert_eq!(
        lines[0],
        "cachet: missing.wasm: missing.wasm: no such file or directory"
    );
    assert_eq!(lines[1], "cachet: text.wasm: text.wasm: not a WebAssembly module (no `\\0asm` header); pass a .wasm file built for wasm32-wasip1 or wasm32-wasip2");
    assert!(
        lines[2]
            .starts_with("cachet: truncated.wasm: truncated.wasm: invalid WebAssembly module: "),
        "{}",
        lines[2]
    );
    assert!(
        lines[2].ends_with("; rebuild it (a truncated or corrupt file fails this way)"),
        "{}",
        lines[2]
    );
    // An empty component is one, and no WASI command.
    assert!(
        lines[3].starts_with("cachet: component.wasm: component.wasm: "),
        "{}",
        lines[3]
    );
    assert!(lines[3].ends_with(": the component is not a WASI command (it exports no `wasi:cli/run`); build it as a test binary, not a library"), "{}", lines[3]);
    assert!(lines[4].contains("env::host_magic") && lines[4].ends_with("cachet provides only WASI preview 1 (`wasi_snapshot_preview1` and `cachet` imports to a core module) and WASI 0.2 (`wasi:cli`, `wasi:filesystem`, `wasi:io`, `wasi:clocks`, `wasi:random` to a component)"), "{}", lines[4]);
}
