"""Pairwise PSI cardinality with DP dummies, relayed by the coordinator (DESIGN §8 ``overlap``).

The protocol, for a pair of parties A (set X) and B (set Y); everything goes through the
coordinator, because nodes only dial out. ``H`` is ristretto255's hash-to-group of (identifier
kind, normalised identifier); ``g`` the generator; ``a``, ``b`` fresh scalars per job AND per pair
(one list per pair: the same ``a`` on two lists would let the coordinator intersect them and tell
real elements from dummies).

Stage 1 (blind). A draws ``d_A, m_A`` (``noise``), ``d_A`` scalars ``r_i`` and sends
    ``P_A = g^a``  and  ``U_A = shuffle(H(X)^a  ∪  {g^{r_i}}  ∪  {m_A random elements})``.
B sends ``P_B``, ``U_B`` alike (scalars ``s_j``).
Stage 2 (reblind). The coordinator relays ``(P_B, U_B)`` to A and ``(P_A, U_A)`` to B. A sends
    ``V_A = shuffle(U_B^a  ∪  {P_B^{r_i}}  ∪  {2T_A - d_A random elements})``,
B sends ``V_B = shuffle(U_A^b ∪ {P_A^{s_j}} ∪ {2T_B - d_B random})``.
The coordinator counts ``c = |V_A ∩ V_B|``. Matches: ``H(x)^{ab}`` for every ``x ∈ X ∩ Y``; A's
dummies ``g^{r_i b}`` (B raised ``g^{r_i}``, A computed ``P_B^{r_i}``); B's ``g^{s_j a}``. Random
elements match nothing except with probability ~n²/2^252. So ``c = |X ∩ Y| + d_A + d_B``, and
the released estimate is ``c - T_A - T_B`` with an exact interval (``noise.interval``).

Who sees what.
* The coordinator sees ``P_A, P_B, U_A, U_B, V_A, V_B``: uniformly random-looking elements (DDH
  in ristretto255, ``H`` a random oracle). It cannot invert them, test a guessed identifier
  (that needs ``a`` or ``b``), link ``U_A`` to ``V_B`` (both are shuffled and one scalar apart),
  or tell a dummy from a real element: ``g^{r_i}`` and ``H(x)^a`` are both uniform, and the
  matched pairs ``(g^{r_i b}, P_B^{r_i})`` are equal exactly as real ones are. What it learns is
  the sizes ``|U_A| = |X| + d_A + m_A``, ``|V_A| = |U_B| + 2T_A`` (public given ``|U_B|``) and ``c``.
* B sees ``P_A`` and ``U_A`` only: A's blinded set, padded, shuffled. Without ``a`` it learns
  nothing of X but ``|U_A|``; it never sees ``V_A`` or the count, so it never learns which of its
  own customers are shared. A sees the mirror image.
* Raw identifiers and the vault's blind index (HMAC under a node's own key) never leave the node.

Differential privacy, each party by its own noise alone. Take the coordinator's view as a
function of A's data, even if B's dummies are known to it (B colluding): it is a function of
    ``(|X \\ Y| + m_A,  |X ∩ Y| + d_A)``  (``|U_A| - c`` minus B's known dummies, and ``c`` minus them),
with ``|V_A|`` constant. Adding or removing one customer of A changes exactly ONE of the two
coordinates by one (whether or not B holds it). ``d_A`` and ``m_A`` are independent discrete
Gaussians of variance σ², so one pair costs A ``1/(2σ²)`` zCDP, and ``k`` pairs (independent
noise per pair, one customer in every pair) ``k/(2σ²)``; truncating at ±T (never a negative
number of dummies) adds the truncation mass to δ. B's view ``|U_A|`` is post-processing of the
first coordinate plus independent noise; the analyst's result is post-processing of ``c``. A
filter (a segment, a label) only changes which set X is; repeated jobs compose in the node's
budget, and the policy caps how many overlap jobs run per period.

What is not claimed: a party that deviates (sends crafted elements, reuses scalars) or a
coordinator colluding with a party beyond honest-but-curious. A malformed element is refused by
libsodium; sizes are checked against the frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tessera.core.dp import secure_generator
from tessera.core.errors import InvalidRequest
from tessera.core.psi import group
from tessera.core.psi.noise import DummyPlan, draw_counts
from tessera.core.psi.parallel import Blinder

E = group.ELEMENT_BYTES


def shuffle(elements: bytes) -> bytes:
    """A uniformly random order (argsort of 64-bit CSPRNG keys; ties have probability ~n²/2^65)."""
    n = len(elements) // E
    if n < 2:
        return elements
    keys = secure_generator().words(n)
    rows = np.frombuffer(elements, dtype=np.uint8).reshape(n, E)
    return rows[np.argsort(keys, kind="stable")].tobytes()


@dataclass
class PairSide:
    """One party's secrets for one pair of one job (memory only, dropped when the job ends)."""

    scalar: bytes = field(repr=False)
    public: bytes
    matched: list[bytes] = field(repr=False)  # the r_i of the dummies that will match
    cap: int  # T: the reblinded list carries exactly 2T extra elements

    @classmethod
    def new(cls, plan: DummyPlan, *, rng: np.random.Generator) -> tuple[PairSide, int]:
        """A fresh side and its ``m`` (non-matching dummies of the blinded list)."""
        d, m = (int(x) for x in draw_counts(plan, 2, rng=rng))
        scalar = group.random_scalar()
        side = cls(
            scalar=scalar,
            public=group.base_mult(scalar),
            matched=[group.random_scalar() for _ in range(d)],
            cap=plan.cap,
        )
        return side, m

    def blinded(
        self, kind: str, values: Sequence[str], *, extra: int, blinder: Blinder, hashed: bytes | None = None
    ) -> bytes:
        """Stage 1: ``shuffle(H(values)^a ∪ {g^{r_i}} ∪ {extra random})``; values must be distinct.
        ``hashed``: ``H(values)`` already computed (once per job for all of a node's pairs)."""
        if hashed is None:
            real = blinder.hash_and_blind(self.scalar, kind, values)
        else:
            real = blinder.blind(self.scalar, hashed)
        dummies = b"".join(group.base_mult(r) for r in self.matched)
        return shuffle(real + dummies + group.random_elements(extra))

    def reblinded(self, partner_public: bytes, partner_list: bytes, *, blinder: Blinder) -> bytes:
        """Stage 2: ``shuffle(U^a ∪ {P^{r_i}} ∪ {2T - d random})``."""
        if not group.is_valid(partner_public):
            raise InvalidRequest("the partner's public element is not a valid group element")
        raised = blinder.blind(self.scalar, partner_list)
        dummies = b"".join(group.blind(r, partner_public) for r in self.matched)
        pad = group.random_elements(2 * self.cap - len(self.matched))
        return shuffle(raised + dummies + pad)


def count_matches(left: bytes, right: bytes) -> int:
    """``|left ∩ right|`` of two lists of distinct elements (the coordinator's only computation)."""
    if len(left) % E or len(right) % E:
        raise InvalidRequest("a reblinded list is not a whole number of group elements")
    small, large = (left, right) if len(left) <= len(right) else (right, left)
    seen = {small[i : i + E] for i in range(0, len(small), E)}
    return sum(1 for i in range(0, len(large), E) if large[i : i + E] in seen)
