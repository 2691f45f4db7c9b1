"""Backend selection and the ONNX Runtime graph, on small hand-made graphs (no export needed)."""
from __future__ import annotations

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from deepsound_rt.backends import GraphLoader, available_backends, choose_backends
from deepsound_rt.backends.onnxruntime_backend import OnnxRuntimeBackend, select_providers
from deepsound_rt.config import PRESETS
from deepsound_rt.errors import DeepSoundError
from deepsound_rt.models.graphs import GENERATOR_GRAPHS, generator_graph_modules
from deepsound_rt.models.loading import load_generator_models
from deepsound_rt.weights_dir import WeightsSource

GRAPHS = ("clip_image", "flow_velocity", "vocoder")


def test_available_backends_are_ordered_best_first():
    names = available_backends()
    assert names[-1] == "torch" and "onnxruntime" in names
    assert names == [b for b in ("tensorrt", "onnxruntime", "torch") if b in names]
    assert "tensorrt" not in available_backends(torch.device("cpu"))


def test_auto_picks_the_best_backend_that_has_each_graph():
    available = ["tensorrt", "onnxruntime", "torch"]
    assert choose_backends("auto", available, GRAPHS, exported={"clip_image", "vocoder"}) == {
        "clip_image": "tensorrt", "flow_velocity": "torch", "vocoder": "tensorrt"}
    assert choose_backends(None, ["onnxruntime", "torch"], GRAPHS, exported=GRAPHS) == dict.fromkeys(GRAPHS, "onnxruntime")
    assert choose_backends("auto", ["onnxruntime", "torch"], GRAPHS) == dict.fromkeys(GRAPHS, "torch")


def test_auto_keeps_kernel_graphs_off_onnxruntime():
    """Where our kernels run, the vocoder stays on torch unless TensorRT can take it; asked by name,
    ONNX Runtime still runs it."""
    assert choose_backends("auto", ["onnxruntime", "torch"], GRAPHS, exported=GRAPHS, kernel_graphs={"vocoder"}) == {
        "clip_image": "onnxruntime", "flow_velocity": "onnxruntime", "vocoder": "torch"}
    assert choose_backends("auto", ["tensorrt", "onnxruntime", "torch"], GRAPHS, exported=GRAPHS,
                           kernel_graphs={"vocoder"})["vocoder"] == "tensorrt"
    assert choose_backends("onnxruntime", ["onnxruntime", "torch"], GRAPHS, exported=GRAPHS,
                           kernel_graphs={"vocoder"})["vocoder"] == "onnxruntime"


def test_kernel_graphs_stay_on_torch_only_where_the_loader_runs_our_kernels():
    """The specs name the graphs our kernels serve (the vocoder); the loader keeps them on torch
    only when it runs the kernels, and the kernels setting decides that per device."""
    from deepsound_rt import kernels

    exported = {name: None for name in GRAPHS}
    on, off = GraphLoader(use_kernels=True), GraphLoader(use_kernels=False)
    for loader in (on, off):
        loader.__dict__["manifest"] = type("Manifest", (), {"graphs": exported})()  # an export of GRAPHS
    assert on.choose(GRAPHS) == {"clip_image": "onnxruntime", "flow_velocity": "onnxruntime", "vocoder": "torch"}
    assert off.choose(GRAPHS) == dict.fromkeys(GRAPHS, "onnxruntime")
    cpu = torch.device("cpu")
    assert kernels.enabled_for("auto", cpu) == ("cpp" in kernels.available_paths())
    assert not kernels.enabled_for("off", cpu)


def test_a_named_backend_must_be_available_and_exported():
    assert choose_backends("torch", ["torch"], GRAPHS) == dict.fromkeys(GRAPHS, "torch")
    with pytest.raises(DeepSoundError, match="not available"):
        choose_backends("tensorrt", ["onnxruntime", "torch"], GRAPHS, exported=GRAPHS)
    with pytest.raises(DeepSoundError, match="flow_velocity"):
        choose_backends("onnxruntime", ["onnxruntime", "torch"], GRAPHS, exported={"clip_image", "vocoder"})
    with pytest.raises(DeepSoundError, match="unknown backend"):
        choose_backends("openvino", ["torch"], GRAPHS)


def test_providers_prefer_tensorrt_then_cuda_and_cpu_stays_last(tmp_path):
    everything = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    cuda = torch.device("cuda:1")
    chosen = select_providers(everything, cuda, "fp16", tmp_path)
    assert [name for name, _ in chosen] == everything
    assert chosen[0][1]["trt_fp16_enable"] and chosen[0][1]["device_id"] == 1 and chosen[1][1] == {"device_id": 1}
    assert [n for n, _ in select_providers(everything, cuda, "fp32", None)] == everything[1:]
    assert select_providers(everything, torch.device("cpu"), "fp32", tmp_path) == [("CPUExecutionProvider", {})]
    with pytest.raises(DeepSoundError, match="onnxruntime-gpu"):
        select_providers(["CPUExecutionProvider"], cuda, "fp32")


@pytest.fixture(scope="module")
def scale_and_shift(tmp_path_factory):
    """y = x * 2 + float(n): a float input of dynamic batch and an int64 input."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["doubled"]), helper.make_node("Cast", ["n"], ["n_float"], to=1),
         helper.make_node("Add", ["doubled", "n_float"], ["y"])],
        "scale_and_shift",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("n", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    path = tmp_path_factory.mktemp("onnx") / "scale_and_shift.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_onnxruntime_graph_casts_inputs_and_returns_torch_tensors(scale_and_shift):
    graph = OnnxRuntimeBackend(torch.device("cpu"), threads=1).load("toy", scale_and_shift)
    assert graph.backend == "onnxruntime" and graph.providers == ["CPUExecutionProvider"]
    # every session takes its activations from the one arena of the process, not an arena of its own
    other = OnnxRuntimeBackend(torch.device("cpu"), threads=1).load("toy2", scale_and_shift)
    for session in (graph.session, other.session):
        assert session.get_session_options().get_session_config_entry("session.use_env_allocators") == "1"
    x = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    out = graph.run({"x": x, "n": torch.tensor(5)})
    assert isinstance(out["y"], torch.Tensor) and out["y"].dtype is torch.float32
    torch.testing.assert_close(out["y"], (x * 2 + 5).float())
    with pytest.raises(KeyError, match="'n'"):
        graph.run({"x": x})


def dev_models():
    return load_generator_models(PRESETS["dev"], None, torch.device("cpu"), torch.float32, WeightsSource.TINY_RANDOM)


def test_without_an_export_everything_runs_on_torch():
    modules = generator_graph_modules(dev_models())
    graphs = GraphLoader("auto").load(modules)
    assert list(graphs) == list(GENERATOR_GRAPHS) and {g.backend for g in graphs.values()} == {"torch"}
    assert GraphLoader("auto").load(modules, torch_fallback=False) == {}  # a stage then runs its torch code
    with pytest.raises(DeepSoundError, match="export"):
        GraphLoader("onnxruntime").load(modules)


@torch.inference_mode()
def test_encoder_graphs_compute_what_the_encoders_compute():
    """Clip image and sync graphs spell out the encoders' one-batch path so that the exported
    frame axis stays dynamic; they must not drift from the encoders."""
    models = dev_models()
    graphs = generator_graph_modules(models)
    frames = torch.rand(1, 3, 3, 384, 384)
    torch.testing.assert_close(graphs["clip_image"](frames), models.clip.encode_images(frames), rtol=0, atol=0)
    frames = torch.rand(1, 24, 3, 224, 224) * 2 - 1
    torch.testing.assert_close(graphs["sync"](frames), models.synchformer.encode_video_with_sync(frames), rtol=0, atol=0)


def test_the_detector_runs_on_torch_without_generator_models():
    from deepsound_rt.models.detector import detector_example_inputs, load_detector_module

    graphs = GraphLoader("torch").load({"detector": load_detector_module()})
    outputs = graphs["detector"].run(detector_example_inputs(batch=2))
    assert outputs["speech_prob"].shape == (2, 1) and outputs["next_state"].shape == (2, 2, 128)
    assert ((outputs["speech_prob"] >= 0) & (outputs["speech_prob"] <= 1)).all()
