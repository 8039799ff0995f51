#!/usr/bin/env bash
# Runs an aarch64 Linux program under qemu-aarch64 (Debian's qemu-user) with the
# cross toolchain's loader and libc (/usr/aarch64-linux-gnu). The emulated CPU
# is KVLM_QEMU_CPU (default max; cortex-a53: ARMv8.0 NEON without dotprod,
# neoverse-n1: + dotprod and fp16, max: everything qemu has, i8mm included).
# cmake/aarch64.cmake makes it the build's CMAKE_CROSSCOMPILING_EMULATOR.
exec qemu-aarch64 -L "${KVLM_QEMU_SYSROOT:-/usr/aarch64-linux-gnu}" -cpu "${KVLM_QEMU_CPU:-max}" "$@"
