"""The worker's CUDA backend for Groth16 over BLS12-381.

- kernels/: CUDA C. field.cuh (Fp, Fr: Montgomery, 32-bit limbs), fp2.cuh, curve.cuh (XYZZ
  points), msm.cuh/msm.cu (Pippenger: signed digits, counting sort, chunked bucket sums,
  bucket weighing), ntt.cuh/ntt.cu (radix-2 NTT in shared-memory tiles, coset, a*b - c, the
  constraints' values A.w and B.w).
  Each kernel's per-thread work is a __host__ __device__ function, so tests compile the same
  code with g++ and run every kernel on the host (tests/cuda/).
- sources, compiler: the kernel files as one text each, compiled by nvcc through pycuda for the
  GPU found and cached on disk by hash.
- device (pycuda), msm, ntt, constraints: the launch sequences; backend: the Backend interface of
  worker.groth16.backends; select, plan: pure policy (which backend, MSM window and chunking).

Importable without pycuda or a GPU; only `device` imports pycuda, when a Device is made.
"""
