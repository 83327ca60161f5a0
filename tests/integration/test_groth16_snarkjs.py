"""Interoperability with snarkjs 0.7.6 (installed by `./dev test` into .tools/node_modules):
snarkjs verifies our proofs, we verify its proofs, and we prove with a key `snarkjs groth16
setup` made. Without snarkjs these skip locally and fail under CI=true."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
from collections.abc import Callable

import pytest

from worker.groth16 import backends, devsetup, proofjson, prover, wtns, zkey

Demo = Callable[..., devsetup.DemoFiles]
ROOT = pathlib.Path(__file__).resolve().parents[2]
SNARKJS = ROOT / ".tools" / "node_modules" / ".bin" / "snarkjs"


@pytest.fixture(scope="module")
def snarkjs() -> Callable[..., subprocess.CompletedProcess[str]]:
    if not SNARKJS.exists():
        message = f"snarkjs is not installed at {SNARKJS}: run ./dev test (it needs npm)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)

    def run(*args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(SNARKJS), *map(str, args)], capture_output=True, text=True,
                              timeout=120, check=False)
        if check and done.returncode != 0:
            pytest.fail(f"snarkjs {args[:2]} failed: {done.stdout[-800:]} {done.stderr[-800:]}")
        return done

    return run


def _prove_files(zkey_path: pathlib.Path, wtns_path: pathlib.Path,
                 out: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    key = zkey.read(zkey_path.read_bytes())
    proof, public = prover.prove(key, wtns.read(wtns_path.read_bytes()), backends.create("cpu"))
    proof_path, public_path = out / "proof.json", out / "public.json"
    proof_path.write_text(json.dumps(proofjson.proof_json(proof)))
    public_path.write_text(json.dumps(proofjson.public_json(public)))
    return proof_path, public_path


@pytest.mark.parametrize(("log_size", "n_public"), [(4, 1), (9, 3)])
def test_snarkjs_verifies_our_proofs(groth16_demo: Demo, snarkjs: Callable[..., object],
                                     tmp_path: pathlib.Path, log_size: int,
                                     n_public: int) -> None:
    files = groth16_demo(log_size, n_public)
    proof, public = _prove_files(files.zkey, files.wtns, tmp_path)
    done = snarkjs("groth16", "verify", files.verification_key, public, proof)
    assert "OK" in done.stdout  # type: ignore[attr-defined]
    signals = json.loads(public.read_text())
    signals[-1] = str(int(signals[-1]) + 1)
    public.write_text(json.dumps(signals))
    done = snarkjs("groth16", "verify", files.verification_key, public, proof, check=False)
    assert done.returncode != 0  # type: ignore[attr-defined]


def test_we_verify_snarkjs_proofs(groth16_demo: Demo, snarkjs: Callable[..., object],
                                  tmp_path: pathlib.Path) -> None:
    files = groth16_demo(8, 2)
    snarkjs("groth16", "prove", files.zkey, files.wtns, tmp_path / "p.json",
            tmp_path / "s.json")
    vk = proofjson.read_verification_key(files.verification_key.read_text())
    proof, public = (tmp_path / "p.json").read_text(), (tmp_path / "s.json").read_text()
    assert proofjson.verify_proof_json(vk, proof, public)
    tampered = json.loads(public)
    tampered[0] = "1"
    assert not proofjson.verify_proof_json(vk, proof, json.dumps(tampered))


def test_verification_key_matches_snarkjs_export(groth16_demo: Demo,
                                                 snarkjs: Callable[..., object],
                                                 tmp_path: pathlib.Path) -> None:
    files = groth16_demo(5, 3)
    snarkjs("zkey", "export", "verificationkey", files.zkey, tmp_path / "vk.json")
    theirs = json.loads((tmp_path / "vk.json").read_text())
    theirs.pop("vk_alphabeta_12")
    assert json.loads(files.verification_key.read_text()) == theirs


def test_we_prove_with_a_snarkjs_setup_key(groth16_demo: Demo, snarkjs: Callable[..., object],
                                           tmp_path: pathlib.Path) -> None:
    # Given a powers-of-tau ceremony on bls12381 and a key made by `snarkjs groth16 setup`
    files = groth16_demo(6, 3)
    snarkjs("powersoftau", "new", "bls12381", 7, tmp_path / "pot0.ptau")
    snarkjs("powersoftau", "contribute", tmp_path / "pot0.ptau", tmp_path / "pot1.ptau",
            "-e=gpuproxy test entropy")
    snarkjs("powersoftau", "prepare", "phase2", tmp_path / "pot1.ptau", tmp_path / "pot.ptau")
    snarkjs("groth16", "setup", files.r1cs, tmp_path / "pot.ptau", tmp_path / "k0.zkey")
    snarkjs("zkey", "contribute", tmp_path / "k0.zkey", tmp_path / "k.zkey", "-e=more entropy")
    snarkjs("zkey", "export", "verificationkey", tmp_path / "k.zkey", tmp_path / "vk.json")
    # When we prove with it
    proof, public = _prove_files(tmp_path / "k.zkey", files.wtns, tmp_path)
    # Then snarkjs and we both accept the proof
    snarkjs("groth16", "verify", tmp_path / "vk.json", public, proof)
    vk = proofjson.read_verification_key((tmp_path / "vk.json").read_text())
    assert proofjson.verify_proof_json(vk, proof.read_text(), public.read_text())
    assert zkey.read((tmp_path / "k.zkey").read_bytes()).verification_key() == vk
