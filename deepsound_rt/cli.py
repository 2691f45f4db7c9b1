"""``deepsound-rt`` command line: run, demo, export, verify, bench.

Every user-fixable problem (a :class:`DeepSoundError`) ends as one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import DeepSoundError

EXIT_USAGE = 2


def _add_generation_args(parser: argparse.ArgumentParser, default_preset: str, default_judge: str = "auto") -> None:
    from .config import DTYPE_NAMES, PRESETS

    parser.add_argument("--preset", default=default_preset, choices=sorted(PRESETS),
                        help=f"model preset (default: {default_preset})")
    parser.add_argument("--weights", type=Path, help="directory with the official checkpoint files")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPE_NAMES],
                        help="auto = bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--steps", type=int, default=25, help="Euler steps (default: 25)")
    parser.add_argument("--cfg", type=float, default=4.5, help="guidance strength (default: 4.5)")
    parser.add_argument("--seed", type=int, default=42, help="noise seed (default: 42)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of audio (default: 8, shortened to the video's length)")
    parser.add_argument("--prompt", default="", help="text prompt")
    parser.add_argument("--negative-prompt", default="", help="negative text prompt")
    parser.add_argument("--no-checksum", action="store_true",
                        help="skip the MD5 check of official checkpoint files")
    parser.add_argument("--random-weights", action="store_true",
                        help="full-size networks with random weights (timing and export checks; no real audio)")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "tensorrt"],
                        help="runtime of the generator's graphs; auto = best installed per graph among those "
                             "in --export (tensorrt > onnxruntime > torch)")
    parser.add_argument("--export", type=Path, help="a `deepsound-rt export` directory (onnxruntime/tensorrt)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay the velocity step, VAE and vocoder as CUDA graphs (CUDA only)")
    steps = parser.add_argument_group("DeepSound steps")
    steps.add_argument("--mode", default="s4", choices=["s4", "s3", "gen"],
                       help="s4: all steps (default); s3: stop after voice-over removal; gen: step 1 only")
    steps.add_argument("--postprocess", default="rep", choices=["rep", "neg", "rm"],
                       help="when the audio is silent after removal: rep = step-1 audio (default), "
                            "neg = regenerate with negative prompt 'human voice', rm = no audio")
    steps.add_argument("--judge", default=default_judge, choices=["auto", "cot", "qa", "vad", "always"],
                       help="voice-over judge: the MLLM (cot, qa), the speech detector (vad), or always "
                            f"(assume voice-over: removal always runs); auto = cot with --mllm, else vad "
                            f"(default: {default_judge})")
    steps.add_argument("--judge-mllm", type=Path,
                       help="another checkpoint for the cot/qa judge, e.g. VideoLLaMA2.1-7B-AV-QA (default: --mllm)")
    steps.add_argument("--mllm", type=Path, help="VideoLLaMA2.1-7B-AV(-CoT/-QA) directory (config.json + safetensors)")
    steps.add_argument("--siglip", type=Path, help="SigLIP so400m/14@384 directory (the MLLM's vision tower)")
    steps.add_argument("--separator", type=Path, help="BS-RoFormer viperx ep317 checkpoint (default: in --weights)")
    steps.add_argument("--vad-share", type=float, default=0.10,
                       help="vad judge: voice-over when speech covers at least this share of the clip (0.10)")


def build_parser() -> argparse.ArgumentParser:
    from .config import PRESETS

    parser = argparse.ArgumentParser(prog="deepsound-rt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="generate audio for a video")
    run.add_argument("video", type=Path)
    run.add_argument("-o", "--output", type=Path, required=True, help="output .mp4 (video + audio) or .wav")
    _add_generation_args(run, default_preset="large_44k_v2")

    demo = sub.add_parser("demo", help="run the bundled sample clip through the dev preset")
    demo.add_argument("-o", "--output", type=Path, default=Path("out/demo.mp4"))
    # Random judges never answer "voice-over", so the demo assumes it to show every step.
    _add_generation_args(demo, default_preset="dev", default_judge="always")

    export = sub.add_parser("export", help="export a preset's graphs to ONNX, then prove them on ONNX Runtime")
    export.add_argument("--preset", required=True, choices=sorted(PRESETS))
    export.add_argument("--out", type=Path, required=True, help="export directory (new, empty or a previous export)")
    export.add_argument("--weights", type=Path, help="directory with the official checkpoint files")
    export.add_argument("--random-weights", action="store_true", help="full-size graphs with random weights")
    export.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="graph precision (fp32; bf16/fp16: typed graphs, which TensorRT builds at that precision)")
    export.add_argument("--duration", type=float, default=8.0, help="clip seconds baked into the flow graphs (8)")
    export.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime parity check")

    verify = sub.add_parser("verify", help="check our definitions against goldens and manifests, or an export")
    verify.add_argument("--goldens", type=Path, default=None,
                        help="golden directory (default: ../shared/reference/goldens)")
    verify.add_argument("--manifest", type=Path, action="append", default=[],
                        help="check only this manifest (repeatable); default: every known manifest")
    verify.add_argument("--manifests", type=Path, default=None,
                        help="manifest directory (default: ../shared/reference/manifests)")
    verify.add_argument("--export", type=Path,
                        help="instead: run each graph of this export on ONNX Runtime and its torch module, compare")
    verify.add_argument("--weights", type=Path, help="with --export: the weights the export was made from")
    verify.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"],
                        help="with --export: run the graphs on ONNX Runtime (CPU) or TensorRT (CUDA GPU)")
    sub.add_parser("bench", help="per-stage latency, every variant side by side (deepsound-rt bench --help)")
    return parser


def _engine_from_args(args: argparse.Namespace):
    from .engine import Engine, EngineConfig

    config = EngineConfig(preset=args.preset, weights=args.weights, device=args.device, dtype=args.dtype,
                          steps=args.steps, cfg_strength=args.cfg, verify_checksums=not args.no_checksum,
                          random_weights=args.random_weights, mllm=args.mllm, judge_mllm=args.judge_mllm,
                          siglip=args.siglip,
                          separator=args.separator, vad_min_speech_share=args.vad_share, backend=args.backend,
                          export=args.export, cuda_graphs=args.cuda_graphs)
    return Engine(config)


def _generate(args: argparse.Namespace, video: Path) -> int:
    from .io.output import check_output_path
    from .io.video import probe_video
    from .progress import ConsoleProgress, print_steps, print_timings

    probe_video(video)  # fail on a bad input or output path before loading any weights
    check_output_path(args.output, video)
    engine = _engine_from_args(args)
    if engine.preset.random_weights or args.random_weights:
        print(f"note: preset '{engine.preset.name}' uses RANDOM weights: the audio is noise-like, "
              "not a real result (use --preset NAME --weights DIR for the official models)", file=sys.stderr)
    options = dict(prompt=args.prompt, negative_prompt=args.negative_prompt, duration=args.duration, seed=args.seed)
    with ConsoleProgress() as progress:
        if args.mode == "gen":
            result = engine.generate(video, progress=progress, **options)
        else:
            for event in engine.steps(video, mode=args.mode, postprocess=args.postprocess, judge=args.judge,
                                      progress=progress, **options):
                progress.step(event)
                if event.result is not None:
                    result = event.result
        path = result.save(args.output)
    if args.mode == "gen":
        print_timings(result.timings, result.duration_s, f"{result.device}, {result.dtype}")
        audio = f"{result.duration_s:.2f} s of audio at {result.sample_rate} Hz"
    else:
        print_steps(result, f"{engine.device}, {str(engine.dtype).removeprefix('torch.')}")
        audio = "no audio" if result.audio is None else f"{result.duration_s:.2f} s of audio at {result.sample_rate} Hz"
    print(f"wrote {path} ({audio})")
    return 0


def _run(args: argparse.Namespace) -> int:
    return _generate(args, args.video)


def _demo(args: argparse.Namespace) -> int:
    from .io.sample import sample_clip_path

    args.output.parent.mkdir(parents=True, exist_ok=True)  # the demo's own default folder, out/
    return _generate(args, sample_clip_path())


def _verify(args: argparse.Namespace) -> int:
    if args.export is not None:
        from .verify.export_parity import run_export_verify

        return run_export_verify(args.export, args.weights, args.backend)
    from .verify.report import run_verify

    return run_verify(goldens=args.goldens, manifests_dir=args.manifests, manifests=args.manifest)


def _export(args: argparse.Namespace) -> int:
    from .export import export_preset
    from .progress import ConsoleProgress
    from .verify.export_parity import run_export_verify

    with ConsoleProgress() as progress:
        manifest = export_preset(args.preset, args.out, weights=args.weights, dtype=args.dtype,
                                 duration_s=args.duration, random_weights=args.random_weights, progress=progress)
    print(f"exported {len(manifest.graphs)} graphs of {args.preset} ({args.duration:g} s) to {args.out}")
    return 0 if args.no_verify else run_export_verify(args.out, args.weights)


def _bench(bench_args: list[str]) -> int:
    """The harness lives in the source checkout's benchmarks/ (nothing in the package imports it)."""
    import runpy

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
    if not script.is_file():
        raise DeepSoundError(f"bench needs the source checkout: {script} not found")
    return runpy.run_path(str(script))["main"](bench_args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.WARNING, format="deepsound-rt: %(levelname)s: %(message)s")
    try:
        if argv[:1] == ["bench"]:  # the harness parses its own options
            return _bench(argv[1:])
        args = build_parser().parse_args(argv)
        return {"run": _run, "demo": _demo, "verify": _verify, "export": _export}[args.command](args)
    except DeepSoundError as exc:
        print(f"deepsound-rt: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("deepsound-rt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
