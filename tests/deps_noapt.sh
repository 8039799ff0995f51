#!/usr/bin/env bash
# scripts/deps.sh on a machine without apt-get (another distribution, macOS): PATH holds every
# command of this one but apt-get, apt and dpkg-query. With everything there it says nothing and
# succeeds, so make goes on; with libraries pkg-config cannot find it installs nothing, fails, and
# names each missing package (Debian, what it looked for, Fedora, Homebrew) and only those.
set -u
root=${1:?source dir}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/bin" "$tmp/pc"
IFS=: read -ra dirs <<<"$PATH"
for d in "${dirs[@]}"; do
  for f in "$d"/*; do
    b=$(basename "$f")
    case $b in apt-get | apt | dpkg-query) continue ;; esac
    [ -x "$f" ] && [ ! -e "$tmp/bin/$b" ] && ln -s "$f" "$tmp/bin/$b"
  done
done
fail() { echo "FAIL: $*" >&2; exit 1; }
[ ! -e "$tmp/bin/apt-get" ] || fail "apt-get still on PATH"
nopath() { env PATH="$tmp/bin" "$@"; }
nopath bash -c 'command -v apt-get' >/dev/null && fail "apt-get found"

# make test installs the build and test groups, not the coverage one (gcovr): that group is checked
# both ways, gcovr absent (it is listed) and present (a stand-in command on PATH)
rm -f "$tmp/bin/gcovr"
out=$(nopath bash "$root/scripts/deps.sh" coverage 2>&1) && fail "deps.sh coverage without gcovr succeeded: $out"
grep -q "^  gcovr " <<<"$out" || fail "gcovr not listed: $out"
printf '#!/bin/sh\necho "gcovr 5.2"\n' >"$tmp/bin/gcovr"
chmod +x "$tmp/bin/gcovr"
for mode in build test coverage; do
  out=$(nopath bash "$root/scripts/deps.sh" $mode 2>&1) || fail "deps.sh $mode without apt-get, all present: $out"
  [ -z "$out" ] || fail "deps.sh $mode printed: $out"
done
# make's own first step (make build runs deps.sh build) goes on
nopath make -C "$root" deps >/dev/null 2>&1 || fail "make deps without apt-get"

# no .pc file visible: the libraries are missing, the commands are not
out=$(env PATH="$tmp/bin" PKG_CONFIG_LIBDIR="$tmp/pc" bash "$root/scripts/deps.sh" build 2>&1)
rc=$?
[ $rc = 1 ] || fail "deps.sh with missing libraries exited $rc: $out"
grep -q "no apt-get here, so nothing was installed" <<<"$out" || fail "no explanation: $out"
for p in libpcre2-dev libzstd-dev libxxhash-dev libcjson-dev libmicrohttpd-dev libedit-dev; do
  grep -q "^  $p " <<<"$out" || fail "$p not listed: $out"
done
grep -q "libzstd-devel" <<<"$out" || fail "no Fedora name: $out"
for p in cmake make gcc pkg-config; do
  grep -q "^  $p " <<<"$out" && fail "$p listed though present: $out"
done
# arm64 (make cross-arm64): the cross compiler and qemu-aarch64 are looked for as commands; with
# both there it goes on silently, with either missing it fails and says what to install
if command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null; then
  out=$(nopath bash "$root/scripts/deps.sh" arm64 2>&1) || fail "deps.sh arm64 without apt-get, all present: $out"
  [ -z "$out" ] || fail "deps.sh arm64 printed: $out"
fi
mkdir "$tmp/bin2"
for f in "$tmp"/bin/*; do
  case $(basename "$f") in aarch64-linux-gnu-gcc | qemu-aarch64) ;; *) cp -P "$f" "$tmp/bin2/" ;; esac
done
out=$(env PATH="$tmp/bin2" bash "$root/scripts/deps.sh" arm64 2>&1)
rc=$?
[ $rc = 1 ] || fail "deps.sh arm64 without a cross compiler exited $rc: $out"
grep -q "no aarch64-linux-gnu-gcc" <<<"$out" || fail "deps.sh arm64 did not name the cross compiler: $out"
echo "deps.sh without apt-get: ok"
