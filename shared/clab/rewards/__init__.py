"""Reward functions, shared by trainers and the evaluator."""
