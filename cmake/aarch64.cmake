# Cross build for 64-bit ARM Linux with Debian's gcc-aarch64-linux-gnu and the
# arm64 multiarch -dev packages (scripts/deps.sh arm64):
#     cmake -S . -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64.cmake
# (make cross-arm64); ctest runs the test programs under qemu-aarch64
# (make test-arm64, once per emulated CPU).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(KVLM_CROSS_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${KVLM_CROSS_TRIPLE}-gcc)
# the target's libraries: the cross toolchain's own root and Debian's multiarch directories
set(CMAKE_FIND_ROOT_PATH /usr/${KVLM_CROSS_TRIPLE})
set(CMAKE_LIBRARY_ARCHITECTURE ${KVLM_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
# pkg-config reads the arm64 .pc files only
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/${KVLM_CROSS_TRIPLE}/pkgconfig:/usr/share/pkgconfig)
set(ENV{PKG_CONFIG_PATH} "")
# test programs run under qemu-aarch64 (scripts/qemu-arm64.sh: KVLM_QEMU_CPU picks the emulated CPU)
set(CMAKE_CROSSCOMPILING_EMULATOR ${CMAKE_CURRENT_LIST_DIR}/../scripts/qemu-arm64.sh)
