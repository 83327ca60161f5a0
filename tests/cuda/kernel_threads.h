// CUDA's thread model on the host, so that g++ compiles the kernel files themselves (msm.cu,
// ntt.cu) and runs their kernels as a GPU would: a grid of blocks, each block's threads sharing
// its __shared__ memory, meeting at __syncthreads(), and in warps of 32 for the warp-level
// calls the kernels make (cooperative groups: coalesced_threads, labeled_partition, shfl).
// hostlib.py includes this before a kernel file and wraps every kernel in an emu_ function (the
// C ABI libcuda_emu.cpp and fakedriver.py call).
//
// Each thread of a block is a fiber with its own stack. The block runs its threads one at a
// time, each until it waits (at a barrier or a warp collective) or returns; then the warp
// collectives whose threads have all arrived are carried out, and once every thread waits at
// the barrier (or has returned) it opens. The runs alternate forwards and backwards, so a thread
// that reads what another writes without a barrier between them reads the wrong value in one
// order or the other, and the results show it. coalesced_threads() groups the threads of a warp
// that wait there together: any grouping is one a GPU may make, and the kernels must be right
// for each. What this cannot show: timing, and blocks running at once (they run one after
// another; their only shared state is global memory updated by atomics).
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
// common.cuh takes the device's warp-aggregated atomics, carried out by the functions below.
#define GP_HOST_WARPS 1

namespace gp_host {

constexpr uint32_t MAX_BLOCK = 1024;  // threads per block, as on every CUDA GPU
constexpr uint32_t WARP = 32;
constexpr size_t STACK_BYTES = 256 << 10;

[[noreturn]] inline void fail(const char* what) {
    fprintf(stderr, "kernel_threads: %s\n", what);
    abort();
}

enum class Wait : uint8_t { RUNNABLE, BARRIER, COALESCE, COLLECTIVE, DONE };
enum class Collective : uint8_t { LABEL, SHFL };

struct Fiber {
    jmp_buf entry;   // the top of its stack, where each new thread begins
    jmp_buf resume;  // where it waits
    bool started;
    Wait wait;
    // The warp collective it waits at: its kind, the lanes taking part, what this thread brings
    // (a label, a value to shuffle), the source rank of a shuffle; then what it gets back.
    Collective kind;
    uint32_t group;
    uint64_t value;
    uint32_t source;
    uint64_t result;
};

struct Block {
    jmp_buf scheduler;
    Fiber fibers[MAX_BLOCK];
    uint32_t size;
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
    b->fibers[b->current].wait = Wait::DONE;
    _longjmp(b->scheduler, 1);
}

// The fiber stacks of one host thread, unmapped when it ends (each costs some 2,000 memory
// mappings, and a test process runs kernels from many short-lived threads).
struct StackArea {
    char* base = nullptr;
    size_t bytes = 0;
    ~StackArea() {
        if (base) munmap(base, bytes);
    }
};

// The MAX_BLOCK fibers of this host thread, each on a stack above a guard page that faults on
// overflow, touched only as deep as the kernels go.
__attribute__((noinline)) inline Block& fiber_block() {
    static thread_local Block b;
    static thread_local StackArea area;
    if (area.base) return b;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE), span = page + STACK_BYTES;
    void* m = mmap(nullptr, span * MAX_BLOCK, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) fail("cannot map the fiber stacks");
    char* base = static_cast<char*>(m);
    area.base = base;
    area.bytes = span * MAX_BLOCK;
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
    return b;
}

inline Fiber& self() {
    if (!running) fail("a CUDA thread function called outside a kernel");
    return running->fibers[running->current];
}

// The calling thread waits, and goes on once the scheduler has made it runnable again.
inline void wait(Wait why) {
    Fiber& f = self();
    f.wait = why;
    if (_setjmp(f.resume) == 0) _longjmp(running->scheduler, 1);
}

inline uint32_t lane() { return running->current % WARP; }

// The warp's lanes that meet here, as a mask.
inline uint32_t coalesce() {
    wait(Wait::COALESCE);
    return (uint32_t)self().result;
}

inline uint64_t collective(Collective kind, uint32_t group, uint64_t value, uint32_t source) {
    Fiber& f = self();
    if (!(group >> lane() & 1)) fail("a warp collective over a group without the caller");
    f.kind = kind;
    f.group = group;
    f.value = value;
    f.source = source;
    wait(Wait::COLLECTIVE);
    return self().result;
}

inline uint32_t rank_in(uint32_t group, uint32_t l) {
    return (uint32_t)__builtin_popcount(group & ((1u << l) - 1));
}

// Carries out the collectives of warp w whose lanes have all arrived; whether any was.
inline bool meet(Block& b, uint32_t w) {
    Fiber* lanes = b.fibers + w * WARP;
    const uint32_t count = b.size - w * WARP < WARP ? b.size - w * WARP : WARP;
    bool met = false;
    uint32_t coalesced = 0;
    for (uint32_t l = 0; l < count; l++)
        if (lanes[l].wait == Wait::COALESCE) coalesced |= 1u << l;
    for (uint32_t l = 0; l < count; l++) {
        if (lanes[l].wait == Wait::COALESCE) {
            lanes[l].result = coalesced;
            lanes[l].wait = Wait::RUNNABLE;
            met = true;
        }
    }
    for (uint32_t l = 0; l < count; l++) {
        const Fiber& f = lanes[l];
        if (f.wait != Wait::COLLECTIVE) continue;
        bool all = true;
        for (uint32_t k = 0; k < count; k++)
            if (f.group >> k & 1)
                all = all && lanes[k].wait == Wait::COLLECTIVE && lanes[k].group == f.group &&
                      lanes[k].kind == f.kind;
        if (!all) continue;
        const uint32_t group = f.group;
        const Collective kind = f.kind;
        uint32_t source_lane = WARP;
        for (uint32_t k = 0; k < count; k++)
            if (group >> k & 1 && rank_in(group, k) == f.source) source_lane = k;
        for (uint32_t k = 0; k < count; k++) {
            if (!(group >> k & 1)) continue;
            if (kind == Collective::SHFL) {
                if (source_lane == WARP) fail("shfl from a rank outside the group");
                lanes[k].result = lanes[source_lane].value;
            } else {
                uint32_t same = 0;
                for (uint32_t j = 0; j < count; j++)
                    if (group >> j & 1 && lanes[j].value == lanes[k].value) same |= 1u << j;
                lanes[k].result = same;
            }
        }
        for (uint32_t k = 0; k < count; k++)
            if (group >> k & 1) lanes[k].wait = Wait::RUNNABLE;
        met = true;
    }
    return met;
}

// Runs thread t until it waits or returns. (Not inlined: _setjmp returns twice, which would
// constrain the caller's variables.)
__attribute__((noinline)) inline void resume(Block& b, uint32_t t) {
    Fiber& f = b.fibers[t];
    b.current = t;
    threadIdx = {t, 0, 0};
    if (_setjmp(b.scheduler) != 0) return;
    if (f.started) _longjmp(f.resume, 1);
    f.started = true;
    _longjmp(f.entry, 1);
}

// Runs one block to its end.
inline void run_block(Block& b, uint32_t block) {
    b.size = block;
    for (uint32_t t = 0; t < block; t++) {
        b.fibers[t].started = false;
        b.fibers[t].wait = Wait::RUNNABLE;
    }
    for (bool forwards = true;; forwards = !forwards) {
        for (uint32_t k = 0; k < block; k++) {
            uint32_t t = forwards ? k : block - 1 - k;
            if (b.fibers[t].wait == Wait::RUNNABLE) resume(b, t);
        }
        bool met = false;
        for (uint32_t w = 0; w * WARP < block; w++) met = meet(b, w) || met;
        if (met) continue;
        bool barrier = false;
        for (uint32_t t = 0; t < block; t++) {
            if (b.fibers[t].wait == Wait::COLLECTIVE)
                fail("a warp collective whose group never met (a lane waits elsewhere)");
            barrier = barrier || b.fibers[t].wait == Wait::BARRIER;
        }
        if (!barrier) return;  // every thread has returned
        // Every thread waits at the barrier or has returned (which counts as arrived, as on
        // the GPU): it opens.
        for (uint32_t t = 0; t < block; t++)
            if (b.fibers[t].wait == Wait::BARRIER) b.fibers[t].wait = Wait::RUNNABLE;
    }
}

// Runs body(args) as every thread of a grid x block launch.
inline void run(uint32_t grid, uint32_t block, void (*body)(void*), void* args) {
    if (block == 0 || block > MAX_BLOCK || grid == 0) fail("invalid launch configuration");
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    Block& b = fiber_block();
    b.body = body;
    b.args = args;
    running = &b;
    for (uint32_t g = 0; g < grid; g++) {
        blockIdx = {g, 0, 0};
        run_block(b, block);
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
void launch(void (*kernel)(P...), uint64_t grid, uint64_t block, A... raw) {
    static_assert(sizeof...(P) == sizeof...(A), "the emu_ wrapper passes every parameter");
    Launch<P...> l{kernel, {(uint64_t)raw...}};
    run((uint32_t)grid, (uint32_t)block, &Launch<P...>::thread, &l);
}

}  // namespace gp_host

inline void __syncthreads() { gp_host::wait(gp_host::Wait::BARRIER); }

// The warp-level part of CUDA's cooperative groups that the kernels use.
namespace cooperative_groups {

struct coalesced_group {
    uint32_t mask;  // lanes of the caller's warp

    uint32_t size() const { return (uint32_t)__builtin_popcount(mask); }
    uint32_t thread_rank() const { return gp_host::rank_in(mask, gp_host::lane()); }
    template <class T>
    T shfl(T value, uint32_t source_rank) const {
        static_assert(std::is_integral_v<T> && sizeof(T) <= 8, "shfl of an integer");
        return (T)gp_host::collective(gp_host::Collective::SHFL, mask, (uint64_t)value,
                                      source_rank);
    }
};

inline coalesced_group coalesced_threads() { return {gp_host::coalesce()}; }

template <class Label>
coalesced_group labeled_partition(const coalesced_group& group, Label label) {
    static_assert(std::is_integral_v<Label>, "an integer label");
    return {(uint32_t)gp_host::collective(gp_host::Collective::LABEL, group.mask,
                                          (uint64_t)label, 0)};
}

}  // namespace cooperative_groups

// Atomics: one thread runs at a time.
inline uint32_t atomicAdd(uint32_t* p, uint32_t v) {
    uint32_t old = *p;
    *p = old + v;
    return old;
}

inline uint32_t atomicMax(uint32_t* p, uint32_t v) {
    uint32_t old = *p;
    if (v > old) *p = v;
    return old;
}
