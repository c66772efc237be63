"""The `distill` stage: knowledge distillation from a teacher model, on the shared training core (jobs.train)."""
