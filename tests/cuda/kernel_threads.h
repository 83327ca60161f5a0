// CUDA's thread model on the host, so that g++ compiles the kernel files themselves (msm.cu,
// ntt.cu) and runs their kernels as a GPU would: a grid of blocks, each block's threads sharing
// its __shared__ memory and meeting at __syncthreads(). hostlib.py includes this before a kernel
// file and wraps every kernel in an emu_ function (the C ABI libcuda_emu.cpp and fakedriver.py
// call).
//
// Each thread of a block is a fiber with its own stack; the block runs them one at a
// time, each until it reaches a barrier or returns, then starts the next phase. Between barriers
// the threads run in turn forwards, then backwards in the next phase, so a thread that reads
// what another writes without a barrier between them reads the wrong value in one order or the
// other, and the results show it. What this cannot show: the warp-level code under
// __CUDA_ARCH__ (counter_claim's coalesced groups), timing, and concurrency between blocks,
// which run one after another (their only shared state is global memory updated by atomics).
#pragma once

#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <type_traits>
#include <utility>

struct GpHostDim3 {
    uint32_t x, y, z;
};

inline thread_local GpHostDim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
// One copy per host thread, shared by the block's fibers (blocks run one at a time).
#define __shared__ static thread_local

namespace gp_host {

constexpr uint32_t MAX_BLOCK = 1024;  // threads per block, as on every CUDA GPU
constexpr size_t STACK_BYTES = 256 << 10;

[[noreturn]] inline void fail(const char* what) {
    fprintf(stderr, "kernel_threads: %s\n", what);
    abort();
}

struct Fiber {
    jmp_buf entry;   // the top of its stack, where each new thread begins
    jmp_buf resume;  // where it waits at a barrier
    bool started, done;
};

struct Block {
    jmp_buf scheduler;
    Fiber fibers[MAX_BLOCK];
    uint32_t current;
    void (*body)(void*);
    void* args;
};

inline thread_local Block* running = nullptr;

// Switches are _setjmp/_longjmp, which keep the signal mask and so make no system call
// (swapcontext makes one per switch: a block of 1024 threads and 20 barriers would make
// 40,000). Only the first entry into each stack, once per host thread, goes through
// makecontext/setcontext. hostlib.py compiles without _FORTIFY_SOURCE, whose longjmp refuses to
// jump between stacks.
[[noreturn]] inline void thread_main() {
    {
        Block* b = running;
        if (_setjmp(b->fibers[b->current].entry) == 0) _longjmp(b->scheduler, 1);
    }
    // Entered again for every thread this fiber runs; the state is re-read from `running`.
    Block* b = running;
    b->body(b->args);
    b->fibers[b->current].done = true;
    _longjmp(b->scheduler, 1);
}

// The MAX_BLOCK fibers of this host thread, each on a stack above a guard page that faults on
// overflow, touched only as deep as the kernels go.
__attribute__((noinline)) inline Block& fiber_block() {
    static thread_local Block b;
    static thread_local bool made = false;
    if (made) return b;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE), span = page + STACK_BYTES;
    void* m = mmap(nullptr, span * MAX_BLOCK, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) fail("cannot map the fiber stacks");
    char* base = static_cast<char*>(m);
    running = &b;
    for (uint32_t t = 0; t < MAX_BLOCK; t++) {
        if (mprotect(base + t * span, page, PROT_NONE) != 0) fail("cannot guard a stack");
        ucontext_t start;
        if (getcontext(&start) != 0) fail("getcontext");
        start.uc_stack.ss_sp = base + t * span + page;
        start.uc_stack.ss_size = STACK_BYTES;
        start.uc_link = nullptr;  // thread_main never returns
        makecontext(&start, (void (*)())thread_main, 0);
        b.current = t;
        if (_setjmp(b.scheduler) == 0) setcontext(&start);  // back once `entry` is set
    }
    running = nullptr;
    made = true;
    return b;
}

inline void barrier() {
    Block* b = running;
    if (!b) fail("__syncthreads() in a kernel run without fibers (see hostlib.py)");
    if (_setjmp(b->fibers[b->current].resume) == 0) _longjmp(b->scheduler, 1);
}

// Runs thread t until it reaches a barrier or returns. (Not inlined: _setjmp returns twice,
// which would constrain the caller's variables.)
__attribute__((noinline)) inline void resume(Block& b, uint32_t t) {
    Fiber& f = b.fibers[t];
    b.current = t;
    threadIdx = {t, 0, 0};
    if (_setjmp(b.scheduler) != 0) return;
    if (f.started) _longjmp(f.resume, 1);
    f.started = true;
    _longjmp(f.entry, 1);
}

// Runs body(args) as every thread of a grid x block launch. A kernel without barriers
// (`fibers` false) runs its threads as plain calls, in turn.
inline void run(uint32_t grid, uint32_t block, void (*body)(void*), void* args, bool fibers) {
    if (block == 0 || block > MAX_BLOCK || grid == 0) fail("invalid launch configuration");
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    if (!fibers) {
        for (uint32_t g = 0; g < grid; g++) {
            blockIdx = {g, 0, 0};
            for (uint32_t t = 0; t < block; t++) {
                threadIdx = {t, 0, 0};
                body(args);
            }
        }
        return;
    }
    Block& b = fiber_block();
    b.body = body;
    b.args = args;
    running = &b;
    for (uint32_t g = 0; g < grid; g++) {
        blockIdx = {g, 0, 0};
        for (uint32_t t = 0; t < block; t++) b.fibers[t].started = b.fibers[t].done = false;
        // A phase resumes every live thread once; a thread that returned counts as arrived at
        // the barrier, as on the GPU.
        for (bool forwards = true, live = true; live; forwards = !forwards) {
            live = false;
            for (uint32_t k = 0; k < block; k++) {
                uint32_t t = forwards ? k : block - 1 - k;
                if (b.fibers[t].done) continue;
                live = true;
                resume(b, t);
            }
        }
    }
    running = nullptr;
}

// A launch argument as the kernel's parameter type: a device address or a 32-bit value (the
// only kinds the worker passes: worker/cuda/device.py sends ints as uint32).
template <class T>
T parameter(uint64_t raw) {
    if constexpr (std::is_pointer_v<T>) {
        return reinterpret_cast<T>((uintptr_t)raw);
    } else {
        static_assert(std::is_integral_v<T> && sizeof(T) == 4,
                      "a kernel's value parameters are 32-bit integers");
        return static_cast<T>(raw);
    }
}

template <class... P>
struct Launch {
    void (*kernel)(P...);
    uint64_t raw[sizeof...(P) ? sizeof...(P) : 1];

    template <size_t... I>
    void call(std::index_sequence<I...>) {
        kernel(parameter<P>(raw[I])...);
    }
    static void thread(void* self) {
        static_cast<Launch*>(self)->call(std::index_sequence_for<P...>{});
    }
};

template <class... P, class... A>
void launch(void (*kernel)(P...), bool fibers, uint64_t grid, uint64_t block, A... raw) {
    static_assert(sizeof...(P) == sizeof...(A), "the emu_ wrapper passes every parameter");
    Launch<P...> l{kernel, {(uint64_t)raw...}};
    run((uint32_t)grid, (uint32_t)block, &Launch<P...>::thread, &l, fibers);
}

}  // namespace gp_host

inline void __syncthreads() { gp_host::barrier(); }
