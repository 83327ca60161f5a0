"""What a C2 proof must look like: its size by seal proof type.

A PoRep proof is one Groth16 proof of 192 bytes per partition. The partition count follows the
sector size (filecoin-proofs' `POREP_PARTITIONS`): 10 for 32 GiB and 64 GiB sectors, 1 for the
2 KiB, 8 MiB and 512 MiB ones, in each interactive API version (V1, V1_1,
V1_1_Feat_SyntheticPoRep). Non-interactive PoRep (V1_2_Feat_NonInteractivePoRep) returns a
SnarkPack aggregate of its partition proofs instead, whose size is not a multiple of 192: it is
only checked for being non-empty. A proof type not named here (a later one, or none given) must
be a non-empty multiple of 192 bytes.
"""

from __future__ import annotations

#: Bytes of one partition's Groth16 proof (filecoin-proofs' SINGLE_PARTITION_PROOF_LEN).
PARTITION_PROOF_BYTES = 192

_PARTITIONS_BY_SIZE = {"2KiB": 1, "8MiB": 1, "512MiB": 1, "32GiB": 10, "64GiB": 10}
_INTERACTIVE_VERSIONS = ("V1", "V1_1", "V1_1_Feat_SyntheticPoRep")

#: `registered_proof` of the C1 output (serde writes the enum variant's name) -> partitions.
PARTITIONS: dict[str, int] = {
    f"StackedDrg{size}{version}": count
    for size, count in _PARTITIONS_BY_SIZE.items()
    for version in _INTERACTIVE_VERSIONS
}
#: Proof types whose C2 output is an aggregate of any size.
AGGREGATED = frozenset(
    f"StackedDrg{size}V1_2_Feat_NonInteractivePoRep" for size in _PARTITIONS_BY_SIZE
)


def expected_proof_bytes(registered_proof: str | None) -> int | None:
    """The size of a proof for this seal proof type, or None when it is not fixed here."""
    partitions = PARTITIONS.get(registered_proof or "")
    return None if partitions is None else partitions * PARTITION_PROOF_BYTES


def proof_problem(proof: bytes, registered_proof: str | None) -> str | None:
    """Why `proof` cannot be the C2 proof of a sector of this type; None when it can."""
    if not proof:
        return "it is empty"
    if registered_proof in AGGREGATED:
        return None
    expected = expected_proof_bytes(registered_proof)
    if expected is None and len(proof) % PARTITION_PROOF_BYTES:
        return (f"it has {len(proof)} bytes, not a multiple of the {PARTITION_PROOF_BYTES} of "
                f"a partition's proof (proof type {registered_proof or 'not given'})")
    if expected is not None and len(proof) != expected:
        partitions = expected // PARTITION_PROOF_BYTES
        return (f"it has {len(proof)} bytes, but a {registered_proof} proof has {expected} "
                f"({partitions} partition{'s' if partitions > 1 else ''} of "
                f"{PARTITION_PROOF_BYTES} bytes)")
    return None
