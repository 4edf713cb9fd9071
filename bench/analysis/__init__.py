"""Pure analysis of the benchmarks' raw records: the figures docs/benchmarks.md publishes, made
by functions that the unit tests run on saved records (tests/data/bench/)."""
