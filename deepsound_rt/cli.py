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
DEMO_OUTPUT = Path("out/demo.mp4")
log = logging.getLogger("deepsound_rt.cli")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are DeepSoundErrors: one line and exit 2, like every other
    problem the user can fix (argparse's own prints the usage block first)."""

    def error(self, message: str):
        raise DeepSoundError(f"{self.prog}: {message} (see {self.prog} --help)")


def _add_generation_args(parser: argparse.ArgumentParser, default_preset: str, default_judge: str | None = None) -> None:
    """Options that build an EngineConfig and a RunOptions; choices and defaults are theirs."""
    from .config import PRESETS
    from .options import (BACKEND_CHOICES, DTYPES, JUDGES, KERNEL_SETTINGS, MODES, POSTPROCESSES, EngineConfig,
                          RunOptions, default_of)

    engine, run = (lambda name: default_of(EngineConfig, name)), (lambda name: default_of(RunOptions, name))
    parser.add_argument("--preset", default=default_preset, choices=sorted(PRESETS),
                        help="model preset (default: %(default)s)")
    parser.add_argument("--weights", type=Path, help="directory with the official checkpoint files")
    parser.add_argument("--device", default=engine("device"), help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--dtype", default=engine("dtype"), choices=DTYPES, help="auto = bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--num-steps", "--steps", dest="num_steps", type=int, default=engine("num_steps"),
                        help="Euler steps, 1 to 1000 (default: %(default)s)")
    parser.add_argument("--cfg", type=float, default=engine("cfg_strength"),
                        help="guidance strength in [0, 100]; below 1 no guidance (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=run("seed"), help="noise seed in [0, 2**63) (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=run("duration"),
                        help="seconds of audio (default: 8, shortened to the video's length)")
    parser.add_argument("--prompt", default=run("prompt"), help="text prompt (CLIP reads its first 75 tokens)")
    parser.add_argument("--negative-prompt", default=run("negative_prompt"), help="negative text prompt")
    parser.add_argument("--no-checksum", action="store_true",
                        help="skip the MD5 check of official checkpoint files")
    parser.add_argument("--random-weights", action="store_true",
                        help="full-size networks with random weights (timing and export checks; no real audio)")
    parser.add_argument("--backend", default=engine("backend"), choices=BACKEND_CHOICES,
                        help="runtime of the graphs; auto = best installed per graph among those in --export "
                             "(tensorrt > onnxruntime > torch)")
    parser.add_argument("--export", type=Path, help="a `deepsound-rt export` directory (onnxruntime/tensorrt)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="replay the velocity step, VAE and vocoder as CUDA graphs (CUDA only)")
    parser.add_argument("--kernels", default=engine("kernels"), choices=KERNEL_SETTINGS,
                        help="our fused kernels: auto = where built for the device, on = required, off = torch ops "
                             "(default: %(default)s, from $DEEPSOUND_RT_KERNELS when set)")
    steps = parser.add_argument_group("DeepSound steps")
    steps.add_argument("--mode", default=run("mode"), choices=MODES,
                       help="s4: all steps; s3: stop after voice-over removal; gen: step 1 only (default: %(default)s)")
    steps.add_argument("--postprocess", default=run("postprocess"), choices=POSTPROCESSES,
                       help="when the audio is silent after removal: rep = step-1 audio, "
                            "neg = regenerate with negative prompt 'human voice', rm = no audio (default: %(default)s)")
    steps.add_argument("--judge", default=default_judge or run("judge"), choices=JUDGES,
                       help="voice-over judge: the MLLM (cot, qa), the speech detector (vad), or always "
                            "(assume voice-over: removal always runs); auto = cot with --mllm, else vad "
                            "(default: %(default)s)")
    steps.add_argument("--judge-mllm", type=Path,
                       help="another checkpoint for the cot/qa judge, e.g. VideoLLaMA2.1-7B-AV-QA (default: --mllm)")
    steps.add_argument("--mllm", type=Path, help="VideoLLaMA2.1-7B-AV(-CoT/-QA) directory (config.json + safetensors)")
    steps.add_argument("--siglip", type=Path, help="SigLIP so400m/14@384 directory (the MLLM's vision tower)")
    steps.add_argument("--separator", type=Path, help="BS-RoFormer viperx ep317 checkpoint (default: in --weights)")
    steps.add_argument("--vad-share", type=float, default=engine("vad_min_speech_share"),
                       help="vad judge: voice-over when speech covers at least this share of the clip (%(default)s)")


def build_parser() -> argparse.ArgumentParser:
    from .config import DEFAULT_DURATION_S, PRESETS
    from .export.exporter import EXPORT_DTYPES

    parser = OneLineParser(prog="deepsound-rt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="generate audio for a video")
    run.add_argument("video", type=Path)
    run.add_argument("-o", "--output", type=Path, required=True, help="output .mp4 (video + audio) or .wav")
    _add_generation_args(run, default_preset="large_44k_v2")

    demo = sub.add_parser("demo", help="run the bundled sample clip through the dev preset")
    demo.add_argument("-o", "--output", type=Path, default=DEMO_OUTPUT)
    # Random judges never answer "voice-over", so the demo assumes it to show every step.
    _add_generation_args(demo, default_preset="dev", default_judge="always")

    export = sub.add_parser("export", help="export a preset's graphs to ONNX, then prove them on ONNX Runtime")
    export.add_argument("--preset", required=True, choices=sorted(PRESETS))
    export.add_argument("--out", type=Path, required=True, help="export directory (new, empty or a previous export)")
    export.add_argument("--weights", type=Path, help="directory with the official checkpoint files")
    export.add_argument("--random-weights", action="store_true", help="full-size graphs with random weights")
    export.add_argument("--dtype", default=EXPORT_DTYPES[0], choices=EXPORT_DTYPES,
                        help="graph precision; TensorRT picks fp16/bf16 when it builds its engines")
    export.add_argument("--duration", type=float, default=DEFAULT_DURATION_S,
                        help="clip seconds baked into the flow graphs (%(default)s)")
    export.add_argument("--graphs", nargs="+", metavar="GRAPH",
                        help="only these graphs (default: what the specs export with the weights source)")
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
    sub.add_parser("bench", help="per-stage latency, every variant side by side (deepsound-rt bench --help)")
    return parser


def _weights_source(args: argparse.Namespace) -> str:
    return "full-random" if args.random_weights else "auto"


def _config_from_args(args: argparse.Namespace):
    from .options import EngineConfig

    config = EngineConfig(preset=args.preset, weights=args.weights, weights_source=_weights_source(args),
                          device=args.device, dtype=args.dtype, num_steps=args.num_steps, cfg_strength=args.cfg,
                          verify_checksums=not args.no_checksum, mllm=args.mllm, judge_mllm=args.judge_mllm,
                          siglip=args.siglip, separator=args.separator, vad_min_speech_share=args.vad_share,
                          backend=args.backend, export=args.export, cuda_graphs=args.cuda_graphs,
                          kernels=args.kernels)
    return config


def _load_engine(config):
    """The one place the CLI loads models (tests stop here to check everything before it)."""
    from .engine import Engine

    return Engine(config)


def _generate(args: argparse.Namespace, video: Path) -> int:
    from .console import ConsoleProgress, print_steps, print_timings
    from .io.output import check_output_path
    from .io.video import probe_video
    from .options import RunOptions

    options = RunOptions(mode=args.mode, postprocess=args.postprocess, judge=args.judge, prompt=args.prompt,
                         negative_prompt=args.negative_prompt, duration=args.duration, seed=args.seed)
    config = _config_from_args(args)  # every option is checked before any file is opened
    for note in options.ignored_settings():
        log.warning("%s", note)
    probe_video(video)  # fail on a bad input or output path before loading any weights
    check_output_path(args.output, video)
    engine = _load_engine(config)
    if engine.config.weights_source.random:
        print(f"note: preset '{engine.preset.name}' uses RANDOM weights: the audio is noise-like, "
              "not a real result (use --preset NAME --weights DIR for the official models)", file=sys.stderr)
    with ConsoleProgress() as progress:
        if options.mode == "gen":
            result = engine.generate(video, options, progress=progress)
        else:
            for event in engine.steps(video, options, progress=progress):
                progress.step(event)
                if event.result is not None:
                    result = event.result
        path = result.save(args.output)
    if options.mode == "gen":
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

    if args.output == DEMO_OUTPUT:
        args.output.parent.mkdir(parents=True, exist_ok=True)  # the demo's own default folder, out/; not a user's
    return _generate(args, sample_clip_path())


def _verify(args: argparse.Namespace) -> int:
    if args.weights is not None and args.export is None:
        log.warning("ignored: --weights: it names the weights of an export, so it goes with --export")
    if args.export is not None:
        from .verify.export_parity import run_export_verify

        return run_export_verify(args.export, args.weights)
    from .verify.report import run_verify

    return run_verify(goldens=args.goldens, manifests_dir=args.manifests, manifests=args.manifest)


def _export(args: argparse.Namespace) -> int:
    from .console import ConsoleProgress
    from .export import export_preset
    from .verify.export_parity import run_export_verify

    with ConsoleProgress() as progress:
        manifest = export_preset(args.preset, args.out, weights=args.weights, dtype=args.dtype,
                                 duration_s=args.duration, weights_source=_weights_source(args), progress=progress,
                                 graphs=args.graphs)
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
