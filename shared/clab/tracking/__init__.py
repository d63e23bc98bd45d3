"""Where metrics go: JSONL files in metrics/, and W&B (offline)."""
