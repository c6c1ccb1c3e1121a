"""Sweeps: Hydra structured configs, config loading, checkpoint selection, grid expansion, submission."""
