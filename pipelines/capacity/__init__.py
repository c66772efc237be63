"""What a pipeline needs before anyone pays for a GPU: per-stage memory and time estimates, checked against a
cluster (a shape such as 2x8xH100-80GB, or a running cluster's nodes). Pure arithmetic: no torch, no Ray."""
