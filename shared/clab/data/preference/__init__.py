"""Preference tasks (prompt, chosen, rejected) for the continual DPO trainer."""
