"""Mixture-of-experts models (Qwen3-MoE): the spec, the routing the training loop adds to every objective, the
capacity arithmetic, and the tiny-moe preset through pretraining (ZeRO-3, resumed) and SFT (ZeRO-2) on the session
Ray cluster, exported as a Hugging Face MoE directory."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest

from jobs.train import moe
from jobs.train.model import ModelSource, flops_per_token, model_config
from jobs.train.sources import TokenizerInfo
from pipelines.capacity.memory import Shape
from pipelines.spec.train import ModelConfig

TOKENIZER = TokenizerInfo(uri="x", tokenizer_json="", vocab_size=1000, eos_id=0, bos_id=None, pad_id=1)


def build(preset: str = "tiny-moe", **model):
    return ModelSource(config=model_config(ModelConfig(preset=preset, **model), TOKENIZER, seq_len=64)).build(seed=0)


# --- spec -------------------------------------------------------------------------------------------------------


def pipeline_error(tmp_path, model: str) -> str:
    from pipelines import load
    from pipelines.errors import SpecError

    spec = tmp_path / "p.yaml"
    spec.write_text(f"""
name: moe
storage: {tmp_path}/runs
stages:
  pretrain: {{kind: pretrain, data: {tmp_path}/text, tokenizer: {tmp_path}/tok, model: {model}}}
""")
    with pytest.raises(SpecError) as err:
        load.load(str(spec))
    return str(err.value)


@pytest.mark.parametrize(
    "model, expected",
    [
        ("{preset: tiny-moe, moe: {num_experts: 2, experts_per_token: 3}}",
         "moe.experts_per_token (3) is more than moe.num_experts (2)"),
        ("{preset: tiny, moe: {num_experts: 0}}", "stages.pretrain.model.moe.num_experts"),
        ("{preset: tiny, moe: {every_n_layers: 3}}",
         "model.moe.every_n_layers (3) is more than model.num_layers (2), so no layer would have experts"),
        ("{preset: tiny, moe: {shared_experts: 1}}", "stages.pretrain.model.moe.shared_experts"),
        ("{preset: tiny-moe, moe: {experts: 4}}", "stages.pretrain.model.moe.experts"),
        ("{preset: tiny, moe: {expert_intermediate_size: 88}}",
         "stages.pretrain.model.moe.expert_intermediate_size: Input should be a multiple of 32 (got 88)"),
    ],
)  # fmt: skip
def test_bad_moe_fields_are_refused_naming_the_field(tmp_path, model, expected):
    message = pipeline_error(tmp_path, model)
    assert expected in message, message
    assert "Traceback" not in message


def test_moe_presets_keep_about_the_dense_presets_active_parameters():
    tiny_moe = ModelConfig(preset="tiny-moe")
    assert tiny_moe.dims() == ModelConfig(preset="tiny").dims()
    # Half the dense width (176 / 2 = 88) rounded up to vLLM's CPU expert multiple of 32.
    assert tiny_moe.moe_dims()["expert_intermediate_size"] == 96
    assert ModelConfig(preset="tiny-moe", moe={"num_experts": 4}).moe_dims()["num_experts"] == 4, "fields override"
    assert ModelConfig(preset="tiny", moe={}).moe_dims() == tiny_moe.moe_dims(), "the preset is tiny + moe: {}"
    assert ModelConfig(preset="125m-moe").moe_dims()["expert_intermediate_size"] == 1024, "2 x 1024 = 2048"


def test_tiny_moe_builds_a_qwen3_moe_whose_flops_per_token_count_only_the_active_experts():
    sparse, dense = build(), build("tiny")
    assert type(sparse).__name__ == "Qwen3MoeForCausalLM" and type(dense).__name__ == "LlamaForCausalLM"
    assert moe.is_moe(sparse.config) and not moe.is_moe(dense.config)
    total = sum(p.numel() for p in sparse.parameters())
    assert total > 2 * sum(p.numel() for p in dense.parameters())
    # A token runs 2 of the 8 experts (2 x 96 wide against the dense 176) and the router.
    hidden, layers = 64, 2
    extra = layers * (3 * hidden * (2 * 96 - 176) + hidden * 8)
    assert flops_per_token(sparse.config, 64) == flops_per_token(dense.config, 64) + 6 * extra


def test_capacity_counts_every_expert_but_only_active_ones_for_flops():
    from pipelines.capacity.memory import forward_flops_per_token

    dense = Shape(vocab=1024, hidden=64, layers=2, heads=2, kv_heads=2, intermediate=176)
    sparse = Shape(vocab=1024, hidden=64, layers=2, heads=2, kv_heads=2, intermediate=176, experts=8,
                   experts_per_token=2, expert_intermediate=96, moe_layers=2)  # fmt: skip
    model = build()
    norms = sum(p.numel() for n, p in model.named_parameters() if n.endswith(("q_norm.weight", "k_norm.weight")))
    assert sparse.params == sum(p.numel() for p in model.parameters()) - norms  # q/k norms: a few hundred
    extra = 2 * (3 * 64 * (2 * 96 - 176) + 64 * 8)  # per layer: the wider active experts and the router
    assert sparse.active_params == dense.params + extra
    assert forward_flops_per_token(sparse) == forward_flops_per_token(dense) + 2 * extra
    assert sparse.largest_layer == 8 * 2 * 96 * 64, "an MoE layer's fused gate-and-up tensor of every expert"


# --- routing in the training loop -------------------------------------------------------------------------------


def test_routing_adds_a_per_layer_load_balancing_loss_and_counts_every_routed_token():
    import torch
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    model = build()
    routing = moe.Routing.attach(model)
    assert routing is not None and routing.layers == 2 and moe.Routing.attach(build("tiny")) is None
    ids = torch.randint(2, 1000, (4, 32))
    routing.clear()
    out = model(input_ids=ids, labels=ids, output_router_logits=True)  # with each layer's router logits
    per_layer = [load_balancing_loss_func((logits,), 8, 2).item() for logits in out.router_logits]
    assert routing.aux_loss().item() == pytest.approx(sum(per_layer) / 2)
    stats = routing.load_stats(lambda tensor: None)
    assert stats["routed_tokens"] == 4 * 32
    assert all(sum(row) == pytest.approx(1.0) for row in stats["expert_load"]) and len(stats["expert_load"]) == 2
    assert routing.load_stats(lambda tensor: None) == {}, "counts restart after each read"


def skewed_training(coef: float, steps: int = 40) -> list[float]:
    """The load-balancing loss per step of a tiny-moe whose routers start out favouring expert 0."""
    import torch

    model = build(moe={"router_aux_loss_coef": coef})
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                param[0] += 1.0
    routing = moe.Routing.attach(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(2, 1000, (8, 32), generator=torch.Generator().manual_seed(0))
    aux = []
    for _ in range(steps):
        routing.clear()
        out = model(input_ids=ids, labels=ids)
        balance = routing.aux_loss()
        (out.loss + routing.coef * balance).backward()
        optimizer.step()
        optimizer.zero_grad()
        aux.append(balance.item())
    return aux


def test_the_load_balancing_loss_evens_out_a_skewed_router():
    """The loss is experts_per_token (2) at perfect balance and grows with skew: trained with it, the skew goes;
    without it (coefficient 0), it stays."""
    balanced = skewed_training(coef=1.0)
    assert balanced[0] > 2.4 and balanced[-1] < 2.05, balanced
    unbalanced = skewed_training(coef=0.0)
    assert unbalanced[-1] > balanced[-1] + 0.1, unbalanced


def test_export_loads_as_the_hugging_face_moe_class_with_the_training_models_logits(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    source = ModelSource(config=model_config(ModelConfig(preset="tiny-moe"), TOKENIZER, seq_len=64))
    trained = source.build(seed=3).eval()
    state = {name: param.detach().clone() for name, param in trained.named_parameters()}  # as export gathers it
    source.exportable(trained.config, state).save_pretrained(tmp_path)
    config = json.load(open(tmp_path / "config.json"))
    assert config["architectures"] == ["Qwen3MoeForCausalLM"] and config["num_experts_per_tok"] == 2
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(2, 1000, (2, 16))
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, trained(input_ids=ids).logits, atol=1e-5)


def test_weights_sent_to_vllm_use_the_checkpoints_per_expert_names_and_values(tmp_path):
    import torch
    from safetensors.torch import load_file

    model = build()
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    state = moe.checkpoint_layout(dict(model.state_dict()))
    assert set(state) == set(saved) | {"lm_head.weight"}  # the tied output layer is not written
    assert "model.layers.1.mlp.experts.7.up_proj.weight" in state
    assert all(torch.equal(state[name], saved[name]) for name in saved)
    dense = dict(build("tiny").state_dict())
    assert moe.checkpoint_layout(dense).keys() == dense.keys()


# --- the stages on the session cluster --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.cluster
def test_tiny_moe_pretrains_under_zero3_resumes_and_fine_tunes_under_zero2(
    ray_session, corpus_dir, tokenizer_dir, chat_dir, tmp_path
):
    from jobs.train import pretrain, sft
    from pipelines.spec.post import SFTStage
    from tests.jobs.train.conftest import post_context, pretrain_context, pretrain_spec
    from tests.jobs.train.test_pretrain import check_export, read_scalars

    out = str(tmp_path / "pretrain")

    def spec(steps: int):
        return pretrain_spec(corpus_dir, tokenizer_dir, model={"preset": "tiny-moe"}, deepspeed={"zero_stage": 3},
                             schedule={"steps": steps, "log_every": 2})  # fmt: skip

    first = pretrain.run(pretrain_context(spec(6), out))
    assert (first["step"], first["zero_stage"], first["world_size"]) == (6, 3, 2)
    for name in os.listdir(out):  # as the driver empties an unfinished stage's output, all but _state/
        if name != "_state":
            shutil.rmtree(os.path.join(out, name))
    second = pretrain.run(pretrain_context(spec(12), out))
    json.dumps(second)  # it becomes the _SUCCESS marker
    assert (second["step"], second["resumed_from_step"]) == (12, 6)
    assert second["eval_loss"] < math.log(512) and second["train_aux_loss"] > 0
    assert second["eval_aux_loss"] > 0 and 0 <= second["expert_load_cv"] < 1
    assert len(second["expert_load"]) == 2 and all(sum(row) == pytest.approx(1) for row in second["expert_load"])
    scalars = read_scalars(os.path.join(out, "tensorboard"))
    assert sorted(scalars["aux_loss"]) == [2, 4, 6, 8, 10, 12], "the history from the first run is kept"
    assert {f"expert_load/layer{i}/expert{j}" for i in range(2) for j in range(8)} <= set(scalars)
    check_export(out, corpus_dir, second["eval_loss"], generates=False, architecture="Qwen3MoeForCausalLM")

    tuned = SFTStage(kind="sft", model=f"{out}/model", data=f"{chat_dir}/sft.jsonl", deepspeed={"zero_stage": 2},
                     scaling={"num_workers": 2}, optim={"lr": 1e-3, "warmup_steps": 1},
                     schedule={"steps": 4, "seq_len": 64, "micro_batch_size": 4, "eval_every": 4,
                               "checkpoint_every": 4, "log_every": 2})  # fmt: skip
    metrics = sft.run(post_context("sft", tuned, str(tmp_path / "sft")))
    assert (metrics["step"], metrics["zero_stage"]) == (4, 2) and metrics["train_aux_loss"] > 0
    assert json.load(open(tmp_path / "sft" / "model" / "config.json"))["architectures"] == ["Qwen3MoeForCausalLM"]


def test_the_report_draws_expert_load_as_a_heat_map_not_as_curves():
    import base64

    from cli.report import charts

    scalars = {"loss": [(1, 5.0), (2, 4.0)], "lr": [(1, 0.1), (2, 0.2)], "expert_load_cv": [(1, 0.4), (2, 0.2)]}
    shares = {f"expert_load/layer{i}/expert{j}": [(1, 0.1), (2, 0.25)] for i in range(2) for j in range(4)}
    panels = [title for title, _ in charts.curve_panels({**scalars, **shares})]
    assert panels == ["loss", "lr", "expert_load_cv"], "per-expert shares would crowd out the curves"
    svg = base64.b64decode(charts.expert_load("pretrain", {**scalars, **shares}).split(",", 1)[1]).decode()
    assert svg.startswith("<?xml") and "<image" in svg, "a heat map (an image) of the last step's shares"
    assert charts.expert_load("pretrain", scalars) is None, "a dense model has none"
