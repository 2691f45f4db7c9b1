"""Our kernels against the torch ops they replace, on the sizes the runtime uses.

CPU (always): the fused anti-aliased SnakeBeta at the 44.1 kHz BigVGAN's activation sizes, MMAudio's
16k/44k mel of 10 s, BEATs' fbank of 10 s, the separator's STFT/iSTFT of 8 s stereo 44.1 kHz.
CUDA (when the CUDA kernels and a GPU are present): the same on the GPU, the fused activation's
achieved memory bandwidth against the card's peak, and the 44.1 kHz vocoder's real-time factor with
and without the kernel in bf16 and fp32.

    python benchmarks/bench_kernels.py [--json out.json] [--repeats 5] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    p.add_argument("--threads", type=int, help="CPU threads for torch and the C++ kernels (default: all)")
    p.add_argument("--snake-seconds", type=float, default=1.0, help="audio length behind the CPU SnakeBeta sizes")
    p.add_argument("--vocoder-seconds", type=float, default=10.0, help="audio length for the GPU vocoder RTF")
    p.add_argument("--cpu-vocoder-seconds", type=float, default=0.0, help="also the CPU vocoder RTF (slow; 0: skip)")
    p.add_argument("--skip-cpu", action="store_true", help="only the CUDA measurements")
    return p.parse_args()


ARGS = parse_args()
if ARGS.threads:  # before the OpenMP runtimes start
    os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)

import torch  # noqa: E402

from deepsound_rt import kernels  # noqa: E402
from deepsound_rt.models import fbank  # noqa: E402
from deepsound_rt.models.alias_free import kaiser_sinc_filter, snake_beta_antialiased_reference  # noqa: E402
from deepsound_rt.models.bigvgan import BIGVGAN_V2_44K, BigVGAN  # noqa: E402
from deepsound_rt.models.mel import MEL_16K, MEL_44K, MelConverter  # noqa: E402

if ARGS.threads:
    torch.set_num_threads(ARGS.threads)

SAMPLE_RATE_44K = 44_100
# Peak memory bandwidth (GB/s) by device name, when the driver does not report clock and bus width.
PEAK_BANDWIDTH_GBPS = {
    "H200": 4800.0,
    "H100 NVL": 3900.0,
    "H100 PCIe": 2000.0,
    "H100": 3350.0,  # SXM ("NVIDIA H100 80GB HBM3")
    "A100 80GB PCIe": 1935.0,
    "A100-SXM4-80GB": 2039.0,
    "A100": 1555.0,  # 40 GB, SXM or PCIe
}


# ------------------------------------------------------------------------------------------------
# Timing


def _time_cpu(fn, repeats: int) -> dict:
    fn()  # warm-up: caches, lazily built constants
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times)}


def _time_cuda(fn, repeats: int, warmup: int = 2) -> dict:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return {"median_ms": statistics.median(times), "min_ms": min(times)}


# ------------------------------------------------------------------------------------------------
# Workloads


def vocoder_activation_shapes(seconds: float) -> list[tuple[int, int]]:
    """(channels, length) of the 44.1 kHz BigVGAN's activations in each up-sampling stage (the last
    one also feeds conv_post) for `seconds` of audio, at 512 samples per mel frame."""
    frames = round(seconds * SAMPLE_RATE_44K / BIGVGAN_V2_44K.hop_length)
    channels, length, shapes = BIGVGAN_V2_44K.upsample_initial_channel, frames, []
    for rate in BIGVGAN_V2_44K.upsample_rates:
        channels, length = channels // 2, length * rate
        shapes.append((channels, length))
    return shapes


def snake_workload(channels: int, length: int, dtype: torch.dtype, device: str):
    g = torch.Generator().manual_seed(channels)
    x = torch.randn(1, channels, length, generator=g).to(device=device, dtype=dtype)
    alpha = (torch.randn(channels, generator=g) * 0.3).to(device)
    beta = (torch.randn(channels, generator=g) * 0.3).to(device)
    taps = kaiser_sinc_filter(0.25, 0.3, 12).to(device)
    return lambda path: (snake_beta_antialiased_reference if path == "torch" else kernels.snake_beta_antialiased)(
        x, alpha, beta, taps, taps), x


STFT_N_FFT, STFT_HOP = 2048, 441  # the separator's transform


def _stft_torch(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    return torch.stft(x, STFT_N_FFT, STFT_HOP, STFT_N_FFT, window, center=True, pad_mode="reflect",
                      return_complex=True)


def front_end_workloads(device: str) -> list[tuple[str, str, callable]]:
    """(kernel, shape, run(path)): path "torch" runs the models' torch reference, else our kernel."""
    g = torch.Generator().manual_seed(0)
    wave_44k = (torch.rand(1, 10 * 44_100, generator=g) * 2 - 1).to(device)
    wave_16k = (torch.rand(1, 10 * 16_000, generator=g) * 2 - 1).to(device)
    fbank_wave = (torch.round(torch.randn(10 * 16_000, generator=g) * 3000) / 32768).to(device)
    stereo = torch.randn(2, 8 * 44_100, generator=g).to(device)
    window = torch.hann_window(STFT_N_FFT, device=device)
    spectrum = _stft_torch(stereo, window)
    mels = {(params, fused): MelConverter.from_config(params, use_kernels=fused).to(device)
            for params in (MEL_16K, MEL_44K) for fused in (False, True)}
    return [
        ("mel_spectrogram", "16k, 10 s (1, 160000)", lambda p: mels[MEL_16K, p != "torch"](wave_16k)),
        ("mel_spectrogram", "44k, 10 s (1, 441000)", lambda p: mels[MEL_44K, p != "torch"](wave_44k)),
        ("kaldi_fbank", "BEATs, 10 s (160000,)", lambda p: fbank.kaldi_fbank(fbank_wave, use_kernels=p != "torch")),
        ("stft", "8 s stereo (2, 352800)",
         lambda p: _stft_torch(stereo, window) if p == "torch" else kernels.stft(stereo, window, STFT_HOP)),
        ("istft", "8 s stereo (2, 1025, 801)",
         lambda p: torch.istft(spectrum, STFT_N_FFT, STFT_HOP, STFT_N_FFT, window, length=stereo.shape[-1])
         if p == "torch" else kernels.istft(spectrum, window, STFT_HOP, stereo.shape[-1])),
    ]


def build_vocoder(device: str, dtype: torch.dtype, use_kernels: bool) -> BigVGAN:
    """The full-size 44.1 kHz BigVGAN v2 with seeded random weights (the speed does not depend on
    them: both settings get the same ones)."""
    torch.manual_seed(0)
    return BigVGAN(BIGVGAN_V2_44K, use_kernels).eval().to(device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# Measurements


def row(table: list[dict], **fields) -> None:
    table.append(fields)
    text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
    print(text, flush=True)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().to(torch.complex128 if a.is_complex() else torch.float64)
                  - b.detach().to(torch.complex128 if b.is_complex() else torch.float64)).abs().max())


def compare_paths(table: list[dict], path: str, timer, repeats: int, run, **fields) -> None:
    """One row: torch ops vs the kernel on `path`, their speed-up and the largest output difference;
    a kernel that fails is reported and the benchmark goes on."""
    try:
        torch_t = timer(lambda: run("torch"), repeats)
        kernel_t = timer(lambda: run(path), 4 * repeats if path == "cuda" else repeats)
        diff = _max_diff(run(path), run("torch"))
    except Exception as exc:  # report and continue with the next measurement
        row(table, **fields, error=f"{type(exc).__name__}: {exc}")
        return
    row(table, **fields, torch_ms=torch_t["median_ms"], **{f"{path}_ms": kernel_t["median_ms"]},
        speedup=torch_t["median_ms"] / kernel_t["median_ms"], max_abs_diff=diff)


def bench_cpu(results: dict, repeats: int) -> None:
    table = results.setdefault("cpu", [])
    print(f"\n== CPU ({results['machine']['cpu_threads']} threads): torch ops vs C++ kernel ==")
    for dtype in (torch.float32, torch.bfloat16):
        for channels, length in vocoder_activation_shapes(ARGS.snake_seconds):
            run, _ = snake_workload(channels, length, dtype, "cpu")
            compare_paths(table, "cpp", _time_cpu, repeats, run, kernel="snake_beta_antialiased",
                          shape=f"(1, {channels}, {length})", dtype=str(dtype)[6:])
    for name, shape, run in front_end_workloads("cpu"):
        compare_paths(table, "cpp", _time_cpu, repeats, run, kernel=name, shape=shape, dtype="float32")


def peak_bandwidth_gbps() -> tuple[float | None, str]:
    """The card's peak memory bandwidth: from the table by name, else from the memory clock (kHz,
    double data rate) and bus width when the driver reports them."""
    props = torch.cuda.get_device_properties(0)
    for key, value in PEAK_BANDWIDTH_GBPS.items():
        if key in props.name:
            return value, f"table ({key})"
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9, "memory clock x bus width"
    return None, "unknown"


def bench_cuda(results: dict, repeats: int) -> None:
    table = results.setdefault("cuda", [])
    peak, peak_source = peak_bandwidth_gbps()
    results["machine"]["peak_bandwidth_gbps"] = peak
    results["machine"]["peak_bandwidth_source"] = peak_source
    print(f"\n== CUDA {torch.cuda.get_device_name(0)} (peak {peak} GB/s from {peak_source}): torch ops vs CUDA kernel ==")
    shapes = vocoder_activation_shapes(ARGS.vocoder_seconds) + [(512, 1 << 16)]
    for dtype in (torch.bfloat16, torch.float32):
        for channels, length in shapes:
            run, x = snake_workload(channels, length, dtype, "cuda")
            compare_paths(table, "cuda", _time_cuda, repeats, run, kernel="snake_beta_antialiased",
                          shape=f"(1, {channels}, {length})", dtype=str(dtype)[6:])
            if "cuda_ms" in table[-1]:
                moved = 2 * x.numel() * x.element_size() + 4 * (2 * channels + 24)  # read x, write y, parameters
                table[-1]["gbps"] = moved / (table[-1]["cuda_ms"] * 1e-3) / 1e9
                table[-1]["fraction_of_peak"] = table[-1]["gbps"] / peak if peak else None
                print(f"  achieved {table[-1]['gbps']:.0f} GB/s = {100 * (table[-1]['fraction_of_peak'] or 0):.0f} % of peak")
    for name, shape, run in front_end_workloads("cuda"):
        compare_paths(table, "cuda", _time_cuda, repeats, run, kernel=name, shape=shape, dtype="float32")


def vocoder_rtf(results: dict, device: str, seconds: float, dtypes, paths, repeats: int) -> None:
    table = results.setdefault("vocoder", [])
    frames = round(seconds * SAMPLE_RATE_44K / BIGVGAN_V2_44K.hop_length)
    audio_seconds = frames * BIGVGAN_V2_44K.hop_length / SAMPLE_RATE_44K
    print(f"\n== 44.1 kHz BigVGAN v2 (random weights) on {device}: {frames} mel frames = {audio_seconds:.2f} s ==")
    timer = _time_cuda if device == "cuda" else _time_cpu
    for dtype in dtypes:
        mel = torch.randn(1, BIGVGAN_V2_44K.num_mels, frames, device=device, dtype=dtype)
        outputs = {}
        for path in paths:
            model = build_vocoder(device, dtype, use_kernels=path != "torch")
            with torch.inference_mode():
                t = timer(lambda: model(mel), repeats)
                outputs[path] = model(mel).float()
            row(table, device=device, dtype=str(dtype)[6:], activations=path, audio_s=audio_seconds,
                wall_ms=t["median_ms"], rtf=audio_seconds / (t["median_ms"] * 1e-3),
                finite=bool(torch.isfinite(outputs[path]).all()))
        if len(outputs) == 2:
            first, second = outputs.values()
            table[-1]["max_abs_diff_vs_torch"] = float((first - second).abs().max())
            print(f"  max |waveform difference| kernel vs torch activations: {table[-1]['max_abs_diff_vs_torch']:.3g}")
        if device == "cuda":
            torch.cuda.empty_cache()


def main() -> int:
    repeats = max(1, ARGS.repeats)
    results = {
        "machine": {
            "python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads(),
            "kernel_paths": kernels.available_paths(),
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }
    print("kernel paths available:", ", ".join(kernels.available_paths()))

    def save() -> None:  # after every section, so that a run cut short keeps what it measured
        if ARGS.json:
            ARGS.json.parent.mkdir(parents=True, exist_ok=True)
            ARGS.json.write_text(json.dumps(results, indent=1))

    if "cuda" in kernels.available_paths():
        torch.backends.cudnn.benchmark = True
        bench_cuda(results, repeats)
        save()
        vocoder_rtf(results, "cuda", ARGS.vocoder_seconds, (torch.bfloat16, torch.float32), ("torch", "cuda"), repeats)
        save()
    if not ARGS.skip_cpu:
        if "cpp" not in kernels.available_paths():
            print("C++ kernels not built: no CPU comparison")
        else:
            bench_cpu(results, repeats)
            save()
            if ARGS.cpu_vocoder_seconds > 0:
                vocoder_rtf(results, "cpu", ARGS.cpu_vocoder_seconds, (torch.float32,), ("torch", "cpp"), 1)
                save()
    if ARGS.json:
        print(f"\nwrote {ARGS.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
