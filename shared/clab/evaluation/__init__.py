"""Scoring checkpoints on tasks."""
