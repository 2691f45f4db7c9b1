"""Memory tiers: where each network's weights live between and during steps, that the tiers give
the same results, the load-time refusal, and peak RSS per tier on a CPU."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from deepsound_rt import engine as engine_module
from deepsound_rt import memory
from deepsound_rt.engine import Engine, EngineConfig
from deepsound_rt.errors import DeepSoundError
from deepsound_rt.io.sample import sample_clip_path
from deepsound_rt.models.mllm.quantize import llm_linears, quantize_llm_int8
from deepsound_rt.residency import Residency, SameMemory, tensor_bytes
from deepsound_rt.stages.reason import MLLMReasoner

REPO = Path(__file__).resolve().parents[1]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
TIERS = ("max", "balanced", "low")


def _devices(module: nn.Module) -> set[str]:
    tensors = [*module.parameters(), *module.buffers()]
    if hasattr(module, "vision_tower"):
        tensors += [*module.vision_tower.parameters(), *module.vision_tower.buffers()]
    return {t.device.type for t in tensors}


# --- the residency manager on its own ------------------------------------------------------------


class Shared(nn.Module):
    """Two layers holding one parameter, a buffer, and a second root's weight used by the first."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(4, 4)
        self.second = nn.Linear(4, 4)
        self.second.weight = self.first.weight
        self.register_buffer("offset", torch.arange(4.0))

    def forward(self, x):
        return self.second(self.first(x)) + self.offset


def test_offloaded_weights_are_meta_between_steps_and_host_copies_within():
    torch.manual_seed(0)
    module = Shared()
    x = torch.randn(3, 4)
    expected = module(x)
    residency = Residency(torch.device("cpu"))
    residency.offload("net", [module])
    assert _devices(module) == {"meta"}
    with pytest.raises((NotImplementedError, RuntimeError)):
        module(x)  # a use outside a step fails instead of running somewhere unexpected
    hosts = residency.host_tensors("net")
    assert len(hosts) == 4 and {t.device.type for t in hosts} == {"cpu"}  # the shared weight once
    assert residency.host_bytes("net") == sum(t.numel() * 4 for t in hosts)
    with residency.on_device("net"), residency.on_device("net", "never-offloaded"):
        assert module.first.weight is module.second.weight  # still one tensor
        assert {t.data_ptr() for t in [*module.parameters(), *module.buffers()]} <= {t.data_ptr() for t in hosts}
        torch.testing.assert_close(module(x), expected, rtol=0, atol=0)
    assert _devices(module) == {"meta"}  # the inner use did not release the outer one early
    with residency.on_device("net"):
        torch.testing.assert_close(module(x), expected, rtol=0, atol=0)


class RecordingQueue(SameMemory):
    """Copies by cloning, and remembers up to which tensor the compute side has waited."""

    def __init__(self):
        self.index_of_storage: dict[int, int] = {}
        self.waits: list[int] = []

    def begin(self):
        self.index_of_storage, self.waits = {}, []

    def copy(self, host):
        copy = host.clone()
        self.index_of_storage[copy.untyped_storage().data_ptr()] = len(self.index_of_storage) + 1
        return copy

    def wait(self, count):
        self.waits.append(count)


_METADATA = {"__get__", "size", "dim", "stride", "numel", "element_size", "is_floating_point", "is_complex",
             "data_ptr", "untyped_storage", "storage_offset", "is_contiguous", "get_device", "__len__"}


class EarlyUses(TorchFunctionMode):
    """Every torch call that reads a placed weight before the compute side waited for it."""

    def __init__(self, queue: RecordingQueue):
        super().__init__()
        self.queue, self.used, self.early = queue, set(), []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") not in _METADATA:
            waited = max(self.queue.waits, default=0)
            for value in [*args, *kwargs.values(), *[v for a in args if isinstance(a, (list, tuple)) for v in a]]:
                if isinstance(value, torch.Tensor) and value.device.type != "meta":
                    index = self.queue.index_of_storage.get(value.untyped_storage().data_ptr())
                    if index is not None:
                        self.used.add(index)
                        if index > waited:
                            self.early.append((getattr(func, "__name__", func), index, waited))
        return func(*args, **kwargs)


def test_in_order_placement_waits_for_each_weight_before_its_first_use():
    """The MLLM's weights are copied in first-use order and each module waits only for its own
    subtree, so early layers can run while later ones are on the bus; this checks, on every torch
    call of a judge step (both media towers, prefill and decoding), that no weight is read before a
    wait covered it."""
    reasoner = MLLMReasoner.random(seed=0, max_new_tokens=4)
    queue = RecordingQueue()
    residency = Residency(torch.device("cpu"), queue)
    residency.offload("mllm", memory.mllm_parts(reasoner.model), in_order=True)
    total = len(residency.host_tensors("mllm"))
    audio = np.random.default_rng(0).standard_normal(44100).astype(np.float32) * 0.1
    with residency.on_device("mllm"), EarlyUses(queue) as check:
        reasoner.judge_voice_over(sample_clip_path(), audio, 44100, mode="qa", duration_s=1.0)
    assert not check.early, check.early[:5]
    assert len(check.used) > total // 2  # the check saw the weights in use
    assert queue.waits[0] < total and max(queue.waits) == total  # waits came in steps
    assert not any(m._forward_pre_hooks for m in reasoner.model.modules())  # hooks gone


# --- tiers on the dev preset ---------------------------------------------------------------------


class Spy:
    """Wraps a bound method; records the devices of ``module``'s weights at each call."""

    def __init__(self, owner, method: str, module: nn.Module):
        self.calls: list[set[str]] = []
        original = getattr(owner, method)

        def spy(*args, **kwargs):
            self.calls.append(_devices(module))
            return original(*args, **kwargs)

        setattr(owner, method, spy)


@pytest.fixture(scope="module", params=DEVICES)
def tier_runs(request):
    """Each tier's Engine through the step methods on the sample clip: generate (1 s, one flow
    step), the qa judge, removal of the generated audio, and in ``low`` (every network offloaded)
    the plan before them; where the MLLM, separator and encoders were before and after each step,
    during the steps, and what came out."""
    runs = {}
    for tier in TIERS:
        engine = Engine(EngineConfig(preset="dev", num_steps=1, memory=tier, device=request.param))
        reasoner, separator = engine.reasoner, engine.separator
        spies = {"plan": Spy(reasoner, "plan", reasoner.model),
                 "judge": Spy(reasoner, "judge_voice_over", reasoner.model),
                 "remove": Spy(separator, "remove_vocals", separator.model),
                 "clip": Spy(engine.graphs["clip_image"], "run", engine.models.clip),
                 "sync": Spy(engine.graphs["sync"], "run", engine.models.synchformer)}

        def where():
            return _devices(reasoner.model), _devices(separator.model), _devices(engine.models.clip)

        between = [where()]
        if tier == "low":
            engine.plan(sample_clip_path())
            between.append(where())
        generated = engine.generate(sample_clip_path(), duration=1.0)
        between.append(where())
        voice_over, judged = engine.judge_voice_over(sample_clip_path(), generated.waveform, generated.sample_rate, "qa")
        between.append(where())
        removed, _ = engine.remove_voice_over(generated.waveform, generated.sample_rate)
        between.append(where())
        runs[tier] = {"engine": engine, "audio": generated.waveform, "rate": generated.sample_rate,
                      "judged": (voice_over, judged["answer"]), "removed": removed, "between": between,
                      "during": {name: spy.calls for name, spy in spies.items()}}
    return request.param, runs


def test_the_mllm_and_separator_are_off_the_device_between_steps(tier_runs):
    device, runs = tier_runs
    for tier in TIERS:
        run = runs[tier]
        offloads = tier != "max"
        mllm, separator, clip = (set().union(*sets) for sets in zip(*run["between"]))
        assert mllm == separator == ({"meta"} if offloads else {device}), tier
        assert clip == ({"meta"} if tier == "low" else {device}), tier
        for step in ("judge", "remove", "clip", "sync", *(["plan"] if tier == "low" else [])):
            assert run["during"][step] and all(calls == {device} for calls in run["during"][step]), (tier, step)
        engine = run["engine"]
        if offloads:  # between steps the weights are the residency's host copies, pinned for a GPU
            for network in ("mllm", "separator", *(["encoders"] if tier == "low" else [])):
                hosts = engine.residency.host_tensors(network)
                assert hosts and {t.device.type for t in hosts} == {"cpu"}, (tier, network)
                assert all(t.is_pinned() for t in hosts) == (device == "cuda"), (tier, network)
        with engine.residency.on_device("mllm"):
            kinds = {type(linear.weight.data).__name__ for _, linear in llm_linears(engine.reasoner.model)}
        assert kinds == ({"Int8Tensor"} if tier == "low" else {"Tensor"}), tier


def test_tiers_give_the_same_results(tier_runs):
    """balanced is max exactly. low differs only by the int8 weights of the LLM's layers: its judge
    answers what max's MLLM answers once quantised by itself (the int8 error bound and the taught
    A/B decisions are tested with the MLLM), and the audio is untouched."""
    _, runs = tier_runs
    reference = runs["max"]
    for tier in ("balanced", "low"):
        np.testing.assert_array_equal(runs[tier]["audio"], reference["audio"])
        np.testing.assert_array_equal(runs[tier]["removed"], reference["removed"])
    assert runs["balanced"]["judged"] == reference["judged"]
    full = reference["engine"].reasoner
    quantized = MLLMReasoner(copy.deepcopy(full.model), full.tokenizer, full.device, full.dtype, full.settings)
    quantize_llm_int8(quantized.model)
    audio, rate = reference["audio"], reference["rate"]
    answer = quantized.judge_voice_over(sample_clip_path(), audio, rate, mode="qa", duration_s=len(audio) / rate)
    assert runs["low"]["judged"] == (answer.voice_over, answer.text)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_balanced_holds_no_device_memory_for_the_mllm_and_separator():
    held = {}
    for tier in ("balanced", "max"):  # both alive at the end: each one's share is its own
        before = torch.cuda.memory_allocated()
        engine = Engine(EngineConfig(preset="dev", num_steps=2, memory=tier, device="cuda"))
        engine.reasoner, engine.separator
        held[tier] = (engine, torch.cuda.memory_allocated() - before)
    engine = held["max"][0]
    offloaded = _loaded_bytes(engine.reasoner.model, engine.separator.model)
    assert held["max"][1] - held["balanced"][1] >= offloaded


# --- sizes and the load-time refusal -------------------------------------------------------------


def _loaded_bytes(*modules: nn.Module) -> int:
    towers = [m.vision_tower for m in modules if hasattr(m, "vision_tower")]  # kept outside the module tree
    tensors = {id(t): t for m in [*modules, *towers] for t in [*m.parameters(), *m.buffers()]}
    return sum(tensor_bytes(t) for t in tensors.values())


def test_size_estimates_match_the_loaded_networks():
    """The estimate counts networks built on the meta device; here fresh loaded ones are counted."""
    engine = Engine(EngineConfig(preset="dev", memory="low"))
    engine.reasoner, engine.separator
    sizes = memory.pipeline_bytes(engine)
    models = engine.models
    assert sizes.generator == _loaded_bytes(models.flow, models.vae, models.vocoder)
    with engine.residency.on_device("encoders"):
        assert sizes.encoders == _loaded_bytes(models.clip, models.synchformer)
    with engine.residency.on_device("separator"):
        assert sizes.separator == _loaded_bytes(engine.separator.model)
    (mllm,), (mllm_int8,) = sizes.mllms, sizes.mllms_int8
    with engine.residency.on_device("mllm"):
        assert abs(mllm_int8 - _loaded_bytes(engine.reasoner.model)) < 0.02 * mllm_int8  # tokenizer: < 400 ids
    full = MLLMReasoner.random(seed=0).model
    assert abs(mllm - _loaded_bytes(full)) < 0.02 * mllm
    assert sizes.int8_transient == max(linear.weight.numel() for _, linear in llm_linears(full)) * 4


def _refusal(monkeypatch, free: int, **config) -> str:
    """The refusal's message with ``free`` bytes free; fails if anything was loaded first."""
    monkeypatch.setattr(memory, "free_bytes", lambda device: free)
    monkeypatch.setattr(engine_module, "load_generator_models", lambda *a, **k: pytest.fail("loaded before refusing"))
    with pytest.raises(DeepSoundError) as error:
        Engine(EngineConfig(preset="dev", **config))
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_tier_that_does_not_fit_is_refused_before_loading(monkeypatch):
    probe = Engine.__new__(Engine)  # what the estimate reads, without loading anything
    probe.config, probe.preset, probe.dtype = EngineConfig(preset="dev"), engine_module.PRESETS["dev"], torch.float32
    sizes = memory.pipeline_bytes(probe)
    # On a CPU the host is the device: only int8 saves memory, so balanced needs what max needs.
    need = {tier: memory.tier_need(sizes, *memory.resolve_tier(tier, "auto"), host_is_device=True) for tier in TIERS}
    assert need["max"] == need["balanced"] > need["low"]
    assert need["max"] - need["low"] == sum(sizes.mllms) - sum(sizes.mllms_int8) - sizes.int8_transient > 0
    message = _refusal(monkeypatch, need["max"] - 1, memory="max")
    assert message.startswith(f"memory tier 'max' needs about {need['max'] / 2**30:.1f} GiB on cpu")
    assert message.endswith(f"--memory low needs about {need['low'] / 2**30:.1f} GiB")
    assert "no tier fits" in _refusal(monkeypatch, need["low"] - 1, memory="low")
    monkeypatch.undo()
    monkeypatch.setattr(memory, "free_bytes", lambda device: need["low"])
    assert Engine(EngineConfig(preset="dev", memory="max", mllm_precision="int8")).int8_llm  # max + int8 fits too


def test_int8_without_torchao_is_a_one_line_error_before_loading(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # what an absent package raises on import
    monkeypatch.setattr(engine_module, "load_generator_models", lambda *a, **k: pytest.fail("loaded before refusing"))
    with pytest.raises(DeepSoundError, match=r"pip install 'deepsound_rt\[int8\]'") as error:
        Engine(EngineConfig(preset="dev", memory="low"))
    assert "\n" not in str(error.value)


# --- peak RSS per tier on a CPU ------------------------------------------------------------------


RSS_OF_TIER = """
import gc, json, runpy, sys
bench = runpy.run_path(sys.argv[1])
from deepsound_rt.models.mllm import tiny
small = tiny.tiny_config_json
tiny.tiny_config_json = lambda vocab_size: small(vocab_size) | bench["WIDER_LLM"]
import torch
from deepsound_rt.engine import Engine
from deepsound_rt.io.sample import sample_clip_path
from deepsound_rt.models.mllm.quantize import llm_linears
engine = Engine(preset="dev", num_steps=1, memory=sys.argv[2])
engine.reasoner
gc.collect()
peaks = bench["Peaks"](torch.device("cpu"))
peaks.restart()
engine.generate(sample_clip_path(), duration=1.0)
weights = sum(linear.weight.numel() for _, linear in llm_linears(engine.reasoner.model))
print(json.dumps({"peak_gib": peaks.read()["rss_gib"], "llm_linear_weights": weights}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resident-set counters")
def test_low_peaks_below_max_on_a_cpu_by_what_int8_saves():
    """max and low each in its own process (side by side, one thread each), the dev preset with
    bench_memory.py's wider tiny LLM: the resident set's high-water mark over a generation after
    loading, with large allocations on mmap so that it is the live peak (repeats agree within
    1 MB). On a CPU the MLLM's weights stay in memory through every step, so low's peak is lower
    by what int8 saves: 3 bytes a decoder-layer weight."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    script = str(REPO / "benchmarks" / "bench_memory.py")
    children = {tier: subprocess.Popen([sys.executable, "-c", RSS_OF_TIER, script, tier], env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE) for tier in ("max", "low")}
    runs = {}
    for tier, child in children.items():
        out, err = child.communicate(timeout=900)
        assert child.returncode == 0, err[-2000:]
        runs[tier] = json.loads(out.strip().splitlines()[-1])
    saved = runs["max"]["llm_linear_weights"] * 3
    assert saved > 16 * 2**20
    assert (runs["max"]["peak_gib"] - runs["low"]["peak_gib"]) * 2**30 > saved * 0.75
