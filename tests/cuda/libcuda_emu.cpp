// A host emulation of the CUDA driver library (libcuda.so.1) for the part that pycuda and
// worker/cuda/device.py use, so that the real pycuda runs the worker's CUDA backend on a machine
// without a GPU (tests/integration/test_cuda_pycuda.py). Kernels run as the emu_ functions of
// the kernel files compiled for the host (hostlib.build_kernels), loaded from
// $CUDA_EMU_KERNELS; $CUDA_EMU_SIGNATURES lists each kernel's parameters ("name PIIP":
// P a pointer, I a 32-bit value), read from the .cu sources.
//
// It holds the caller to what a GPU would: a current context for every call that needs one;
// modules that are real cubins (ELF), holding the kernel asked for; a launch's packed argument
// buffer laid out exactly as the kernel's parameters (natural alignment, no bytes left over);
// pointer arguments and copies inside live allocations; memory that is not zeroed. Once the file
// $CUDA_EMU_FAIL_FILE exists, the next launch fails as at an Xid and poisons the context:
// every later call that does work answers CUDA_ERROR_LAUNCH_FAILED, as a real driver does.
// pycuda's other entry points come from a generated file of stubs answering NOT_SUPPORTED.
#include <cuda.h>
#include <dlfcn.h>
#include <elf.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Context {
    bool alive = true;
};

struct Module {
    std::string image;
};

struct Function {
    std::string name;
    std::string kinds;
    void* entry;
};

const size_t TOTAL = 80ull << 30;  // what cuMemGetInfo reports as the card's memory

std::mutex mu;
std::map<uintptr_t, size_t> allocations;  // base -> size, guarded by mu
size_t used = 0;
void* kernels = nullptr;
std::map<std::string, std::string> signatures;
std::once_flag signatures_read;
bool poisoned = false;  // a launch failed: the context is unusable, as after an Xid
thread_local std::vector<Context*> stack;

bool current() { return !stack.empty() && stack.back()->alive; }

// Whether [p, p + n) lies inside one live allocation.
bool live(uintptr_t p, size_t n) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = allocations.upper_bound(p);
    if (it == allocations.begin()) return false;
    --it;
    return p >= it->first && p + n <= it->first + it->second;
}

// The size of an ELF image from its header: the end of its section or program header table.
size_t elf_size(const void* image) {
    const Elf64_Ehdr* h = static_cast<const Elf64_Ehdr*>(image);
    size_t sections = h->e_shoff + (size_t)h->e_shnum * h->e_shentsize;
    size_t programs = h->e_phoff + (size_t)h->e_phnum * h->e_phentsize;
    return sections > programs ? sections : programs;
}

typedef void (*Entry)();

// Calls an emu_ function with n 64-bit arguments (grid, block, then the kernel's).
void call(void* entry, const uint64_t* a, size_t n) {
    typedef uint64_t U;
    switch (n) {
#define CALL(N, ...) \
    case N:          \
        reinterpret_cast<void (*)(__VA_ARGS__)>(entry)
        CALL(3, U, U, U)(a[0], a[1], a[2]); break;
        CALL(4, U, U, U, U)(a[0], a[1], a[2], a[3]); break;
        CALL(5, U, U, U, U, U)(a[0], a[1], a[2], a[3], a[4]); break;
        CALL(6, U, U, U, U, U, U)(a[0], a[1], a[2], a[3], a[4], a[5]); break;
        CALL(7, U, U, U, U, U, U, U)(a[0], a[1], a[2], a[3], a[4], a[5], a[6]); break;
        CALL(8, U, U, U, U, U, U, U, U)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]); break;
        CALL(9, U, U, U, U, U, U, U, U, U)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8]);
        break;
        CALL(10, U, U, U, U, U, U, U, U, U, U)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7],
                                               a[8], a[9]);
        break;
        CALL(11, U, U, U, U, U, U, U, U, U, U, U)(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7],
                                                  a[8], a[9], a[10]);
        break;
#undef CALL
        default:
            fprintf(stderr, "libcuda_emu: no call for %zu arguments\n", n);
            abort();
    }
}

}  // namespace

#define NEED_CONTEXT \
    if (!current()) return CUDA_ERROR_INVALID_CONTEXT
// Calls that do work on the device also fail once the context is poisoned.
#define NEED_WORKING_CONTEXT                           \
    if (!current()) return CUDA_ERROR_INVALID_CONTEXT; \
    if (poisoned) return CUDA_ERROR_LAUNCH_FAILED

extern "C" {

CUresult CUDAAPI cuInit(unsigned int) {
    const char* lib = getenv("CUDA_EMU_KERNELS");
    const char* sigs = getenv("CUDA_EMU_SIGNATURES");
    if (!lib || !sigs) return CUDA_ERROR_NO_DEVICE;
    if (!kernels && !(kernels = dlopen(lib, RTLD_NOW))) {
        fprintf(stderr, "libcuda_emu: %s\n", dlerror());
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    std::call_once(signatures_read, [sigs] {
        std::ifstream in(sigs);
        std::string name, kinds;
        while (in >> name >> kinds) signatures[name] = kinds == "-" ? "" : kinds;
    });
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDriverGetVersion(int* version) {
    *version = CUDA_VERSION;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetCount(int* count) {
    *count = kernels ? 1 : 0;
    return kernels ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
}

CUresult CUDAAPI cuDeviceGet(CUdevice* device, int ordinal) {
    if (!kernels) return CUDA_ERROR_NOT_INITIALIZED;
    if (ordinal != 0) return CUDA_ERROR_INVALID_DEVICE;
    *device = 0;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetName(char* name, int len, CUdevice) {
    snprintf(name, len, "Host emulation");
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceComputeCapability(int* major, int* minor, CUdevice) {
    *major = 9;
    *minor = 0;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetAttribute(int* value, CUdevice_attribute attribute, CUdevice) {
    switch (attribute) {
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *value = 9; break;
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *value = 0; break;
        case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *value = 1024; break;
        case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *value = 1; break;
        default: *value = 0;
    }
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceTotalMem(size_t* bytes, CUdevice) {
    *bytes = TOTAL;
    return CUDA_SUCCESS;
}

#if CUDA_VERSION >= 13000
CUresult CUDAAPI cuCtxCreate(CUcontext* context, CUctxCreateParams*, unsigned int, CUdevice) {
#else
CUresult CUDAAPI cuCtxCreate(CUcontext* context, unsigned int, CUdevice) {
#endif
    Context* c = new Context();
    stack.push_back(c);
    *context = reinterpret_cast<CUcontext>(c);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxPushCurrent(CUcontext context) {
    Context* c = reinterpret_cast<Context*>(context);
    if (!c || !c->alive) return CUDA_ERROR_INVALID_CONTEXT;
    stack.push_back(c);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxPopCurrent(CUcontext* context) {
    if (stack.empty()) return CUDA_ERROR_INVALID_CONTEXT;
    if (context) *context = reinterpret_cast<CUcontext>(stack.back());
    stack.pop_back();
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxGetDevice(CUdevice* device) {
    NEED_CONTEXT;
    *device = 0;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxGetApiVersion(CUcontext, unsigned int* version) {
    *version = CUDA_VERSION;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxSynchronize(void) {
    NEED_WORKING_CONTEXT;
    return CUDA_SUCCESS;  // launches ran to completion on the host
}

CUresult CUDAAPI cuCtxDetach(CUcontext context) {
    Context* c = reinterpret_cast<Context*>(context);
    if (!current() || stack.back() != c) return CUDA_ERROR_INVALID_CONTEXT;  // must be current
    c->alive = false;
    stack.pop_back();
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemAlloc(CUdeviceptr* pointer, size_t bytes) {
    NEED_WORKING_CONTEXT;
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    size_t rounded = (bytes + 255) / 256 * 256;
    void* p = aligned_alloc(256, rounded);
    if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
    memset(p, 0xA5, rounded);  // device memory starts with whatever was there, never zeros
    std::lock_guard<std::mutex> lock(mu);
    allocations[reinterpret_cast<uintptr_t>(p)] = bytes;
    used += rounded;
    *pointer = reinterpret_cast<CUdeviceptr>(p);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemFree(CUdeviceptr pointer) {
    NEED_CONTEXT;
    std::lock_guard<std::mutex> lock(mu);
    auto it = allocations.find(static_cast<uintptr_t>(pointer));
    if (it == allocations.end()) return CUDA_ERROR_INVALID_VALUE;
    used -= (it->second + 255) / 256 * 256;
    allocations.erase(it);
    free(reinterpret_cast<void*>(pointer));
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemGetInfo(size_t* free_bytes, size_t* total) {
    NEED_WORKING_CONTEXT;
    std::lock_guard<std::mutex> lock(mu);
    *free_bytes = TOTAL - used;
    *total = TOTAL;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemcpyHtoD(CUdeviceptr dst, const void* src, size_t bytes) {
    NEED_WORKING_CONTEXT;
    if (!live(dst, bytes)) return CUDA_ERROR_ILLEGAL_ADDRESS;
    memcpy(reinterpret_cast<void*>(dst), src, bytes);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemcpyDtoH(void* dst, CUdeviceptr src, size_t bytes) {
    NEED_WORKING_CONTEXT;
    if (!live(src, bytes)) return CUDA_ERROR_ILLEGAL_ADDRESS;
    memcpy(dst, reinterpret_cast<const void*>(src), bytes);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemcpyDtoD(CUdeviceptr dst, CUdeviceptr src, size_t bytes) {
    NEED_WORKING_CONTEXT;
    if (!live(dst, bytes) || !live(src, bytes)) return CUDA_ERROR_ILLEGAL_ADDRESS;
    memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), bytes);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemsetD32(CUdeviceptr dst, unsigned int value, size_t count) {
    NEED_WORKING_CONTEXT;
    if (!live(dst, 4 * count)) return CUDA_ERROR_ILLEGAL_ADDRESS;
    uint32_t* p = reinterpret_cast<uint32_t*>(dst);
    for (size_t i = 0; i < count; i++) p[i] = value;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuModuleLoadDataEx(CUmodule* module, const void* image, unsigned int,
                                    CUjit_option*, void**) {
    NEED_CONTEXT;
    if (memcmp(image, ELFMAG, SELFMAG) != 0) return CUDA_ERROR_INVALID_IMAGE;  // not a cubin
    Module* m = new Module();
    m->image.assign(static_cast<const char*>(image), elf_size(image));
    *module = reinterpret_cast<CUmodule>(m);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuModuleLoadData(CUmodule* module, const void* image) {
    return cuModuleLoadDataEx(module, image, 0, nullptr, nullptr);
}

CUresult CUDAAPI cuModuleUnload(CUmodule module) {
    delete reinterpret_cast<Module*>(module);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuModuleGetFunction(CUfunction* function, CUmodule module, const char* name) {
    NEED_CONTEXT;
    const Module* m = reinterpret_cast<const Module*>(module);
    std::string section = std::string(".text.") + name;
    section.push_back('\0');
    if (m->image.find(section) == std::string::npos) return CUDA_ERROR_NOT_FOUND;
    auto sig = signatures.find(name);
    void* entry = dlsym(kernels, (std::string("emu_") + name).c_str());
    if (sig == signatures.end() || !entry) {
        fprintf(stderr, "libcuda_emu: %s is in the cubin but has no emulation\n", name);
        return CUDA_ERROR_NOT_FOUND;
    }
    *function = reinterpret_cast<CUfunction>(new Function{name, sig->second, entry});
    return CUDA_SUCCESS;
}

// Legacy, but pycuda's call interface still sets the block shape before cuLaunchKernel.
CUresult CUDAAPI cuFuncSetBlockShape(CUfunction, int x, int y, int z) {
    NEED_CONTEXT;
    return x > 0 && x <= 1024 && y == 1 && z == 1 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

// The host runs any block; CUDA_EMU_MAX_THREADS plays a kernel whose registers allow fewer.
CUresult CUDAAPI cuFuncGetAttribute(int* value, CUfunction_attribute attribute, CUfunction) {
    const char* most = getenv("CUDA_EMU_MAX_THREADS");
    *value = attribute != CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK ? 0 : most ? atoi(most) : 1024;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuLaunchKernel(CUfunction function, unsigned int gx, unsigned int gy,
                                unsigned int gz, unsigned int bx, unsigned int by,
                                unsigned int bz, unsigned int, CUstream, void** params,
                                void** extra) {
    NEED_WORKING_CONTEXT;
    const char* trigger = getenv("CUDA_EMU_FAIL_FILE");
    if (trigger && access(trigger, F_OK) == 0) {
        poisoned = true;
        return CUDA_ERROR_LAUNCH_FAILED;
    }
    const Function* f = reinterpret_cast<const Function*>(function);
    if (gx == 0 || gy != 1 || gz != 1 || bx == 0 || bx > 1024 || by != 1 || bz != 1)
        return CUDA_ERROR_INVALID_VALUE;
    if (params) return CUDA_ERROR_INVALID_VALUE;  // pycuda packs the arguments into `extra`
    const char* buffer = nullptr;
    size_t size = 0;
    for (void** e = extra; e && e[0] != CU_LAUNCH_PARAM_END; e += 2) {
        if (e[0] == CU_LAUNCH_PARAM_BUFFER_POINTER) buffer = static_cast<const char*>(e[1]);
        if (e[0] == CU_LAUNCH_PARAM_BUFFER_SIZE) size = *static_cast<size_t*>(e[1]);
    }
    uint64_t args[16] = {gx, bx};
    size_t n = 2, offset = 0;
    if (f->kinds.size() > 9) return CUDA_ERROR_NOT_SUPPORTED;  // call() takes up to 11 in all
    for (char kind : f->kinds) {
        size_t width = kind == 'P' ? 8 : 4;
        offset = (offset + width - 1) / width * width;
        if (!buffer || offset + width > size) {
            fprintf(stderr, "libcuda_emu: %s: %zu argument bytes, too few\n", f->name.c_str(),
                    size);
            return CUDA_ERROR_INVALID_VALUE;
        }
        uint64_t v = 0;
        memcpy(&v, buffer + offset, width);
        offset += width;
        if (kind == 'P' && !live(v, 1)) return CUDA_ERROR_ILLEGAL_ADDRESS;
        args[n++] = v;
    }
    if (offset != size) {
        fprintf(stderr, "libcuda_emu: %s: %zu argument bytes for %zu of parameters\n",
                f->name.c_str(), size, offset);
        return CUDA_ERROR_INVALID_VALUE;
    }
    call(f->entry, args, n);
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuGetErrorName(CUresult error, const char** name) {
    static char text[32];
    snprintf(text, sizeof text, "CUDA_ERROR_%d", (int)error);
    *name = text;
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuGetErrorString(CUresult error, const char** message) {
    switch (error) {
        case CUDA_ERROR_INVALID_CONTEXT: *message = "invalid device context"; break;
        case CUDA_ERROR_ILLEGAL_ADDRESS: *message = "an illegal memory access was encountered"; break;
        case CUDA_ERROR_NOT_FOUND: *message = "named symbol not found"; break;
        case CUDA_ERROR_INVALID_VALUE: *message = "invalid argument"; break;
        case CUDA_ERROR_OUT_OF_MEMORY: *message = "out of memory"; break;
        case CUDA_ERROR_NO_DEVICE: *message = "no CUDA-capable device is detected"; break;
        case CUDA_ERROR_LAUNCH_FAILED: *message = "unspecified launch failure"; break;
        default: *message = "not supported by the host emulation";
    }
    return CUDA_SUCCESS;
}

}  // extern "C"
