"""Federated training on NVIDIA FLARE (fl-train, fl-job) and attacks on the updates (docs/federated.md)."""
