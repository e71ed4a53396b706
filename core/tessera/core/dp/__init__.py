"""Distributed differential-privacy kernels: clip, quantise, noise shares, accounting, bit widths.

Pure numpy, ``math`` and ``cryptography``: no I/O, no grpc, no SQL. Every random draw comes from an
injected ``numpy.random.Generator``; product code makes one per round with
``rng.secure_generator()`` (an AES-256-CTR keystream under a fresh key).
"""

from __future__ import annotations

from tessera.core.dp.accounting import (
    Charge,
    charge_for,
    compose,
    distributed_gaussian_rho,
    gaussian_rho,
    pure_to_rho,
    rho_to_epsilon,
    rho_to_epsilon_simple,
    skellam_rdp,
    skellam_rho,
)
from tessera.core.dp.bits import (
    BitWidth,
    choose_bits,
    log_wrap_probability,
    max_abs_node_for,
    wrap_probability,
)
from tessera.core.dp.calibrate import (
    distributed_gaussian_sigma,
    gaussian_sigma,
    polya_scale,
    rho_for,
    skellam_sigma,
)
from tessera.core.dp.clip import Clipped, Sensitivity, clip_coordinates, clip_l2
from tessera.core.dp.ddg import ddg_rho, ddg_sigma, ddg_sum_variance
from tessera.core.dp.errors import DpParameterError, QuantisationOverflow
from tessera.core.dp.mechanisms import (
    distributed_gaussian_share,
    interval95,
    polya_share,
    share_for,
    skellam_share,
)
from tessera.core.dp.plan import Mechanism, NoisePlan
from tessera.core.dp.quantise import (
    QuantisedSum,
    decode,
    dequantise,
    encode,
    encode_words,
    fixed_point_scale,
    integer_sensitivity,
    modular_sum,
    quantise_sum,
    stochastic_round,
)
from tessera.core.dp.rng import secure_generator

__all__ = [
    "BitWidth",
    "Charge",
    "Clipped",
    "DpParameterError",
    "Mechanism",
    "NoisePlan",
    "QuantisationOverflow",
    "QuantisedSum",
    "Sensitivity",
    "charge_for",
    "choose_bits",
    "clip_coordinates",
    "clip_l2",
    "compose",
    "ddg_rho",
    "ddg_sigma",
    "ddg_sum_variance",
    "decode",
    "dequantise",
    "distributed_gaussian_rho",
    "distributed_gaussian_share",
    "distributed_gaussian_sigma",
    "encode",
    "encode_words",
    "fixed_point_scale",
    "gaussian_rho",
    "gaussian_sigma",
    "integer_sensitivity",
    "interval95",
    "log_wrap_probability",
    "max_abs_node_for",
    "modular_sum",
    "polya_scale",
    "polya_share",
    "pure_to_rho",
    "quantise_sum",
    "rho_for",
    "rho_to_epsilon",
    "rho_to_epsilon_simple",
    "secure_generator",
    "share_for",
    "skellam_rdp",
    "skellam_rho",
    "skellam_share",
    "skellam_sigma",
    "stochastic_round",
    "wrap_probability",
]
