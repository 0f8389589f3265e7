"""Offline model tooling: synthetic data (synth), evaluation (eval), training and export."""
