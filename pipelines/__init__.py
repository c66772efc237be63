"""The pipeline spec, its loading and validation, and the plan (stage DAG + cache keys)."""
