"""Running recipes on several processes or machines (Ray Train)."""
