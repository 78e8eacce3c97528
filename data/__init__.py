"""Sample-data tooling: `python -m data.make_samples` generates the demo library that `make run` ingests."""
