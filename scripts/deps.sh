#!/usr/bin/env bash
# Installs the Debian packages kvlm needs to build and test, if any are missing.
# Usage: scripts/deps.sh [build|test|webtest|tsan|fuzz|coverage|arm64]   (--list MODE: print the packages, install nothing)
#   test adds the test-only packages (and nodejs / npm if there is no node / npm); tsan the ThreadSanitizer runtime (gcc);
#   fuzz clang and its libFuzzer/sanitizer runtimes (libclang-rt-14-dev); webtest what the web page's
#   browser test needs besides test's (headless chromium and chromedriver: tests/web, ctest webui);
#   coverage what test needs and gcovr (make coverage's report);
#   arm64 the aarch64 cross compiler, qemu-user and the arm64 multiarch -dev packages of the libraries
#   (make cross-arm64, make test-arm64; Debian only: it adds the arm64 architecture to dpkg).
# Without apt-get (another distribution, macOS) nothing is installed: each
# package is looked for directly (its command, pkg-config module or Python
# module); when all are there the build goes on, otherwise the missing ones
# are listed with their names on the common package managers.
set -eu
list=0
if [ "${1:-}" = --list ]; then list=1; shift; fi
want="cmake make gcc pkg-config libpcre2-dev libzstd-dev libxxhash-dev libcjson-dev libmicrohttpd-dev libedit-dev"
mode=${1:-build}
case "$mode" in
  build) ;;
  test | coverage) want="$want libcmocka-dev python3-pytest python3-requests haproxy" # tests/server runs Debian's /usr/bin/python3
    # haproxy: tests/server/test_haproxy.py (deploy/haproxy.cfg); optional without apt-get (that test skips)
    # tests/server/test_openai_node.py: the official OpenAI client runs on Node.js, installed with npm
    # (Debian's packages where the machine has no node / npm of its own)
    command -v node >/dev/null 2>&1 || want="$want nodejs"
    command -v npm >/dev/null 2>&1 || want="$want npm"
    if [ "$mode" = coverage ]; then want="$want gcovr"; fi ;;
  webtest) want="$want python3-pytest python3-requests chromium chromium-driver" ;;
  tsan) want="$want libcmocka-dev libtsan2" ;;
  fuzz) want="$want clang libclang-rt-14-dev" ;;
  arm64) want="cmake make pkg-config gcc-aarch64-linux-gnu qemu-user libc6:arm64" # libc6:arm64: scripts/qemu-arm64.sh
    for p in libpcre2-dev libzstd-dev libxxhash-dev libcjson-dev libmicrohttpd-dev libedit-dev libcmocka-dev; do
      want="$want $p:arm64"
    done ;;
  *) echo "usage: scripts/deps.sh [build|test|webtest|tsan|fuzz|coverage|arm64]" >&2; exit 2 ;;
esac
if [ $list = 1 ]; then echo "$want" | tr ' ' '\n'; exit 0; fi

# A Debian package -> how to find it without dpkg, and its names elsewhere:
# "KIND:WHAT|Fedora|Homebrew" (KIND: cmd, pc = pkg-config module, py = Python
# module, cc = flags the C compiler must accept).
probe() {
  case "$1" in
    cmake) echo "cmd:cmake|cmake|cmake" ;;
    make) echo "cmd:make|make|make" ;;
    gcc) echo "cmd:cc|gcc|(Xcode command line tools)" ;;
    pkg-config) echo "cmd:pkg-config|pkgconf-pkg-config|pkgconf" ;;
    libpcre2-dev) echo "pc:libpcre2-8|pcre2-devel|pcre2" ;;
    libzstd-dev) echo "pc:libzstd|libzstd-devel|zstd" ;;
    libxxhash-dev) echo "pc:libxxhash|xxhash-devel|xxhash" ;;
    libcjson-dev) echo "pc:libcjson|cjson-devel|cjson" ;;
    libmicrohttpd-dev) echo "pc:libmicrohttpd|libmicrohttpd-devel|libmicrohttpd" ;;
    libedit-dev) echo "pc:libedit|libedit-devel|libedit" ;;
    libcmocka-dev) echo "pc:cmocka|libcmocka-devel|cmocka" ;;
    python3-pytest) echo "py:pytest|python3-pytest|(pip install pytest)" ;;
    python3-requests) echo "py:requests|python3-requests|(pip install requests)" ;;
    nodejs) echo "cmd:node|nodejs|node" ;;
    npm) echo "cmd:npm|npm|node" ;;
    haproxy) echo "cmd:haproxy|haproxy|haproxy" ;;
    chromium) echo "cmd:chromium|chromium|(brew install --cask chromium)" ;;
    chromium-driver) echo "cmd:chromedriver|chromedriver|(brew install --cask chromedriver)" ;;
    libtsan2) echo "cc:-fsanitize=thread|libtsan|(Xcode's clang)" ;;
    clang) echo "cmd:clang|clang|llvm" ;;
    libclang-rt-14-dev) echo "cc:-fsanitize=fuzzer|compiler-rt|llvm" ;;
    gcovr) echo "cmd:gcovr|gcovr|gcovr" ;;
  esac
}

present() { # Debian package name -> status 0 when what it provides is found
  local p k w
  p=$(probe "$1")
  k=${p%%:*}
  w=${p#*:}
  w=${w%%|*}
  case "$k" in
    cmd) command -v "$w" >/dev/null 2>&1 ;;
    pc) command -v pkg-config >/dev/null 2>&1 && pkg-config --exists "$w" ;;
    py) # the server tests run /usr/bin/python3 (tests/CMakeLists.txt) where there is one
      local py=python3
      [ -x /usr/bin/python3 ] && py=/usr/bin/python3
      "$py" -c "import $w" >/dev/null 2>&1 ;;
    cc)
      local c=cc src='int main(void) { return 0; }'
      if [ "$w" = -fsanitize=fuzzer ]; then
        c=clang
        src='int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }'
      fi
      echo "$src" | "$c" "$w" -x c - -o /dev/null >/dev/null 2>&1 ;;
  esac
}

if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
  if [ "${1:-build}" = arm64 ]; then
    for c in aarch64-linux-gnu-gcc qemu-aarch64; do
      command -v $c >/dev/null 2>&1 || { echo "scripts/deps.sh arm64: no apt-get here and no $c: install an aarch64 cross toolchain, qemu-user and the arm64 libraries (pcre2 zstd cjson libmicrohttpd libedit cmocka) under /usr/aarch64-linux-gnu" >&2; exit 1; }
    done
    exit 0
  fi
  missing=""
  for p in $want; do
    [ "$p" = haproxy ] && continue # optional here: the HAProxy test skips, saying so, without it
    present "$p" || missing="$missing $p"
  done
  [ -z "$missing" ] && exit 0
  echo "scripts/deps.sh: no apt-get here, so nothing was installed; these are missing:" >&2
  printf '  %-20s %-28s %-24s %s\n' "Debian" "looked for" "Fedora" "Homebrew" >&2
  for p in $missing; do
    i=$(probe "$p")
    w=${i%%|*}
    r=${i#*|}
    printf '  %-20s %-28s %-24s %s\n' "$p" "$w" "${r%%|*}" "${r#*|}" >&2
  done
  echo "install them with your package manager (pkg-config must find the libraries), then run make again" >&2
  exit 1
fi

missing=""
for p in $want; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done
[ -z "$missing" ] && exit 0
echo "installing:$missing" >&2
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
case "$missing" in
  *:arm64*) dpkg --print-foreign-architectures | grep -qx arm64 || $SUDO dpkg --add-architecture arm64 ;;
esac
# another install running (a second make, a test installing its browser) is waited for, not failed on
lock="-o DPkg::Lock::Timeout=600"
$SUDO apt-get $lock update -qq >/dev/null
$SUDO apt-get $lock install -y -qq $missing >/dev/null
