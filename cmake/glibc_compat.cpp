// Linked into the Python modules when they are built against an older glibc's symbol versions
// (FLASHATTN_EXT_GLIBC, cmake/glibc_stubs.py) with libstdc++ linked in: the two glibc symbols that
// this libstdc++ (and code compiled with its headers) uses and glibc 2.28 does not have, defined
// here, hidden, so that the modules do not ask the C library for them.
#include <sys/random.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>

extern "C" {

// glibc 2.32: nonzero while the process has one thread, so that reference counts may skip atomic
// instructions. 0 ("may have several threads") is always correct.
__attribute__((visibility("hidden"))) char __libc_single_threaded = 0;

// glibc 2.36: one of std::random_device's sources (the package does not use std::random_device;
// libstdc++ links it in with the string code).
__attribute__((visibility("hidden"))) std::uint32_t arc4random(void) {
  std::uint32_t r;
  while (getrandom(&r, sizeof r, 0) != static_cast<ssize_t>(sizeof r)) {
    if (errno != EINTR) std::abort();
  }
  return r;
}
}
