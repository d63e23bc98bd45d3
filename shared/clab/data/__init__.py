"""Task data sets: generators and readers of the Parquet files in ``data/``."""
