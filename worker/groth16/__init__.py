"""The native C2 engine: a Groth16 prover over BLS12-381 that reads and writes snarkjs's files.

- Files: `r1cs`, `wtns`, `zkey` (snarkjs's binary formats, via `binfile`), `proofjson`.
- Proving: `prover.prove(key, witness, backend)` with a backend from `backends` (`cpu` now,
  CUDA later, `reference` for tests); `keycache` loads each key once.
- Checking: `verifier.verify`, `proofjson.verify_proof_json`.
- Synthetic circuits: `builder.chain`, and the INSECURE `devsetup` (`write_demo`).
"""

from __future__ import annotations
