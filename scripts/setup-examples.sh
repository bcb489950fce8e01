#!/usr/bin/env bash
# Installs and builds the example apps of every language (examples/*), each from
# its own registry, with versions pinned by the lock files:
#   Java:   Maven Central, local repo .cache/m2  -> examples/java/target/spiffe-example.jar
#   Node:   npm ci (package-lock.json), cache .cache/npm -> examples/node/node_modules
#   Go:     Go module proxy (go.sum), GOPATH/GOMODCACHE/GOCACHE in .cache/go -> .cache/examples/bin
#   Python: PyPI (requirements.txt), venv .cache/venv-examples
# and util-linux (setpriv) from Debian when missing. Safe to rerun: each step is
# skipped while its inputs are unchanged. Needs java 17+, mvn, node 20+, go 1.24+
# and python3 on PATH.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache="$root/.cache"
ex="$root/examples"
mkdir -p "$cache/examples"

say() { echo "setup-examples: $*"; }
# Hash of the given files and of every file under the given dirs.
fingerprint() { find "$@" -type f -print0 2>/dev/null | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1; }
fresh() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

if ! command -v setpriv >/dev/null; then
  say "installing util-linux (setpriv) from the distribution"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq util-linux
fi
for tool in java mvn node npm go python3; do
  command -v "$tool" >/dev/null || { say "$tool is not installed" >&2; exit 1; }
done

# ---- Java
want=$(fingerprint "$ex/java/pom.xml" "$ex/java/src")
stamp="$cache/examples/java.stamp"
if ! fresh "$stamp" "$want" || [ ! -f "$ex/java/target/spiffe-example.jar" ]; then
  say "java: mvn package (Maven Central, repo $cache/m2)"
  log="$cache/examples/java-build.log"
  if ! (cd "$ex/java" && mvn -B -Dmaven.repo.local="$cache/m2" package) > "$log" 2>&1; then
    tail -n 40 "$log" >&2
    say "java: build failed, full log in $log" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi

# ---- Node
want=$(fingerprint "$ex/node/package.json" "$ex/node/package-lock.json")
stamp="$cache/examples/node.stamp"
if ! fresh "$stamp" "$want" || [ ! -d "$ex/node/node_modules/@grpc/grpc-js" ]; then
  say "node: npm ci (cache $cache/npm)"
  (cd "$ex/node" && npm ci --cache "$cache/npm" --prefer-offline --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$want" > "$stamp"
fi

# ---- Go
export GOPATH="$cache/go" GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" GOFLAGS=-modcacherw
want=$(fingerprint "$ex/go")
stamp="$cache/examples/go.stamp"
bin="$cache/examples/bin"
if ! fresh "$stamp" "$want" || [ ! -x "$bin/go-server" ] || [ ! -x "$bin/go-client" ]; then
  say "go: download modules and build (cache $cache/go)"
  (cd "$ex/go" && go mod download && go build -o "$bin/go-server" ./cmd/server \
    && go build -o "$bin/go-client" ./cmd/client)
  echo "$want" > "$stamp"
fi

# ---- Python
# The venv's interpreter must be usable by the uids the test matrix runs apps
# under, so prefer the system python over one installed under /root.
py=python3
[ -x /usr/bin/python3 ] && py=/usr/bin/python3
venv="$cache/venv-examples"
want=$(fingerprint "$ex/python/requirements.txt")
stamp="$venv/.requirements.sha256"
if ! fresh "$stamp" "$want" || [ ! -x "$venv/bin/python" ]; then
  say "python: venv $venv from requirements.txt"
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --cache-dir "$cache/pip" \
    -r "$ex/python/requirements.txt"
  echo "$want" > "$stamp"
fi
say "ready"
