"""The worker's CUDA backend: MSM and NTT kernels for BLS12-381 (kernels/), compiled with
PyCUDA on first use. Importable without pycuda or a GPU; only `backend` needs them, lazily."""
