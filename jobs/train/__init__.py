"""The training core shared by pretrain, SFT, reward-model and DPO stages.

The stage runner (driver side) turns a spec into a `TrainJob` and an `Objective`'s Ray Datasets, then
`launch.fit` runs `loop.train_worker` on Ray Train workers with a DeepSpeed engine. Importing this package
imports nothing heavy; torch, deepspeed and ray.train load inside the functions that need them.
"""
