"""snarkjs's JSON: proof.json, public.json, verification_key.json.

Numbers are decimal strings. A G1 point is [x, y, "1"], a G2 point [[x0, x1], [y0, y1], ["1",
"0"]] (projective with z = 1; infinity is ["0", "1", "0"]). The groth16 executor returns
{"proof": <proof.json>, "public": <public.json>} as its result.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from worker.groth16 import curve, exceptions, field, verifier
from worker.groth16.verifier import Proof, VerificationKey

CURVE = "bls12381"


def g1_json(p: curve.G1) -> list[str]:
    if p == curve.G1_ZERO:
        return ["0", "1", "0"]
    return [str(p[0]), str(p[1]), "1"]


def g2_json(p: curve.G2) -> list[list[str]]:
    if p == curve.G2_ZERO:
        return [["0", "0"], ["1", "0"], ["0", "0"]]
    return [[str(p[0][0]), str(p[0][1])], [str(p[1][0]), str(p[1][1])], ["1", "0"]]


def proof_json(proof: Proof) -> dict[str, Any]:
    return {"pi_a": g1_json(proof.a), "pi_b": g2_json(proof.b), "pi_c": g1_json(proof.c),
            "protocol": "groth16", "curve": CURVE}


def public_json(public: Sequence[int]) -> list[str]:
    return [str(x) for x in public]


def result_document(proof: Proof, public: Sequence[int]) -> bytes:
    """The groth16 executor's result: {"proof": proof.json, "public": public.json}."""
    doc = {"proof": proof_json(proof), "public": public_json(public)}
    return json.dumps(doc, indent=1).encode()


def verification_key_json(vk: VerificationKey) -> dict[str, Any]:
    """verification_key.json as `snarkjs zkey export verificationkey` writes it, less
    vk_alphabeta_12 (which `snarkjs groth16 verify` does not read)."""
    return {"protocol": "groth16", "curve": CURVE, "nPublic": vk.n_public,
            "vk_alpha_1": g1_json(vk.alpha1), "vk_beta_2": g2_json(vk.beta2),
            "vk_gamma_2": g2_json(vk.gamma2), "vk_delta_2": g2_json(vk.delta2),
            "IC": [g1_json(p) for p in vk.ic]}


def read_verification_key(document: str | bytes | Mapping[str, Any]) -> VerificationKey:
    data = _load(document, "verification_key.json")
    try:
        _check_protocol(data, "verification_key.json")
        return VerificationKey(
            alpha1=_g1(data["vk_alpha_1"]), beta2=_g2(data["vk_beta_2"]),
            gamma2=_g2(data["vk_gamma_2"]), delta2=_g2(data["vk_delta_2"]),
            ic=tuple(_g1(p) for p in data["IC"]),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise _error("verification_key.json", f"{exc!r}") from None


def read_proof(
    proof: str | bytes | Mapping[str, Any], public: str | bytes | Sequence[Any] | None = None
) -> tuple[Proof, list[int]]:
    """A proof and its public signals, from proof.json and public.json or from the
    executor's {"proof": ..., "public": [...]}."""
    data = _load(proof, "proof.json")
    if public is None:
        if "proof" not in data or "public" not in data:
            raise _error("proof.json", "no public signals: give public.json")
        data, public = data["proof"], data["public"]
    try:
        signals = json.loads(public) if isinstance(public, str | bytes) else public
        _check_protocol(data, "proof.json")
        parsed = Proof(a=_g1(data["pi_a"]), b=_g2(data["pi_b"]), c=_g1(data["pi_c"]))
        return parsed, [_number(x) for x in signals]
    except (KeyError, TypeError, ValueError, IndexError, RecursionError) as exc:
        raise _error("proof.json", f"{exc!r}") from None


def verify_proof_json(
    vk: VerificationKey,
    proof: str | bytes | Mapping[str, Any],
    public: str | bytes | Sequence[Any] | None = None,
) -> bool:
    """Whether a snarkjs proof.json verifies; the public signals come from `public`
    (public.json) or, when it is None, from the document {"proof": ..., "public": [...]}
    that the groth16 executor returns. A malformed document does not verify."""
    try:
        parsed, signals = read_proof(proof, public)
    except exceptions.FormatError:
        return False
    return verifier.verify(vk, parsed, signals)


def _load(document: str | bytes | Mapping[str, Any], name: str) -> Mapping[str, Any]:
    if isinstance(document, Mapping):
        return document
    try:
        data = json.loads(document)
    except (ValueError, RecursionError) as exc:  # not JSON, or a number or nesting too large
        raise _error(name, f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _error(name, "not a JSON object")
    return data


def _check_protocol(data: Mapping[str, Any], name: str) -> None:
    if data.get("protocol", "groth16") != "groth16":
        raise _error(name, f"protocol {data['protocol']!r}, not groth16")
    if str(data.get("curve", CURVE)).lower().replace("_", "") not in (CURVE, "bls12381"):
        raise _error(name, f"curve {data['curve']!r}, not {CURVE}")


def _number(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{value!r} is not a number")
    number = int(value)
    if not 0 <= number < max(field.Q, field.R):
        raise ValueError(f"{number} is out of range")
    return number


def _g1(value: Any) -> curve.G1:
    x, y, z = (_number(v) for v in value)
    if z == 0:
        return curve.G1_ZERO
    if z != 1:
        raise ValueError("G1 point is not affine (z != 1)")
    return (x, y)


def _g2(value: Any) -> curve.G2:
    (x0, x1), (y0, y1), (z0, z1) = ([_number(v) for v in pair] for pair in value)
    if (z0, z1) == (0, 0):
        return curve.G2_ZERO
    if (z0, z1) != (1, 0):
        raise ValueError("G2 point is not affine (z != 1)")
    return ((x0, x1), (y0, y1))


def _error(name: str, detail: str) -> exceptions.FormatError:
    return exceptions.FormatError(name=name, kind="snarkjs JSON", detail=detail)
