"""Training recipes: RL through task sequences, and the parts they share."""
