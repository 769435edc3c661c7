# Shared by the host benchmarks: generate libtest crates, collect their
# test modules.

gen_crates() { # dir count tests body [body of m001's case_1]
  local dir=$1 count=$2 tests=$3 body=$4 first=${5:-$4}
  mkdir -p "$dir"
  local members=""
  for i in $(seq -w 1 "$count"); do
    members="$members\"m$i\", "
    mkdir -p "$dir/m$i/src"
    printf '[package]\nname = "m%s"\nversion = "0.0.0"\nedition = "2021"\n' "$i" > "$dir/m$i/Cargo.toml"
    {
      echo "#[cfg(test)] mod tests {"
      for t in $(seq 1 "$tests"); do
        if [ "$i" = 001 ] && [ "$t" = 1 ]; then b=$first; else b=$body; fi
        echo "#[test] fn case_$t() { $b }"
      done
      echo "}"
    } > "$dir/m$i/src/lib.rs"
  done
  printf '[workspace]\nresolver = "2"\nmembers = [%s]\n[profile.release]\ndebug = false\n' "$members" > "$dir/Cargo.toml"
}

collect() { # crate-dir out-dir
  (cd "$1" && cargo test --release --no-run --quiet --target wasm32-wasip1 --message-format=json) |
    python3 -c '
import json, os, shutil, sys
out = sys.argv[1]
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        d = os.path.join(out, m["target"]["name"])
        os.makedirs(d, exist_ok=True)
        shutil.copy(m["executable"], os.path.join(d, "test.wasm"))
' "$2"
}

# The 2,000 trivial cases (100 modules of 20) in $1, made once; m001's
# case_1 reads input.txt (for the one-input-changed runs).
trivial_suite() { # workdir
  if [ ! -d "$1/trivial" ]; then
    gen_crates "$1/trivial-src" 100 20 'assert_eq!(1 + 1, 2);' \
      'assert_eq!(std::fs::read_to_string("input.txt").unwrap().len(), 5);'
    collect "$1/trivial-src" "$1/trivial"
    printf 'input' > "$1/trivial/m001/input.txt"
  fi
}
