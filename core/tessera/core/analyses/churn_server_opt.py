"""The coordinator's server step of federated training, through flwr's strategies (DESIGN §10).

One small adapter: ``server_step`` takes the current coefficients, the DP mean gradient released
this round and the optimiser's state (public, carried between rounds in the job's public input),
and returns the new coefficients and state. The released mean gradient is seen as ONE virtual
client's update ``w - client_lr·g`` with weight 1; flwr's ``FedAvg`` takes it as the new model,
``FedAdam`` / ``FedYogi`` (Reddi et al. 2021) use ``Δ = update - w`` as their pseudo-gradient with
their moment estimates ``m``, ``v`` (restored from the state before the step, read back after).
All of it is post-processing of DP releases.

flwr is a coordinator-side extra (``pip install tessera[coordinator]``), imported here lazily and
only when a step runs: a node imports ``churn_model`` to compute its vectors but never calls this.
Flower's runtime is not used, and its telemetry is switched off before the import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from tessera.core.errors import ConfigError

_KW: dict[str, dict[str, float]] = {
    "fedavg": {},
    "fedadam": {"beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    "fedyogi": {"beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
}


def _flwr() -> Any:
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    try:
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
        from flwr.server import strategy
    except ImportError:
        raise ConfigError(
            "churn_model's server step needs flwr on the coordinator: install tessera[coordinator]"
        ) from None
    return strategy, Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays


def server_step(
    optimizer: str,
    *,
    round_no: int,
    weights: np.ndarray,
    mean_gradient: np.ndarray,
    client_lr: float,
    server_lr: float,
    state: Mapping[str, Any],
) -> tuple[np.ndarray, dict[str, Any]]:
    """New coefficients and optimiser state after one server step (``round_no`` from 1)."""
    if optimizer not in _KW:
        raise ConfigError(f"unknown server optimiser {optimizer!r}")
    strategy, code, fit_res, status, to_params, from_params = _flwr()
    w = np.asarray(weights, dtype=np.float64)
    initial = to_params([w])

    def no_metrics(_: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        return {}

    if optimizer == "fedavg":
        chosen = strategy.FedAvg(
            initial_parameters=initial, fit_metrics_aggregation_fn=no_metrics, inplace=False
        )
    else:
        cls = strategy.FedAdam if optimizer == "fedadam" else strategy.FedYogi
        chosen = cls(
            initial_parameters=initial,
            fit_metrics_aggregation_fn=no_metrics,
            eta=server_lr,
            eta_l=client_lr,
            **_KW[optimizer],
        )
        if "m" in state and "v" in state:
            chosen.m_t = [np.asarray(state["m"], dtype=np.float64)]
            chosen.v_t = [np.asarray(state["v"], dtype=np.float64)]
    update = w - client_lr * np.asarray(mean_gradient, dtype=np.float64)
    result = fit_res(
        status=status(code=code.OK, message=""), parameters=to_params([update]), num_examples=1, metrics={}
    )
    # The client proxy is never read by these strategies' aggregation: there is no Flower client.
    params, _ = chosen.aggregate_fit(server_round=round_no, results=[(None, result)], failures=[])
    if params is None:
        raise ConfigError("the server optimiser produced no model")
    new = np.asarray(from_params(params)[0], dtype=np.float64)
    out_state: dict[str, Any] = {}
    if optimizer != "fedavg":
        out_state = {"m": chosen.m_t[0].tolist(), "v": chosen.v_t[0].tolist()}
    return new, out_state
