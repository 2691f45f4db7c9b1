"""``deepsound-rt`` command line: run, demo, export, verify, bench, serve.

Every user-fixable problem (a :class:`DeepSoundError`) ends as one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path

from .errors import DeepSoundError

EXIT_USAGE = 2
EXIT_SOME_FAILED = 1
BATCH_LOG_NAME = "deepsound-rt-log.jsonl"
DEMO_OUTPUT = Path("out/demo.mp4")
log = logging.getLogger("deepsound_rt.cli")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are DeepSoundErrors: one line and exit 2, like every other
    problem the user can fix (argparse's own prints the usage block first)."""

    def error(self, message: str):
        raise DeepSoundError(f"{self.prog}: {message} (see {self.prog} --help)")


def _add_engine_args(parser: argparse.ArgumentParser, default_preset: str) -> None:
    """What to load and how to run it (EngineConfig), shared by run, demo and serve; choices and
    defaults are EngineConfig's."""
    from .config import PRESETS
    from .options import (BACKEND_CHOICES, COMPILE_BACKENDS, DTYPES, KERNEL_SETTINGS, MEMORY_TIERS, MLLM_PRECISIONS,
                          EngineConfig, default_of)

    engine = functools.partial(default_of, EngineConfig)
    parser.add_argument("--preset", default=default_preset, choices=sorted(PRESETS),
                        help="model preset (default: %(default)s)")
    parser.add_argument("--weights", type=Path, help="directory with the official checkpoint files")
    parser.add_argument("--device", default=engine("device"), help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--dtype", default=engine("dtype"), choices=DTYPES, help="auto = bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--num-steps", "--steps", dest="num_steps", type=int, default=engine("num_steps"),
                        help="Euler steps, 1 to 1000 (default: %(default)s)")
    parser.add_argument("--cfg", type=float, default=engine("cfg_strength"),
                        help="guidance strength in [0, 100]; below 1 no guidance (default: %(default)s)")
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
    parser.add_argument("--window-batch", type=_window_batch, default=engine("window_batch"),
                        help="windows of a long video per velocity call; auto = by free memory (default: %(default)s)")
    parser.add_argument("--kernels", default=engine("kernels"), choices=KERNEL_SETTINGS,
                        help="our fused kernels: auto = where built for the device, on = required, off = torch ops "
                             "(default: %(default)s, from $DEEPSOUND_RT_KERNELS when set)")
    parser.add_argument("--memory", default=engine("memory"), choices=MEMORY_TIERS,
                        help="max: every network on the device (fastest); balanced: the MLLM and the separator "
                             "only during their steps; low: also int8 LLM weights and the video encoders only "
                             "while features are computed (default: %(default)s)")
    parser.add_argument("--mllm-precision", default=engine("mllm_precision"), choices=MLLM_PRECISIONS,
                        help="the MLLM's language-model weights: int8, or dtype (as --dtype); auto = int8 with "
                             "--memory low (default: %(default)s)")
    speed = parser.add_argument_group("speed levers (off by default; results equal, fp8 approximates)")
    speed.add_argument("--static-decode", action="store_true", default=engine("static_decode"),
                       help="MLLM decoding with a static KV cache, greedy on the device (a CUDA graph per token on a GPU)")
    speed.add_argument("--compile", action="store_const", const=COMPILE_BACKENDS[0], default=engine("compile"),
                       help="torch.compile (%(const)s) the velocity step and the separator core, once per duration")
    speed.add_argument("--fp8", action="store_true", default=engine("fp8"),
                       help="FP8 matmuls in the flow network (Hopper GPUs; ~5%% error)")
    speed.add_argument("--overlap", action="store_true", default=engine("overlap"),
                       help="plan beside step 1, video decoding beside CLIP, the judge's encoders ahead of it")
    speed.add_argument("--sdpa-encoders", action="store_true", default=engine("sdpa_encoders"),
                       help="BEATs attention through SDPA")
    models = parser.add_argument_group("models of the DeepSound steps")
    models.add_argument("--judge-mllm", type=Path,
                        help="another checkpoint for the cot/qa judge, e.g. VideoLLaMA2.1-7B-AV-QA (default: --mllm)")
    models.add_argument("--mllm", type=Path, help="VideoLLaMA2.1-7B-AV(-CoT/-QA) directory (config.json + safetensors)")
    models.add_argument("--siglip", type=Path, help="SigLIP so400m/14@384 directory (the MLLM's vision tower)")
    models.add_argument("--separator", type=Path, help="BS-RoFormer viperx ep317 checkpoint (default: in --weights)")
    models.add_argument("--vad-share", type=float, default=engine("vad_min_speech_share"),
                        help="vad judge: voice-over when speech covers at least this share of the clip (%(default)s)")


def _add_generation_args(parser: argparse.ArgumentParser, default_preset: str, default_judge: str | None = None) -> None:
    """The engine's options and a run's (RunOptions); choices and defaults are theirs."""
    from .options import JUDGES, MODES, POSTPROCESSES, SEAMS, RunOptions, default_of

    _add_engine_args(parser, default_preset)
    run = functools.partial(default_of, RunOptions)
    parser.add_argument("--seed", type=int, default=run("seed"), help="noise seed in [0, 2**63) (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=run("duration"),
                        help="seconds of audio from the video's start (default: the whole video; longer than "
                             "8 s is made in overlapping 8 s windows)")
    parser.add_argument("--window-overlap", type=float, default=run("window_overlap"),
                        help="seconds the windows of a long video overlap (default: %(default)s)")
    parser.add_argument("--seam", default=run("seam"), choices=SEAMS,
                        help="how windows join: crossfade = equal-power crossfade of independent windows, "
                             "inpaint = each window's overlap held to the previous one's latents (default: %(default)s)")
    parser.add_argument("--prompt", default=run("prompt"), help="text prompt (CLIP reads its first 75 tokens)")
    parser.add_argument("--plot", action="store_true",
                        help="also write a picture of each result beside its output (.png): video frames over "
                             "the waveform and mel spectrogram, with the windows' seams and each step's decision")
    parser.add_argument("--negative-prompt", default=run("negative_prompt"), help="negative text prompt")
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


def _add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1; any other address needs a token)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--token", help="bearer token every route but /healthz asks for "
                                        "(default: $DEEPSOUND_RT_TOKEN; none: loopback only)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="job database, uploads and results (default: ~/.local/state/deepsound-rt)")
    parser.add_argument("--devices", help="comma-separated devices, one runner and loaded Engine each, e.g. "
                                          "cuda:0,cuda:1 (default: --device; auto = every CUDA GPU, else the CPU)")
    parser.add_argument("--queue-size", type=int, default=32, help="jobs that may wait; more get 429 (default: 32)")
    parser.add_argument("--max-upload-mb", type=float, default=512, help="largest upload, MiB (default: 512)")
    parser.add_argument("--max-clip-seconds", type=float, default=60, help="longest clip accepted (default: 60)")
    parser.add_argument("--lease-seconds", type=float, default=30,
                        help="a job whose worker stops renewing its lease this long is run again (default: 30)")
    _add_engine_args(parser, default_preset="large_44k_v2")
    ray = parser.add_argument_group("Ray Serve (several GPUs or machines)")
    ray.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment, one replica per GPU")
    ray.add_argument("--ray-address", help="join this Ray cluster (default: start a local Ray instance)")
    ray.add_argument("--replicas", type=int, default=1, help="replicas (default: 1; with autoscaling: the first count)")
    ray.add_argument("--min-replicas", type=int, help="autoscale by job backlog, down to this many")
    ray.add_argument("--max-replicas", type=int, help="autoscale by job backlog, up to this many")
    ray.add_argument("--replica-cpus", type=float, default=1.0, help="CPUs Ray reserves per replica (default: 1)")


def build_parser() -> argparse.ArgumentParser:
    from .config import DEFAULT_DURATION_S, PRESETS
    from .export.exporter import EXPORT_DTYPES
    from .io.output import AUDIO_SUFFIXES, VIDEO_SUFFIXES
    from .verify.export_parity import VERIFY_BACKENDS

    parser = OneLineParser(prog="deepsound-rt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="generate audio for a video, or for many (files, folders, CSV/JSONL lists)")
    run.add_argument("inputs", type=Path, nargs="+", metavar="VIDEO",
                     help="a video; or several, folders of videos, or .csv/.jsonl lists (a 'video' column, "
                          "optional 'output' and per-row options such as prompt, seed, duration)")
    run.add_argument("-o", "--output", type=Path, required=True,
                     help="output .mp4 (video + audio) or .wav for one video; an output folder for a batch")
    batch = run.add_argument_group("batches")
    batch.add_argument("--suffix", default=".mp4", choices=VIDEO_SUFFIXES + AUDIO_SUFFIXES,
                       help="output type of a batch's files (default: %(default)s)")
    batch.add_argument("--overwrite", action="store_true", help="redo videos whose output already exists")
    batch.add_argument("--log", type=Path, help=f"JSONL log of results (default: OUTPUT/{BATCH_LOG_NAME})")
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
                        help="graph precision: fp32 (default), or bf16/fp16 typed graphs, which TensorRT builds at "
                             "that precision")
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
                        help="instead: run each graph of this export on --backend and its torch module, compare")
    verify.add_argument("--weights", type=Path, help="with --export: the weights the export was made from")
    verify.add_argument("--backend", default=VERIFY_BACKENDS[0], choices=VERIFY_BACKENDS,
                        help="with --export: run the graphs on ONNX Runtime (CPU, the default) or TensorRT (CUDA GPU)")
    sub.add_parser("bench", help="per-stage latency, every variant side by side (deepsound-rt bench --help)")

    serve = sub.add_parser("serve", help="HTTP job API with live step events, metrics and a web page")
    _add_serve_args(serve)
    return parser


def _window_batch(text: str) -> int | str:
    """``auto`` or a count (EngineConfig checks its range)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"auto or an integer, not {text!r}") from None


def _weights_source(args: argparse.Namespace) -> str:
    return "full-random" if args.random_weights else "auto"


def _engine_config_from_args(args: argparse.Namespace):
    """The one way from CLI options to an EngineConfig (run, demo and serve); it checks every
    option, so this runs before any file is opened."""
    from .options import EngineConfig

    return EngineConfig(preset=args.preset, weights=args.weights, weights_source=_weights_source(args),
                        device=args.device, dtype=args.dtype, num_steps=args.num_steps, cfg_strength=args.cfg,
                        verify_checksums=not args.no_checksum, mllm=args.mllm, judge_mllm=args.judge_mllm,
                        siglip=args.siglip, separator=args.separator, vad_min_speech_share=args.vad_share,
                        backend=args.backend, export=args.export, cuda_graphs=args.cuda_graphs, kernels=args.kernels,
                        static_decode=args.static_decode, compile=args.compile, fp8=args.fp8, overlap=args.overlap,
                        sdpa_encoders=args.sdpa_encoders, memory=args.memory, mllm_precision=args.mllm_precision,
                        window_batch=args.window_batch)


def _run_options_from_args(args: argparse.Namespace):
    """The run's options, checked, with a warning line for any that its mode never reads."""
    from .options import RunOptions

    options = RunOptions(mode=args.mode, postprocess=args.postprocess, judge=args.judge, prompt=args.prompt,
                         negative_prompt=args.negative_prompt, duration=args.duration, seed=args.seed,
                         window_overlap=args.window_overlap, seam=args.seam)
    for note in options.ignored_settings():
        log.warning("%s", note)
    return options


def _load_engine(config):
    """The one place the CLI loads models (tests stop here to check everything before it)."""
    from .engine import Engine

    return Engine(config)


def _generate(args: argparse.Namespace, video: Path) -> int:
    from .console import ConsoleProgress, print_steps, print_timings
    from .io.output import check_output_path
    from .io.video import probe_video

    options = _run_options_from_args(args)
    config = _engine_config_from_args(args)
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
        if args.plot:
            from .io.output import write_bytes
            from .plot import render_result

            picture = write_bytes(args.output.with_suffix(".png"), render_result(result))
    if options.mode == "gen":
        print_timings(result.timings, result.duration_s, f"{result.device}, {result.dtype}")
        audio = f"{result.duration_s:.2f} s of audio at {result.sample_rate} Hz"
    else:
        print_steps(result, f"{engine.device}, {str(engine.dtype).removeprefix('torch.')}")
        audio = "no audio" if result.audio is None else f"{result.duration_s:.2f} s of audio at {result.sample_rate} Hz"
    print(f"wrote {path} ({audio})" + (f" and {picture}" if args.plot else ""))
    return 0


def _run(args: argparse.Namespace) -> int:
    from .io.batch import LIST_SUFFIXES

    only = args.inputs[0]
    single = len(args.inputs) == 1 and not only.is_dir() and only.suffix.lower() not in LIST_SUFFIXES
    return _generate(args, only) if single else _run_batch(args)


def _run_batch(args: argparse.Namespace) -> int:
    """Every video of the inputs on one Engine, into the output folder; exit 1 when any failed."""
    from .console import ConsoleProgress, print_batch_summary
    from .errors import InputError, OutputError
    from .io.batch import expand_inputs
    from .io.output import AUDIO_SUFFIXES, VIDEO_SUFFIXES

    folder = args.output
    if folder.suffix.lower() in AUDIO_SUFFIXES + VIDEO_SUFFIXES and not folder.is_dir():
        raise OutputError(f"{folder}: several videos (a directory, a list or many files) are written into an "
                          "output folder, not one file")
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: a batch writes into a folder; this is a file")
    if not folder.parent.is_dir():
        raise OutputError(f"{folder}: its parent folder {folder.parent} does not exist")
    options = _run_options_from_args(args)
    config = _engine_config_from_args(args)
    items = expand_inputs(args.inputs)  # an unreadable list fails now, before any weights load
    if not items:
        raise InputError(f"no videos in {', '.join(map(str, args.inputs))}")
    folder.mkdir(exist_ok=True)
    engine = _load_engine(config)
    outcomes = []
    with ConsoleProgress() as progress:
        progress.files(0, len(items))
        for outcome in engine.run_many(items, options, output_dir=folder, suffix=args.suffix,
                                       overwrite=args.overwrite, log=args.log or folder / BATCH_LOG_NAME, plot=args.plot,
                                       progress=progress, on_step=progress.step):
            outcomes.append(outcome)
            progress.file_done(outcome, len(outcomes), len(items))
    print_batch_summary(outcomes)
    return EXIT_SOME_FAILED if any(outcome.status == "failed" for outcome in outcomes) else 0


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

        return run_export_verify(args.export, args.weights, args.backend)
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


def _serve(args: argparse.Namespace) -> int:
    import os

    from .config import resolve_device

    try:
        from .serving.server import run_ray, run_uvicorn
        from .serving.settings import MIB, ServeSettings, expand_devices
    except ImportError as error:
        raise DeepSoundError(f"serve needs its packages: pip install 'deepsound_rt[serve]' ({error})") from error

    devices = expand_devices(args.devices or args.device)
    if not devices:
        raise DeepSoundError("--devices: give at least one device")
    for device in devices:
        resolve_device(device)  # an unknown or absent device fails now, not in a runner
    for name in ("queue_size", "max_upload_mb", "max_clip_seconds", "lease_seconds", "replicas"):
        if getattr(args, name) <= 0:
            raise DeepSoundError(f"--{name.replace('_', '-')} must be positive")
    state_home = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    data_dir = args.data_dir or state_home / "deepsound-rt"
    settings = ServeSettings(engine=_engine_config_from_args(args), data_dir=data_dir.expanduser(), devices=devices,
                             token=args.token or os.environ.get("DEEPSOUND_RT_TOKEN") or None,
                             max_upload_bytes=int(args.max_upload_mb * MIB), max_clip_seconds=args.max_clip_seconds,
                             queue_size=args.queue_size, lease_seconds=args.lease_seconds)
    logging.getLogger("deepsound_rt.serving").setLevel(logging.INFO)
    if args.ray:
        run_ray(settings, args.host, args.port, address=args.ray_address, replicas=args.replicas,
                min_replicas=args.min_replicas, max_replicas=args.max_replicas, replica_cpus=args.replica_cpus)
    else:
        run_uvicorn(settings, args.host, args.port)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.WARNING, format="deepsound-rt: %(levelname)s: %(message)s")
    # transformers imports torchao when installed, and torch >= 2.14 logs two deprecation lines for
    # the Enum pytree constants torchao 0.18 registers: noise on every command, nothing to act on.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    try:
        if argv[:1] == ["bench"]:  # the harness parses its own options
            return _bench(argv[1:])
        args = build_parser().parse_args(argv)
        return {"run": _run, "demo": _demo, "verify": _verify, "export": _export, "serve": _serve}[args.command](args)
    except DeepSoundError as exc:
        print(f"deepsound-rt: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("deepsound-rt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
