"""What a curious or faulty coordinator (or a stray replay) must not get away with."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from tessera.core.errors import CryptoError, InvalidRequest
from tessera.core.secagg import BindingMismatch, ClientState, RoundAborted, StageError
from tessera.core.secagg import messages as m
from tessera.core.secagg.keys import EpochKeys
from tessera.core.types import Stage


def _swap_ad(roster: m.KeyRoster, node: str, **changes: Any) -> m.KeyRoster:
    ads = tuple(dataclasses.replace(a, **changes) if a.node_id == node else a for a in roster.advertisements)
    return m.KeyRoster(roster.binding, ads)


def test_substituted_advertised_key_is_refused(make_epoch: Callable[..., Any]) -> None:
    r = make_epoch(4, threshold=3)
    roster = r.advertise()
    attacker = EpochKeys.generate()
    forged = _swap_ad(roster, "n2", mask_public=attacker.mask_public)
    with pytest.raises(CryptoError, match="invalid signature"):
        r.clients["n0"].share_keys(forged)
    assert r.clients["n0"].state is ClientState.FAILED


def test_unsigned_advertised_key_is_refused(make_epoch: Callable[..., Any]) -> None:
    r = make_epoch(4, threshold=3)
    with pytest.raises(CryptoError, match="not signed"):
        r.clients["n0"].share_keys(_swap_ad(r.advertise(), "n3", signature=b""))


def test_own_key_substitution_is_refused(make_epoch: Callable[..., Any]) -> None:
    r = make_epoch(4, threshold=3)
    roster = r.advertise()
    other = next(a for a in roster.advertisements if a.node_id == "n1")
    with pytest.raises(CryptoError):
        r.clients["n0"].share_keys(_swap_ad(roster, "n0", mask_public=other.mask_public))


def test_advertisement_from_another_epoch_is_refused(make_epoch: Callable[..., Any]) -> None:
    old, new = make_epoch(4, threshold=3, epoch=1), make_epoch(4, threshold=3, epoch=2)
    old_roster, new_roster = old.advertise(), new.advertise()
    stale = next(a for a in old_roster.advertisements if a.node_id == "n3")
    replayed = m.KeyRoster(
        new_roster.binding, tuple(stale if a.node_id == "n3" else a for a in new_roster.advertisements)
    )
    with pytest.raises(CryptoError):
        new.clients["n0"].share_keys(replayed)


def test_peers_with_other_parameters_are_refused(make_epoch: Callable[..., Any]) -> None:
    # A coordinator that hands one node another threshold: its advertisement is signed over other
    # parameters, so every peer refuses it before any share leaves.
    a, b = make_epoch(5, threshold=3), make_epoch(5, threshold=4)
    roster = a.advertise()
    other = next(ad for ad in b.advertise().advertisements if ad.node_id == "n4")
    mixed = m.KeyRoster(
        roster.binding, tuple(other if ad.node_id == "n4" else ad for ad in roster.advertisements)
    )
    with pytest.raises(CryptoError, match="other security parameters"):
        a.clients["n0"].share_keys(mixed)


def test_replayed_messages_from_another_epoch_are_refused(make_epoch: Callable[..., Any]) -> None:
    old, new = make_epoch(4, threshold=3, epoch=1, seed=1), make_epoch(4, threshold=3, epoch=2, seed=2)
    old_forwarded = old.share(old.advertise())
    new_forwarded = new.share(new.advertise())
    # Node side: the stale message is refused and the node still accepts the right one.
    with pytest.raises(BindingMismatch):
        new.clients["n0"].masked_input(old_forwarded["n0"], new.inputs["n0"], 1)
    assert new.clients["n0"].state is ClientState.SHARED
    # ... and a task for another round of the right epoch too.
    with pytest.raises(BindingMismatch):
        new.clients["n0"].masked_input(new_forwarded["n0"], new.inputs["n0"], 2)
    # Coordinator side: a masked input from epoch 1 does not count in epoch 2.
    stale = old.clients["n1"].masked_input(old_forwarded["n1"], old.inputs["n1"], 1)
    with pytest.raises(BindingMismatch):
        new.server.receive_masked_input(stale, peer="n1")
    outcome = new.unmask(new.sign(new.mask_inputs(new_forwarded)))
    assert outcome.result.total.tolist() == new.expected_sum(new.nodes)


def test_out_of_order_and_repeated_steps_are_refused(make_epoch: Callable[..., Any]) -> None:
    r = make_epoch(4, threshold=3)
    roster = r.advertise()
    with pytest.raises(StageError):
        r.clients["n0"].unmask(m.UnmaskRequest(r.config.binding(Stage.UNMASK), tuple(r.nodes)))
    with pytest.raises(StageError):
        r.clients["n0"].consistency(
            m.ConsistencyRequest(r.config.binding(Stage.CONSISTENCY_CHECK), tuple(r.nodes))
        )
    with pytest.raises(StageError):
        r.clients["n0"].advertise()
    shares = r.clients["n0"].share_keys(roster)
    r.server.receive_shares(shares, peer="n0")
    with pytest.raises(StageError):  # the same node twice
        r.server.receive_shares(shares, peer="n0")
    with pytest.raises(StageError):  # a stage that is not open yet
        r.server.close_masked_inputs()
    with pytest.raises(StageError):
        r.server.close_consistency()


def test_wrong_node_is_refused(make_epoch: Callable[..., Any]) -> None:
    r = make_epoch(4, threshold=3)
    forwarded = r.share(r.advertise())
    with pytest.raises(BindingMismatch):
        r.clients["n0"].masked_input(forwarded["n1"], r.inputs["n0"], 1)
    masked = r.clients["n0"].masked_input(forwarded["n0"], r.inputs["n0"], 1)
    with pytest.raises(BindingMismatch):
        r.server.receive_masked_input(masked, peer="n1")


@pytest.mark.parametrize("attack", ["flip", "misroute"])
def test_tampered_share_ciphertext_is_refused(make_epoch: Callable[..., Any], attack: str) -> None:
    r = make_epoch(4, threshold=3)
    fwd = r.share(r.advertise())["n0"]
    (s1, c1), (s2, c2) = fwd.ciphertexts[:2]
    if attack == "flip":
        cts = ((s1, c1[:5] + bytes([c1[5] ^ 0x80]) + c1[6:]), *fwd.ciphertexts[1:])
    else:  # label one sender's ciphertext as another's
        cts = ((s1, c2), (s2, c1), *fwd.ciphertexts[2:])
    with pytest.raises(CryptoError, match="authentication"):
        r.clients["n0"].masked_input(dataclasses.replace(fwd, ciphertexts=cts), r.inputs["n0"], 1)
    assert r.clients["n0"].state is ClientState.FAILED


def test_late_masked_input_is_refused(make_epoch: Callable[..., Any]) -> None:
    r = make_epoch(5, threshold=3)
    forwarded = r.share(r.advertise())
    late = r.clients["n4"].masked_input(forwarded["n4"], r.inputs["n4"], 1)
    request = r.mask_inputs(forwarded, ["n0", "n1", "n2", "n3"])
    with pytest.raises(StageError):
        r.server.receive_masked_input(late, peer="n4")
    assert r.unmask(r.sign(request)).result.dropped == ("n4",)


def test_never_both_shares_for_one_node(make_epoch: Callable[..., Any]) -> None:
    r = make_epoch(5, threshold=3)
    forwarded = r.share(r.advertise())
    request = r.sign(r.mask_inputs(forwarded, ["n0", "n1", "n2", "n3"]))
    response = r.clients["n0"].unmask(request)
    seed_owners = {o for o, _ in response.seed_shares}
    key_owners = {o for o, _ in response.key_shares}
    assert seed_owners == set(request.survivors) and key_owners == {"n4"}
    # A coordinator that changes its story (n4 survived after all) gets nothing more.
    with pytest.raises(StageError):
        r.clients["n0"].unmask(m.UnmaskRequest(request.binding, tuple(r.nodes), request.signatures))
    # And a node listed as dropped after it sent its input refuses to sign a set without it.
    r.clients["n4"].masked_input(forwarded["n4"], r.inputs["n4"], 1)
    with pytest.raises(InvalidRequest, match="not listed"):
        r.clients["n4"].consistency(
            m.ConsistencyRequest(r.config.binding(Stage.CONSISTENCY_CHECK), request.survivors)
        )
    assert r.clients["n4"].state is ClientState.FAILED


def test_client_checks_the_survivor_list(make_epoch: Callable[..., Any]) -> None:
    r = make_epoch(5, threshold=3)
    forwarded = r.share(r.advertise())
    for node in r.nodes:
        r.clients[node].masked_input(forwarded[node], r.inputs[node], 1)
    binding = r.config.binding(Stage.CONSISTENCY_CHECK)
    with pytest.raises(RoundAborted) as info:  # too few survivors: the sum would reveal too much
        r.clients["n0"].consistency(m.ConsistencyRequest(binding, ("n0", "n1")))
    assert info.value.stage is Stage.CONSISTENCY_CHECK
    with pytest.raises(InvalidRequest):  # a survivor that was not active
        r.clients["n1"].consistency(m.ConsistencyRequest(binding, ("n1", "n2", "zz")))


def test_server_refuses_shares_a_node_cannot_hold(make_epoch: Callable[..., Any]) -> None:
    r = make_epoch(5, threshold=3)
    request = r.sign(r.mask_inputs(r.share(r.advertise()), ["n0", "n1", "n2", "n3"]))
    response = r.clients["n0"].unmask(request)
    both = dataclasses.replace(response, key_shares=(*response.key_shares, response.seed_shares[0]))
    with pytest.raises(InvalidRequest):
        r.server.receive_unmask(both, peer="n0")
    r.server.receive_unmask(response, peer="n0")


def test_server_refuses_a_bad_consistency_signature(make_epoch: Callable[..., Any]) -> None:
    r = make_epoch(4, threshold=3)
    request = r.mask_inputs(r.share(r.advertise()))
    signed = r.clients["n0"].consistency(request)
    with pytest.raises(CryptoError):
        r.server.receive_consistency(
            dataclasses.replace(signed, signature=signed.signature[:-2] + b"\0\0"), peer="n0"
        )
    r.server.receive_consistency(signed, peer="n0")


def test_bad_local_vector_is_refused_without_spending_the_round(make_epoch: Callable[..., Any]) -> None:
    r = make_epoch(4, threshold=3)
    forwarded = r.share(r.advertise())
    with pytest.raises(InvalidRequest, match="length"):
        r.clients["n0"].masked_input(forwarded["n0"], r.inputs["n0"][:-1], 1)
    assert r.clients["n0"].state is ClientState.SHARED
    r.clients["n0"].masked_input(forwarded["n0"], r.inputs["n0"], 1)
