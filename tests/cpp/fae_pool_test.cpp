// The CPU thread pool (csrc/cpu/thread_pool.h): parallel_for runs every index exactly once when
// called from several threads at once while another thread changes the default thread count, and
// in a child made by fork(), also one forked while another thread is inside parallel_for.
// A hang is a failure: each child has an alarm, and ctest a timeout. Exits non-zero on failure.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <thread>
#include <vector>

#include "cpu/thread_pool.h"

namespace {

using fae::cpu::parallel_for;

constexpr unsigned kChildSeconds = 60;
int g_failures = 0;

void check(bool ok, const char* what) {
  std::printf("%s: %s\n", ok ? "ok" : "FAIL", what);
  if (!ok) ++g_failures;
}

// True when parallel_for over n indices on `threads` threads (0 = default) ran each exactly once.
bool covers(int64_t n, int threads) {
  std::vector<std::atomic<int>> hits(n);
  parallel_for(n, threads, [&](int64_t i) { hits[i].fetch_add(1); });
  for (auto& h : hits)
    if (h.load() != 1) return false;
  return true;
}

bool child_work() { return covers(1000, 4) && covers(3, 3) && covers(517, 0); }

// Forks; the child runs child_work and exits. True when it exits with 0 within kChildSeconds.
bool child_succeeds() {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    alarm(kChildSeconds);  // a hung child dies of SIGALRM
    _exit(child_work() ? 0 : 1);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) return false;
  if (WIFSIGNALED(status)) std::printf("  child killed by signal %d\n", WTERMSIG(status));
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

void concurrent_callers_while_count_changes() {
  std::atomic<bool> stop{false}, ok{true};
  std::thread changer([&] {
    const int counts[] = {2, 5, 1, 3, 8, 0};
    for (int i = 0; !stop.load(); ++i) {
      fae::cpu::set_default_num_threads(counts[i % 6]);
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c)
    callers.emplace_back([&, c] {
      for (int it = 0; it < 300; ++it)
        if (!covers(1 + (it * 7 + c * 13) % 97, 0)) ok.store(false);
    });
  for (auto& t : callers) t.join();
  stop.store(true);
  changer.join();
  fae::cpu::set_default_num_threads(0);
  check(ok.load(), "4 threads x 300 parallel_for calls while the thread count changes");
}

void fork_after_pool_use() {
  check(covers(1000, 4), "parent: parallel_for on 4 threads");
  check(child_succeeds(), "child forked after the pool was used: parallel_for on 4 and 3 threads");
  check(covers(1000, 4), "parent after the fork");
}

void fork_while_another_thread_is_inside_parallel_for() {
  std::atomic<int> inside{0};
  std::atomic<bool> release{false};
  std::thread busy([&] {
    parallel_for(4, 4, [&](int64_t) {
      inside.fetch_add(1);
      while (!release.load()) std::this_thread::yield();
    });
  });
  while (inside.load() < 4) std::this_thread::yield();  // the pool's workers and busy are all inside
  const bool child_ok = child_succeeds();
  release.store(true);
  busy.join();
  check(child_ok, "child forked while another thread is inside parallel_for");
  check(covers(1000, 4), "parent after the fork");
}

}  // namespace

int main() {
  concurrent_callers_while_count_changes();
  fork_after_pool_use();
  fork_while_another_thread_is_inside_parallel_for();
  std::printf("%s\n", g_failures == 0 ? "all passed" : "FAILED");
  return g_failures == 0 ? 0 : 1;
}
