"""Proofs that verify, proofs that must not, and the CPU backend against the reference one."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable

import pytest

from worker.groth16 import (
    backends,
    curve,
    devsetup,
    exceptions,
    field,
    ntt,
    proofjson,
    prover,
    verifier,
    wtns,
    zkey,
)

Demo = Callable[..., devsetup.DemoFiles]


@pytest.fixture(scope="module")
def cpu() -> backends.Backend:
    return backends.create("cpu", threads=2)


def _load(files: devsetup.DemoFiles) -> tuple[zkey.ProvingKey, field.FrVector]:
    return zkey.read(files.zkey.read_bytes()), wtns.read(files.wtns.read_bytes())


@pytest.mark.parametrize(("log_size", "n_public"), [(4, 1), (5, 3), (8, 2), (10, 4)])
def test_proofs_verify(groth16_demo: Demo, cpu: backends.Backend, log_size: int,
                       n_public: int) -> None:
    key, witness = _load(groth16_demo(log_size, n_public))
    timings: dict[str, float] = {}
    proof, public = prover.prove(key, witness, cpu, timings=timings)
    assert public == field.from_vector(witness[1:n_public + 1])
    assert verifier.verify(key.verification_key(), proof, public)
    assert {"quotient", "msm_g1", "msm_g2"} <= set(timings)


def test_two_proofs_differ_and_both_verify(groth16_demo: Demo, cpu: backends.Backend) -> None:
    key, witness = _load(groth16_demo(4, 2))
    first, public = prover.prove(key, witness, cpu)
    second, _ = prover.prove(key, witness, cpu)
    assert first != second  # fresh r and s
    assert verifier.verify(key.verification_key(), second, public)


def test_tampered_proofs_and_inputs_fail(groth16_demo: Demo, cpu: backends.Backend) -> None:
    key, witness = _load(groth16_demo(5, 3))
    vk = key.verification_key()
    proof, public = prover.prove(key, witness, cpu)
    g1, g2 = curve.g1_generator(), curve.g2_generator()
    assert not verifier.verify(vk, dataclasses.replace(proof, a=g1), public)
    assert not verifier.verify(vk, dataclasses.replace(proof, b=g2), public)
    assert not verifier.verify(vk, dataclasses.replace(proof, c=g1), public)
    assert not verifier.verify(vk, dataclasses.replace(proof, c=(g1[0], g1[1] + 1)), public)
    assert not verifier.verify(vk, proof, [public[0], (public[1] + 1) % field.R, public[2]])
    assert not verifier.verify(vk, proof, public[:2])
    assert not verifier.verify(vk, proof, [public[0] + field.R, *public[1:]])


def test_a_witness_that_does_not_satisfy_gives_no_valid_proof(
    groth16_demo: Demo, cpu: backends.Backend
) -> None:
    key, witness = _load(groth16_demo(4, 1))
    values = field.from_vector(witness)
    values[-1] = (values[-1] + 1) % field.R
    proof, public = prover.prove(key, field.to_vector(values), cpu)
    assert not verifier.verify(key.verification_key(), proof, public)


def test_witness_of_the_wrong_length(groth16_demo: Demo, cpu: backends.Backend) -> None:
    key, witness = _load(groth16_demo(4, 1))
    with pytest.raises(exceptions.Mismatch, match="has 15 values, the key's circuit 16"):
        prover.prove(key, witness[:-1], cpu)


def test_should_stop_cancels(groth16_demo: Demo, cpu: backends.Backend) -> None:
    key, witness = _load(groth16_demo(4, 1))
    with pytest.raises(exceptions.Cancelled):
        prover.prove(key, witness, cpu, should_stop=lambda: True)


def test_cpu_backend_matches_reference_op_by_op(groth16_demo: Demo,
                                               cpu: backends.Backend) -> None:
    reference = backends.create("reference")
    key, witness = _load(groth16_demo(6, 2))
    domain = ntt.Domain(key.log_domain)
    values = field.to_vector([random.Random(1).randrange(field.R) for _ in range(domain.size)])
    assert (cpu.intt(domain, values) == reference.intt(domain, values)).all()
    assert (cpu.coset_ntt(domain, values) == reference.coset_ntt(domain, values)).all()
    ours, theirs = cpu.load(key), reference.load(key)
    assert cpu.msm_g1(ours.h, values) == reference.msm_g1(theirs.h, values)
    assert cpu.msm_g1(ours.a, witness) == reference.msm_g1(theirs.a, witness)
    assert cpu.msm_g2(ours.b2, witness) == reference.msm_g2(theirs.b2, witness)
    proof, public = prover.prove(theirs, witness, reference)
    assert verifier.verify(key.verification_key(), proof, public)


def test_proof_json_round_trip(groth16_demo: Demo, cpu: backends.Backend) -> None:
    files = groth16_demo(4, 2)
    key, witness = _load(files)
    proof, public = prover.prove(key, witness, cpu)
    document = proofjson.result_document(proof, public)
    assert proofjson.read_proof(document) == (proof, public)
    vk = proofjson.read_verification_key(files.verification_key.read_text())
    assert vk == key.verification_key()
    assert proofjson.verify_proof_json(vk, document)
    data = json.loads(document)
    assert data["proof"]["protocol"] == "groth16" and data["proof"]["curve"] == "bls12381"
    assert data["proof"]["pi_a"][2] == "1" and data["proof"]["pi_b"][2] == ["1", "0"]
    assert proofjson.verify_proof_json(vk, json.dumps(data["proof"]), json.dumps(data["public"]))
    data["public"][0] = str(int(data["public"][0]) + 1)
    assert not proofjson.verify_proof_json(vk, json.dumps(data))


@pytest.mark.parametrize("document", [
    b"not json", b"[]", b'{"proof": {}}', b'{"proof": {"pi_a": []}, "public": []}',
    b'{"proof": {"pi_a": ["1", "2", "1"], "pi_b": [], "pi_c": []}, "public": ["x"]}',
    b'{"proof": {"protocol": "plonk"}, "public": []}',
    b'{"proof": {}, "public": [' + b"9" * 5000 + b"]}",  # past Python's digit limit
    b'{"proof": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # past its nesting limit
])
def test_malformed_proof_documents_do_not_verify(groth16_demo: Demo, document: bytes) -> None:
    vk = zkey.read(groth16_demo(4, 1).zkey.read_bytes()).verification_key()
    assert not proofjson.verify_proof_json(vk, document)


@pytest.mark.slow
def test_proof_of_2_16_constraints(groth16_demo: Demo, cpu: backends.Backend) -> None:
    key, witness = _load(groth16_demo(16, 2))
    proof, public = prover.prove(key, witness, cpu)
    assert verifier.verify(key.verification_key(), proof, public)


@pytest.mark.parametrize("log_size", [0, 1, 3, 12])
def test_dev_setup_lagrange_values_interpolate(log_size: int) -> None:
    # L_j(tau) by the inverse NTT of tau's powers equals the textbook formula
    # (tau^n - 1) / n * w^j / (tau - w^j), and interpolates 1 (and x, from n = 2) at tau
    tau, n = random.Random(log_size).randrange(field.R), 1 << log_size
    got = devsetup.lagrange_at(tau, log_size)
    w = field.root_of_unity(log_size)
    factor = (pow(tau, n, field.R) - 1) * pow(n, -1, field.R) % field.R
    want = [factor * pow(w, j, field.R) * pow(tau - pow(w, j, field.R), -1, field.R) % field.R
            for j in range(min(n, 64))]
    assert got[:64] == want
    assert sum(got) % field.R == 1
    if n > 1:
        assert sum(v * pow(w, j, field.R) for j, v in enumerate(got)) % field.R == tau
