"""The side-by-side comparison of a run's variants and the report built from it."""
