"""The graphs the backends run (and the exporter traces) reproduce upstream's guided velocity."""
from __future__ import annotations

import pytest
import torch

from deepsound_rt.models.graphs import PAIRED_CONDITIONS, FlowConditionsGraph, FlowVelocityGraph
from deepsound_rt.verify.flow import build_from_golden
from deepsound_rt.verify.golden import load_golden


@pytest.fixture(scope="module", params=["mmaudio_flow_v1", "mmaudio_flow_v2"])
def golden(request, goldens_dir):
    return load_golden(goldens_dir / f"{request.param}.json")


@torch.inference_mode()
def test_conditions_then_velocity_graph_match_golden_cfg_velocity(golden):
    net = build_from_golden(golden)
    inputs = golden.inputs
    paired = FlowConditionsGraph(net)(inputs["clip_f"], inputs["sync_f"], inputs["text_f"], inputs["negative_text_f"])
    assert all(p.shape[0] == 2 * inputs["x_t"].shape[0] for p in paired)
    velocity = FlowVelocityGraph(net)(inputs["x_t"], inputs["t"][0], torch.tensor(4.5), *paired)
    expected = golden.tensor("out/v_cfg_negtext")
    assert (velocity - expected).abs().max() <= golden.atol("out/v_cfg_negtext")


@torch.inference_mode()
def test_strength_one_is_the_unguided_conditional_flow(golden):
    net = build_from_golden(golden)
    inputs = golden.inputs
    paired = FlowConditionsGraph(net)(inputs["clip_f"], inputs["sync_f"], inputs["text_f"], inputs["negative_text_f"])
    velocity = FlowVelocityGraph(net)(inputs["x_t"], inputs["t"][0], torch.tensor(1.0), *paired)
    expected = golden.tensor("out/flow_cond")
    assert (velocity - expected).abs().max() <= golden.atol("out/flow_cond")
    assert len(PAIRED_CONDITIONS) == len(paired)
