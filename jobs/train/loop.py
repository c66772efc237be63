"""The training loop every training stage runs on each Ray Train worker, around one DeepSpeed engine.

A step is `grad_accum` micro-batches of forward (`objective.loss`), backward and `engine.step()`; DeepSpeed
applies the optimizer and LR schedule at the accumulation boundary. Around the steps the loop logs, evaluates
and checkpoints on the schedule's cadences, and at the end evaluates, exports and reports the final metrics.
Every decision that needs a collective (reports, evaluation, checkpoints, stopping) depends only on the step
counter or on a value broadcast from rank 0, so all ranks take the same branch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from itertools import islice
from typing import Any

from jobs.train import checkpoint, export, moe
from jobs.train.checkpoint import TrainerState
from jobs.train.job import TrainJob
from jobs.train.metrics import TensorBoard, Throughput, device_peak_flops, mfu
from jobs.train.model import flops_per_token

# Ray Train's controller collects one report per worker per health check (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S: 0.5 s as
# jobs.train.launch sets it, Ray's default 2 s) and a worker's report queue holds one, so a report sent sooner blocks
# the training thread until then: reporting every 10 steps of a 0.1 s step left a worker idle over half the time.
# Metrics reports are therefore sent at most this often; TensorBoard and the progress lines still get every log
# step, checkpoints always report.
REPORT_INTERVAL_S = float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2.0"))


def train_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train entry point, run on every worker; rank 0's return value is the run's final metrics."""
    job: TrainJob = config["job"]
    if not job.use_gpu:
        # DeepSpeed picks its accelerator when first imported; on CPU it must not go looking for CUDA.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return TrainLoop(job, splits=config["splits"]).run()


class TrainLoop:
    def __init__(self, job: TrainJob, splits: list[str]) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.job = job
        self.splits = splits
        self.rank = context.get_world_rank()
        self.world = context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.state = TrainerState()
        self.resumed_from = 0
        self.steps_run = 0
        self.last_checkpoint = -1
        self.routing: moe.Routing | None = None  # an MoE model's routers, once the model is built
        self.loss_sum: Any = 0.0  # on-device sum of micro-batch losses since the last log (no per-step sync)
        self.metric_sums: dict[str, Any] = {}  # likewise, per metric (set with the model: MoE adds aux_loss)
        self.loss_count = 0
        self.last_loss: float | None = None
        self.last_metrics: dict[str, float | None] = {}
        self.eval_set: list[dict[str, Any]] | None = None  # validation micro-batches, read once per attempt
        self.throughput = Throughput()
        self.tensorboard = TensorBoard(job.tensorboard_uri, enabled=self.rank == 0)
        self.attempt_start = time.monotonic()
        self.prior_loop_time = 0.0  # loop time of earlier attempts, from the checkpoint
        self.step_clock = 0.0  # where the next step's time starts: the last step's end, or an eval or checkpoint's
        self.last_report = float("-inf")  # when metrics last went to Ray Train (rank 0's clock)

    def run(self) -> dict[str, Any]:
        import torch

        self.log(f"{self.world} worker(s) on {self.device}, {torch.get_num_threads()} torch threads each")
        self.engine = self.build_engine()
        self.metric_sums = dict.fromkeys(self.metric_names, 0.0)
        self.last_metrics = dict.fromkeys(self.metric_names)
        self.job.objective.setup(self.device)
        self.resume()
        self.flops_per_token = flops_per_token(self.engine.module.config, self.job.schedule.seq_len)
        self.peak_flops = device_peak_flops(self.job.use_gpu)
        batches = self.micro_batches()
        stopped_by = "steps"
        self.step_clock = time.perf_counter()
        while self.state.step < self.job.schedule.steps:
            if self.out_of_time():
                stopped_by = "time_budget"
                break
            self.train_step(batches)
            self.after_step()
        return self.finish(stopped_by)

    # --- set-up -------------------------------------------------------------------------------------------

    def build_engine(self) -> Any:
        from jobs.train.deepspeed_config import start_engine
        from jobs.train.optim import build_optimizer, scheduler_factory

        job = self.job
        model = job.model.build(seed=job.schedule.seed)
        model.config.use_cache = False
        self.routing = moe.Routing.attach(model)
        optimizer = build_optimizer(model, job.optim, offload=job.offload_optimizer)
        schedule = scheduler_factory(job.optim, job.schedule.steps)
        return start_engine(model, optimizer, schedule, job.deepspeed, job.activation_checkpointing)

    def resume(self) -> None:
        state = checkpoint.restore(self.engine)
        if state is not None:
            self.state = state
            self.prior_loop_time = state.loop_time_s
            self.resumed_from = self.last_checkpoint = state.step
            self.log(f"resumed from step {state.step}")

    def micro_batches(self) -> Iterator[dict[str, Any]]:
        """Micro-batches of this worker's shard, epoch after epoch. After a resume, the micro-batches the
        checkpointed run had already consumed in its epoch are skipped so the data is not seen twice."""
        import ray.train

        shard = ray.train.get_dataset_shard("train")
        skip = self.state.batches_in_epoch
        while True:
            seen = 0
            for batch in shard.iter_torch_batches(
                batch_size=self.job.schedule.micro_batch_size,
                drop_last=True,
                dtypes=self.job.objective.batch_dtype(),
                device=self.device,
            ):
                seen += 1
                if seen <= skip:
                    continue
                self.state.batches_in_epoch = seen
                yield batch
            if seen == 0:
                raise RuntimeError(
                    f"the training split gave worker {self.rank} no micro-batch of "
                    f"{self.job.schedule.micro_batch_size} sequences; add data, or lower micro_batch_size, "
                    f"seq_len or the number of workers"
                )
            skip = 0
            self.state.epoch += 1
            self.state.batches_in_epoch = 0

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The objective's metrics, and for an MoE model the routers' load-balancing loss."""
        return (*self.job.objective.metric_names, *(("aux_loss",) if self.routing is not None else ()))

    # --- the step -------------------------------------------------------------------------------------------

    def objective_loss(self, batch: dict[str, Any], training: bool) -> tuple[Any, Any, dict[str, Any]]:
        """(objective loss, loss to backpropagate, metrics). For an MoE model the second adds the routers'
        load-balancing loss × router_aux_loss_coef, reported as aux_loss; training passes count expert load."""
        if self.routing is None:
            loss, metrics = self.job.objective.loss(self.engine, batch)
            return loss, loss, metrics
        self.routing.clear()
        loss, metrics = self.job.objective.loss(self.engine, batch)
        aux = self.routing.aux_loss(count=training)
        return loss, loss + self.routing.coef * aux, {**metrics, "aux_loss": aux.detach()}

    def train_step(self, batches: Iterator[dict[str, Any]]) -> None:
        """One optimizer step. Its time runs from the end of the previous one, so logging and reporting count
        against throughput (evaluation and checkpoints restart the clock: they are not training)."""
        start = self.step_clock
        tokens = 0
        for _ in range(self.job.schedule.grad_accum):
            batch = next(batches)
            loss, total, metrics = self.objective_loss(batch, training=True)
            self.engine.backward(total)
            self.engine.step()
            self.loss_sum = self.loss_sum + loss.detach()
            for name in self.metric_sums:
                self.metric_sums[name] = self.metric_sums[name] + metrics[name]
            self.loss_count += 1
            tokens += int(metrics["tokens"])
        self.state.step += 1
        self.steps_run += 1
        self.state.tokens += tokens * self.world
        now = time.perf_counter()
        self.throughput.add(tokens * self.world, now - start)
        self.step_clock = now

    def after_step(self) -> None:
        schedule, step = self.job.schedule, self.state.step
        metrics: dict[str, Any] = {"step": step}
        if step % schedule.log_every == 0:
            metrics.update(self.train_metrics())
        if step % schedule.eval_every == 0:
            metrics.update(self.evaluate())
        if step % schedule.checkpoint_every == 0:
            self.checkpoint(metrics)
        elif len(metrics) > 1:
            self.log_metrics(metrics)
            if self.rank0_says(time.monotonic() - self.last_report >= REPORT_INTERVAL_S):
                self.report(metrics)
        if step % schedule.eval_every == 0 or step % schedule.checkpoint_every == 0:
            self.step_clock = time.perf_counter()

    def out_of_time(self) -> bool:
        """Whether the time budget is spent, decided by rank 0 so every rank stops together."""
        budget = self.job.schedule.time_budget_s
        return budget is not None and self.rank0_says(self.loop_time() >= budget)

    def rank0_says(self, flag: bool) -> bool:
        """Rank 0's value of `flag` on every rank: for decisions taken on a clock, which differs between ranks."""
        import torch
        import torch.distributed as dist

        if not dist.is_initialized() or self.world == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    # --- metrics, evaluation, checkpoints -------------------------------------------------------------------

    def train_metrics(self) -> dict[str, Any]:
        if self.loss_count:
            names = list(self.metric_sums)
            sums = [float(self.loss_sum), *(float(self.metric_sums[n]) for n in names)]
            means = self.mean_over_ranks([value / self.loss_count for value in sums])
            self.last_loss = means[0]
            self.last_metrics = dict(zip(names, means[1:], strict=True))
            self.loss_sum, self.loss_count = 0.0, 0
            self.metric_sums = dict.fromkeys(names, 0.0)
        rate = self.throughput.window_rate()
        return {
            "loss": self.last_loss,
            **self.last_metrics,
            **(self.routing.log_load(self.all_reduce, self.tensorboard, self.state.step) if self.routing else {}),
            "lr": float(self.engine.get_lr()[0]),
            "grad_norm": self.grad_norm(),
            "tokens_per_s": rate,
            "mfu": mfu(rate, self.flops_per_token, self.peak_flops, self.world),
            "tokens": self.state.tokens,
            "epoch": self.state.epoch,
        }

    def grad_norm(self) -> float | None:
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)

    def evaluate(self) -> dict[str, float | None]:
        """eval_loss (per token, or per pair) and eval_<metric> over the validation micro-batches of all ranks,
        each batch weighted by what its loss averages over."""
        names = ["loss", *self.metric_names]
        if "val" not in self.splits:
            return dict.fromkeys((f"eval_{n}" for n in names), None)
        import torch

        total = torch.zeros(len(names) + 1, dtype=torch.float64, device=self.device)  # (Σ value × weight..., Σ weight)
        self.engine.eval()
        with torch.no_grad():
            for batch in self.validation_batches():
                loss, _, metrics = self.objective_loss(batch, training=False)
                weight = float(metrics["loss_tokens"])
                row = [float(v) * weight for v in (loss, *(metrics[n] for n in names[1:]))] + [weight]
                total += torch.tensor(row, dtype=torch.float64, device=self.device)
        self.engine.train()
        self.all_reduce(total)
        if total[-1] <= 0:
            return dict.fromkeys((f"eval_{n}" for n in names), None)
        return {f"eval_{n}": float(total[i] / total[-1]) for i, n in enumerate(names)}

    def validation_batches(self) -> list[dict[str, Any]]:
        """Up to `eval_batches` micro-batches of validation for this worker, kept in memory after the first
        evaluation: re-running the Ray Data pipeline for every evaluation would cost more than the evaluation.
        Every worker reads the whole (unsharded) split and keeps batches rank, rank + world, ...: the workers
        together evaluate world × eval_batches distinct batches, as a sharded split would give them."""
        if self.eval_set is None:
            import ray.train

            batches = ray.train.get_dataset_shard("val").iter_torch_batches(
                batch_size=self.job.schedule.micro_batch_size,
                drop_last=True,
                dtypes=self.job.objective.batch_dtype(),
                device=self.device,
            )
            mine = islice(batches, self.rank, None, self.world)
            self.eval_set = list(islice(mine, self.job.schedule.eval_batches))
        return self.eval_set

    def checkpoint(self, metrics: dict[str, Any]) -> None:
        self.state.loop_time_s = self.loop_time()
        self.tensorboard.log(self.state.step, metrics)
        self.tensorboard.sync()
        self.progress(metrics)
        checkpoint.save(self.engine, self.state, metrics, self.rank)
        self.last_checkpoint = self.state.step
        self.last_report = time.monotonic()

    def log_metrics(self, metrics: dict[str, Any]) -> None:
        self.tensorboard.log(self.state.step, metrics)
        self.progress(metrics)

    def report(self, metrics: dict[str, Any]) -> None:
        import ray.train

        ray.train.report(metrics)
        self.last_report = time.monotonic()

    def finish(self, stopped_by: str) -> dict[str, Any]:
        final = {**self.summary(stopped_by), **self.evaluate()}
        if self.job.export_uri:
            job = self.job
            export.export(self.engine, self.rank, job.model, job.export_dtype, job.tokenizer_uri, job.export_uri)
        if self.last_checkpoint != self.state.step:
            self.checkpoint(final)
        else:
            self.log_metrics(final)
            self.report(final)
        self.tensorboard.close()
        return final

    def summary(self, stopped_by: str) -> dict[str, Any]:
        if self.loss_count:
            self.train_metrics()
        rate = self.throughput.steady_rate()
        return {
            "step": self.state.step,
            "tokens": self.state.tokens,
            "epoch": self.state.epoch,
            "train_loss": self.last_loss,
            **{f"train_{name}": value for name, value in self.last_metrics.items()},
            "tokens_per_s": rate,
            "tokens_per_s_median": self.throughput.median_rate(),
            "mfu": mfu(rate, self.flops_per_token, self.peak_flops, self.world),
            "flops_per_token": self.flops_per_token,
            "params": sum(int(getattr(p, "ds_numel", p.numel())) for p in self.engine.module.parameters()),
            "trainable_params": sum(
                int(getattr(p, "ds_numel", p.numel())) for p in self.engine.module.parameters() if p.requires_grad
            ),
            "resumed_from_step": self.resumed_from,
            "steps_run": self.steps_run,
            "loop_time_s": self.loop_time(),
            "stopped_by": stopped_by,
            "world_size": self.world,
            "precision": self.job.precision,
            "zero_stage": self.job.zero_stage,
            **(self.routing.summary() if self.routing is not None else {}),
        }

    # --- helpers --------------------------------------------------------------------------------------------

    def loop_time(self) -> float:
        """Training-loop wall time over all attempts: what the checkpoint recorded plus this attempt's."""
        return self.prior_loop_time + (time.monotonic() - self.attempt_start)

    def all_reduce(self, tensor: Any) -> None:
        import torch.distributed as dist

        if dist.is_initialized() and self.world > 1:
            dist.all_reduce(tensor)

    def mean_over_ranks(self, values: list[float]) -> list[float]:
        """Each value averaged over the ranks, in one collective."""
        import torch

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        self.all_reduce(tensor)
        return [float(v) / self.world for v in tensor.tolist()]

    def progress(self, metrics: dict[str, Any]) -> None:
        if self.rank == 0:
            fields = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
            print(f"[{self.job.stage}] progress {fields}", flush=True)

    def log(self, message: str) -> None:
        if self.rank == 0:
            print(f"[{self.job.stage}] {message}", flush=True)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
