// Minimal cooperative contexts: a hand-written register switch on x86-64 and aarch64 (System V /
// AAPCS64 callee-saved registers only, no syscall), ucontext elsewhere or with FAE_EMU_UCONTEXT.
#pragma once

#include <cstddef>

#if defined(FAE_EMU_UCONTEXT) || !((defined(__x86_64__) || defined(__aarch64__)) && defined(__ELF__))
#define FAE_EMU_USE_UCONTEXT 1
#include <ucontext.h>
#endif

namespace fae::emu {

struct Context {
#ifdef FAE_EMU_USE_UCONTEXT
  ucontext_t uc;
#else
  void* sp = nullptr;
#endif
  // Stack bounds and fake stack, for AddressSanitizer's fiber annotations only.
  const void* stack = nullptr;
  std::size_t stack_size = 0;
  void* fake_stack = nullptr;
  void* tsan_fiber = nullptr;  // ThreadSanitizer's state of this context, for its annotations only
};

// Prepares `ctx` to run fn(arg) on the stack [stack, stack + size) when first switched to.
// fn must never return (it switches away for the last time instead).
void context_make(Context& ctx, void* stack, std::size_t size, void (*fn)(void*), void* arg);
// Saves the current context into `from` and resumes `to`.
void context_switch(Context& from, Context& to);
// Leaves the current context for good (it is never resumed) and resumes `to`.
void context_exit(Context& to);
// First thing a new context does; records the stack bounds of the context that started it into
// *from when `from` is not null.
void context_entered(Context* from);

// A fiber stack with a guard page below it (a stack overflow faults instead of corrupting memory).
class Stack {
 public:
  explicit Stack(std::size_t bytes);
  ~Stack();
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  void* base() const { return base_; }
  std::size_t size() const { return size_; }

 private:
  void* map_ = nullptr;
  void* base_ = nullptr;
  std::size_t size_ = 0;
  std::size_t map_size_ = 0;
};

}  // namespace fae::emu
