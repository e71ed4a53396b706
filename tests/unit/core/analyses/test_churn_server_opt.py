"""The server step through flwr's strategies: known answers from Reddi et al.'s update rules, and
the optimiser state carried between rounds as public JSON."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tessera.core.analyses.churn_server_opt import server_step

W = np.array([0.5, -1.0, 2.0])
G = np.array([0.2, -0.4, 0.05])


def test_fedavg_takes_the_virtual_client_s_model() -> None:
    new, state = server_step(
        "fedavg", round_no=1, weights=W, mean_gradient=G, client_lr=0.7, server_lr=0.1, state={}
    )
    assert np.allclose(new, W - 0.7 * G) and state == {}


def test_fedadam_first_step_known_answer() -> None:
    delta = -1.0 * G
    m, v = 0.1 * delta, 0.01 * delta**2
    eta = 0.1 * math.sqrt(1 - 0.99**2) / (1 - 0.9**2)  # flwr's bias-corrected step at round 1
    expected = W + eta * m / (np.sqrt(v) + 1e-3)
    new, state = server_step(
        "fedadam", round_no=1, weights=W, mean_gradient=G, client_lr=1.0, server_lr=0.1, state={}
    )
    assert np.allclose(new, expected, rtol=1e-12)
    assert np.allclose(state["m"], m) and np.allclose(state["v"], v)


def test_fedyogi_second_step_uses_the_carried_state() -> None:
    _, state = server_step(
        "fedyogi", round_no=1, weights=W, mean_gradient=G, client_lr=1.0, server_lr=0.05, state={}
    )
    new, after = server_step(
        "fedyogi", round_no=2, weights=W, mean_gradient=G, client_lr=1.0, server_lr=0.05, state=state
    )
    delta = -G
    m = 0.9 * np.asarray(state["m"]) + 0.1 * delta
    v0 = np.asarray(state["v"])
    v = v0 - 0.01 * delta**2 * np.sign(v0 - delta**2)
    assert np.allclose(new, W + 0.05 * m / (np.sqrt(v) + 1e-3), rtol=1e-12)
    assert np.allclose(after["v"], v)


def test_an_unknown_optimiser_is_refused() -> None:
    from tessera.core.errors import ConfigError

    with pytest.raises(ConfigError):
        server_step("sgd", round_no=1, weights=W, mean_gradient=G, client_lr=1.0, server_lr=0.1, state={})
