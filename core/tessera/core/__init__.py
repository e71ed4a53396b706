"""Shared by coordinator and node: errors, types, serde, config, policy, PKI and the pure kernels."""

__version__ = "0.1.0"
