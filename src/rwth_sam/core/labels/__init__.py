"""Labels: writing results under the overwrite rule with take-back, and profiles (the classes of a dataset)."""
