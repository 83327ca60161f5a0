"""Errors of the Groth16 engine. Each class docstring is the default message, phrased as the fix."""

from __future__ import annotations

from broker.exceptions import DocumentedError


class Groth16Error(DocumentedError):
    """The Groth16 engine failed: see the log for details."""


class FormatError(Groth16Error):
    """{name} is not a valid {kind} file: {detail}. Make it again with snarkjs (or
    `worker.groth16.builder` / `devsetup` for synthetic circuits)."""


class WrongCurve(FormatError):
    """{name} is for another curve ({found}); this prover runs BLS12-381 only: make the {kind}
    file with snarkjs on the bls12381 curve (`snarkjs powersoftau new bls12381 ...`)."""


class Mismatch(Groth16Error):
    """The witness does not fit the proving key: {detail}. Compute the witness with the circuit
    the key was made for."""


class KeyMissing(Groth16Error):
    """No proving key {path} (sha256 {sha256}): {detail}. Copy the .zkey there (named by its
    sha256), or upload it to the broker as a key resource."""


class KeyDamaged(Groth16Error):
    """The proving key {path} has sha256 {found}, not {sha256} as its name says: replace it with
    the right file."""


class NativeUnavailable(Groth16Error):
    """The native helper could not be built: {detail}. Install a C compiler (apt install gcc)
    or set CC to one."""


class NativeFailed(Groth16Error):
    """The native helper failed in {operation}: {detail}."""


class ProofInvalid(Groth16Error):
    """The proof computed by backend {backend} does not verify ({detail}): the device may be
    faulty, or the key damaged; another attempt (another GPU) may succeed."""


class Cancelled(Groth16Error):
    """The proof was cancelled."""
