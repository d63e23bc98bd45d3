"""Models and tokenizers: loading real checkpoints, building tiny stand-ins."""
