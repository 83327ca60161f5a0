"""The native C2 engine: a Groth16 prover over BLS12-381 that reads and writes snarkjs's files.

- Files: `r1cs`, `wtns`, `zkey` (snarkjs's binary formats, via `binfile`), `proofjson`.
- Proving: `prover.prove(key, witness, backend)` with a backend from `backends` (`cpu` now,
  CUDA later, `reference` for tests); `keycache` loads each key once.
- Checking: `verifier.verify`, `proofjson.verify_proof_json`.
- Synthetic circuits: `builder.chain`, and the INSECURE `devsetup` (`write_demo`).
"""

from __future__ import annotations

from worker.groth16.devsetup import DemoFiles, write_demo
from worker.groth16.keycache import install as install_key
from worker.groth16.proofjson import read_verification_key, verify_proof_json
from worker.groth16.prover import prove

__all__ = ["DemoFiles", "install_key", "prove", "read_verification_key", "verify_proof_json",
           "write_demo"]
