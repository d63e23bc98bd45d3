"""How services write into and read from the shared volumes."""
