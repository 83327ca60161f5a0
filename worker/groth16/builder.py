"""Synthetic circuits of a chosen size, with their witness: for tests, benchmarks and the demo.

The circuit is a chain of hash-like rounds x -> (x + c)^5 (three constraints each: u^2, u^4,
u^5 with u = x + c folded into the linear combinations); the result is the public output.
With n_public > 1 the first public input is the chain's start and the others are the round
constants of the first rounds. The constraint count is 2^k - n_public - 1, so that snarkjs's
domain (constraints + public signals + 1, rounded up) is exactly 2^k.
"""

from __future__ import annotations

import dataclasses
import random

from worker.groth16 import field, r1cs
from worker.groth16.r1cs import Constraint, LinearCombination

ONE = 0
OUTPUT = 1
MIN_LOG_SIZE = 3


@dataclasses.dataclass(frozen=True)
class Circuit:
    system: r1cs.R1cs
    witness: list[int]


def chain(log_size: int, n_public: int = 1, seed: int = 0) -> Circuit:
    """A chain circuit whose domain is 2^log_size, and a witness for it."""
    budget = (1 << log_size) - n_public - 1
    if n_public < 1 or budget < 3:
        raise ValueError(f"a domain of 2^{log_size} cannot hold a round and {n_public} "
                         "public signals (need log_size >= 3 and n_public >= 1)")
    rng = random.Random(seed)
    inputs = [rng.randrange(field.R) for _ in range(max(n_public - 1, 1))]
    values = [1, 0, *inputs[:n_public - 1]]  # wire 1, the output, is set at the end
    x_wire = 2 if n_public > 1 else len(values)
    if n_public == 1:
        values.append(inputs[0])  # the chain's start as a private input
    constraints: list[Constraint] = []

    def wire(value: int) -> int:
        values.append(value % field.R)
        return len(values) - 1

    rounds = budget // 3
    for i in range(rounds):
        public_constant = 3 + i if 3 + i < n_public + 1 else None
        c = values[public_constant] if public_constant else rng.randrange(field.R)
        u_lc = ((x_wire, 1), (public_constant, 1)) if public_constant else ((x_wire, 1), (ONE, c))
        u = (values[x_wire] + c) % field.R
        t1 = wire(u * u)
        t2 = wire(values[t1] * values[t1])
        last = i == rounds - 1
        out = OUTPUT if last else wire(values[t2] * u)
        if last:
            values[OUTPUT] = values[t2] * u % field.R
        constraints += [_mul(u_lc, u_lc, t1), _mul(((t1, 1),), ((t1, 1),), t2),
                        _mul(((t2, 1),), u_lc, out)]
        x_wire = out
    for _ in range(budget - 3 * rounds):  # fill the domain: squares of the output
        square = wire(values[OUTPUT] * values[OUTPUT])
        constraints.append(_mul(((OUTPUT, 1),), ((OUTPUT, 1),), square))
    system = r1cs.R1cs(n_wires=len(values), n_outputs=1, n_pub_inputs=n_public - 1,
                       n_prv_inputs=1 if n_public == 1 else 0, constraints=constraints)
    return Circuit(system=system, witness=values)


def _mul(a: LinearCombination, b: LinearCombination, out: int) -> Constraint:
    return Constraint(a=a, b=b, c=((out, 1),))
