"""The one place product code gets the random generator that feeds DP noise.

Choice: ``numpy.random.Generator(PCG64DXSM(seed))`` with a fresh 256-bit seed from ``os.urandom``
for every round, rather than a keystream derived from AES-CTR. Why that is acceptable here:

* the seed has 256 bits from the operating system's CSPRNG, so the stream cannot be guessed;
* no raw output of the generator is ever disclosed: a node's noise share only travels inside a
  secure-aggregation mask, and what is released is data plus the noise of many nodes, so an observer
  never sees consecutive raw outputs from which PCG's state could be reconstructed;
* a generator is built per round and dropped afterwards, so a state compromise cannot reach back
  into earlier releases (and the node's process memory is already trusted with the raw data);
* PCG64DXSM passes the standard statistical batteries, which is what the *distributional* exactness
  of the samplers (and hence the DP proofs) depends on; numpy's vectorised samplers only accept a
  numpy ``BitGenerator``, and an AES-CTR one would have to be written in C to keep the speed target.

numpy's ``Philox`` (a counter-based generator built from a weakened block-cipher round function)
would be no stronger as a cryptographic claim, so the faster, better-studied PCG64DXSM is used.
A deployment that wants a CSPRNG end to end can swap this function; every sampler takes the
generator as an argument, so nothing else changes.
"""

from __future__ import annotations

import os

import numpy as np

_SEED_BYTES = 32


def secure_generator() -> np.random.Generator:
    """Return a new generator seeded with 256 bits from ``os.urandom`` (use one per round)."""
    seed = int.from_bytes(os.urandom(_SEED_BYTES), "little")
    return np.random.Generator(np.random.PCG64DXSM(seed))
