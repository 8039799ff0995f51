#!/usr/bin/env bash
# Runs an aarch64 Linux program under qemu-aarch64 (Debian's qemu-user). The emulated CPU is
# KVLM_QEMU_CPU (default max; cortex-a53: ARMv8.0 NEON without dotprod, neoverse-n1: + dotprod
# and fp16, max: everything qemu has, i8mm included). cmake/aarch64.cmake makes it the build's
# CMAKE_CROSSCOMPILING_EMULATOR.
#
# The loader and libc must come from one glibc. The arm64 -dev packages (scripts/deps.sh arm64)
# bring Debian's libc6:arm64, whose loader is /lib/ld-linux-aarch64.so.1 and whose libraries sit
# in /lib/aarch64-linux-gnu with theirs: then the root is the sysroot. The cross toolchain's copy
# (/usr/aarch64-linux-gnu, another build of glibc) is only used where there is no libc6:arm64:
# its loader would otherwise find the multiarch libc.so.6 first, and that mix hangs in the first
# pthread_create (every 2-thread test and `kvlm -t 2`). KVLM_QEMU_SYSROOT overrides the choice.
if [ -n "${KVLM_QEMU_SYSROOT:-}" ]; then
  root=$KVLM_QEMU_SYSROOT
elif [ -e /lib/ld-linux-aarch64.so.1 ]; then
  root=/
else
  root=/usr/aarch64-linux-gnu
fi
exec qemu-aarch64 -L "$root" -cpu "${KVLM_QEMU_CPU:-max}" "$@"
