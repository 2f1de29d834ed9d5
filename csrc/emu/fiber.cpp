// Context switching for the emulator's fibers (see fiber.h).
#include "fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <new>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define FAE_EMU_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define FAE_EMU_TSAN 1
#endif

namespace fae::emu {

namespace {
// ThreadSanitizer keeps a call stack and a clock per thread: it must be told which fiber runs.
// A fiber context gets its own state in context_make; any other context (a scheduler running on
// an OS thread's own stack) records the current one when it switches away. Switching synchronises,
// so the cooperative fibers of one OS thread are ordered; races across OS threads are still seen.
void tsan_make(Context& ctx) {
#ifdef FAE_EMU_TSAN
  if (ctx.tsan_fiber != nullptr) __tsan_destroy_fiber(ctx.tsan_fiber);  // its last run has ended
  ctx.tsan_fiber = __tsan_create_fiber(0);
#else
  (void)ctx;
#endif
}

void tsan_switch(Context* from, Context& to) {
#ifdef FAE_EMU_TSAN
  if (from != nullptr) from->tsan_fiber = __tsan_get_current_fiber();
  __tsan_switch_to_fiber(to.tsan_fiber, 0);
#else
  (void)from, (void)to;
#endif
}
}  // namespace

#ifndef FAE_EMU_USE_UCONTEXT

extern "C" {
__attribute__((visibility("hidden"))) void fae_emu_ctx_switch(void** save_sp, void* new_sp);
__attribute__((visibility("hidden"))) void fae_emu_ctx_start();
}

#if defined(__x86_64__)
// Saved frame (from the saved sp upwards): mxcsr | x87 cw, r15, r14, r13, r12, rbx, rbp, return address.
asm(R"(
    .text
    .p2align 4
    .globl fae_emu_ctx_switch
    .hidden fae_emu_ctx_switch
    .type fae_emu_ctx_switch, @function
fae_emu_ctx_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size fae_emu_ctx_switch, .-fae_emu_ctx_switch

    .p2align 4
    .globl fae_emu_ctx_start
    .hidden fae_emu_ctx_start
    .type fae_emu_ctx_start, @function
fae_emu_ctx_start:
    movq %rbx, %rdi
    callq *%r12
    ud2
    .size fae_emu_ctx_start, .-fae_emu_ctx_start
)");

void context_make(Context& ctx, void* stack, std::size_t size, void (*fn)(void*), void* arg) {
  ctx.stack = stack;
  ctx.stack_size = size;
  tsan_make(ctx);
#ifdef FAE_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(stack, size);  // frames of an abandoned fiber may still be poisoned
#endif
  auto top = (reinterpret_cast<std::uintptr_t>(stack) + size) & ~std::uintptr_t(15);
  auto* s = reinterpret_cast<std::uint64_t*>(top);
  s[-1] = reinterpret_cast<std::uint64_t>(&fae_emu_ctx_start);  // return address of the first switch
  s[-2] = 0;                                                     // rbp
  s[-3] = reinterpret_cast<std::uint64_t>(arg);                  // rbx
  s[-4] = reinterpret_cast<std::uint64_t>(fn);                   // r12
  s[-5] = s[-6] = s[-7] = 0;                                     // r13, r14, r15
  std::uint32_t mxcsr;
  std::uint16_t fpcw;
  asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(mxcsr), "=m"(fpcw));
  s[-8] = mxcsr | (std::uint64_t(fpcw) << 32);
  ctx.sp = &s[-8];
}

#elif defined(__aarch64__)
// Saved frame (176 bytes): x19..x30, d8..d15, fpcr.
asm(R"(
    .text
    .p2align 4
    .globl fae_emu_ctx_switch
    .hidden fae_emu_ctx_switch
    .type fae_emu_ctx_switch, %function
fae_emu_ctx_switch:
    sub sp, sp, #176
    stp x19, x20, [sp, #0]
    stp x21, x22, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    stp x27, x28, [sp, #64]
    stp x29, x30, [sp, #80]
    stp d8, d9, [sp, #96]
    stp d10, d11, [sp, #112]
    stp d12, d13, [sp, #128]
    stp d14, d15, [sp, #144]
    mrs x9, fpcr
    str x9, [sp, #160]
    mov x9, sp
    str x9, [x0]
    mov sp, x1
    ldr x9, [sp, #160]
    msr fpcr, x9
    ldp x19, x20, [sp, #0]
    ldp x21, x22, [sp, #16]
    ldp x23, x24, [sp, #32]
    ldp x25, x26, [sp, #48]
    ldp x27, x28, [sp, #64]
    ldp x29, x30, [sp, #80]
    ldp d8, d9, [sp, #96]
    ldp d10, d11, [sp, #112]
    ldp d12, d13, [sp, #128]
    ldp d14, d15, [sp, #144]
    add sp, sp, #176
    ret
    .size fae_emu_ctx_switch, .-fae_emu_ctx_switch

    .p2align 4
    .globl fae_emu_ctx_start
    .hidden fae_emu_ctx_start
    .type fae_emu_ctx_start, %function
fae_emu_ctx_start:
    mov x0, x19
    blr x20
    brk #0
    .size fae_emu_ctx_start, .-fae_emu_ctx_start
)");

void context_make(Context& ctx, void* stack, std::size_t size, void (*fn)(void*), void* arg) {
  ctx.stack = stack;
  ctx.stack_size = size;
  tsan_make(ctx);
#ifdef FAE_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(stack, size);  // frames of an abandoned fiber may still be poisoned
#endif
  auto top = (reinterpret_cast<std::uintptr_t>(stack) + size) & ~std::uintptr_t(15);
  auto* s = reinterpret_cast<std::uint64_t*>(top - 176);
  for (int i = 0; i < 22; ++i) s[i] = 0;
  s[0] = reinterpret_cast<std::uint64_t>(arg);                   // x19
  s[1] = reinterpret_cast<std::uint64_t>(fn);                    // x20
  s[11] = reinterpret_cast<std::uint64_t>(&fae_emu_ctx_start);   // x30
  std::uint64_t fpcr;
  asm volatile("mrs %0, fpcr" : "=r"(fpcr));
  s[20] = fpcr;
  ctx.sp = s;
}
#endif

namespace {
void raw_switch(Context& from, Context& to) { fae_emu_ctx_switch(&from.sp, to.sp); }
}  // namespace

#else  // ucontext fallback

namespace {
void uc_entry(unsigned fn_hi, unsigned fn_lo, unsigned arg_hi, unsigned arg_lo) {
  auto fn = reinterpret_cast<void (*)(void*)>((std::uintptr_t(fn_hi) << 32) | fn_lo);
  fn(reinterpret_cast<void*>((std::uintptr_t(arg_hi) << 32) | arg_lo));
}
}  // namespace

void context_make(Context& ctx, void* stack, std::size_t size, void (*fn)(void*), void* arg) {
  ctx.stack = stack;
  ctx.stack_size = size;
  tsan_make(ctx);
#ifdef FAE_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(stack, size);  // frames of an abandoned fiber may still be poisoned
#endif
  getcontext(&ctx.uc);
  ctx.uc.uc_stack.ss_sp = stack;
  ctx.uc.uc_stack.ss_size = size;
  ctx.uc.uc_link = nullptr;
  auto f = reinterpret_cast<std::uintptr_t>(fn), a = reinterpret_cast<std::uintptr_t>(arg);
  makecontext(&ctx.uc, reinterpret_cast<void (*)()>(&uc_entry), 4, unsigned(f >> 32), unsigned(f), unsigned(a >> 32),
              unsigned(a));
}

namespace {
void raw_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
}  // namespace

#endif

void context_switch(Context& from, Context& to) {
  tsan_switch(&from, to);
#ifdef FAE_EMU_ASAN
  __sanitizer_start_switch_fiber(&from.fake_stack, to.stack, to.stack_size);
  raw_switch(from, to);
  __sanitizer_finish_switch_fiber(from.fake_stack, nullptr, nullptr);
#else
  raw_switch(from, to);
#endif
}

void context_exit(Context& to) {
  Context dead;
  tsan_switch(nullptr, to);
#ifdef FAE_EMU_ASAN
  __sanitizer_start_switch_fiber(nullptr, to.stack, to.stack_size);
#endif
  raw_switch(dead, to);
}

void context_entered(Context* from) {
#ifdef FAE_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, from ? &from->stack : nullptr, from ? &from->stack_size : nullptr);
#else
  (void)from;
#endif
}

Stack::Stack(std::size_t bytes) {
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  size_ = (bytes + page - 1) / page * page;
  map_size_ = size_ + page;
  map_ = mmap(nullptr, map_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (map_ == MAP_FAILED) throw std::bad_alloc();
  mprotect(map_, page, PROT_NONE);  // guard page below the stack
  base_ = static_cast<char*>(map_) + page;
}

Stack::~Stack() { munmap(map_, map_size_); }

}  // namespace fae::emu
