"""``deepsound-rt`` command line: run, demo, verify.

Every user-fixable problem (a :class:`DeepSoundError`) ends as one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import DeepSoundError

EXIT_USAGE = 2


def _add_generation_args(parser: argparse.ArgumentParser, default_preset: str) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepsound-rt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="generate audio for a video")
    run.add_argument("video", type=Path)
    run.add_argument("-o", "--output", type=Path, required=True, help="output .mp4 (video + audio) or .wav")
    _add_generation_args(run, default_preset="large_44k_v2")

    demo = sub.add_parser("demo", help="run the bundled sample clip through the dev preset")
    demo.add_argument("-o", "--output", type=Path, default=Path("out/demo.mp4"))
    _add_generation_args(demo, default_preset="dev")

    verify = sub.add_parser("verify", help="check our definitions against goldens and manifests")
    verify.add_argument("--goldens", type=Path, default=None,
                        help="golden directory (default: ../shared/reference/goldens)")
    verify.add_argument("--manifest", type=Path, action="append", default=[],
                        help="check only this manifest (repeatable); default: every known manifest")
    verify.add_argument("--manifests", type=Path, default=None,
                        help="manifest directory (default: ../shared/reference/manifests)")
    return parser


def _engine_from_args(args: argparse.Namespace):
    from .engine import Engine, EngineConfig

    config = EngineConfig(preset=args.preset, weights=args.weights, device=args.device, dtype=args.dtype,
                          steps=args.steps, cfg_strength=args.cfg, verify_checksums=not args.no_checksum,
                          random_weights=args.random_weights)
    return Engine(config)


def _generate(args: argparse.Namespace, video: Path) -> int:
    from .io.output import check_output_path
    from .io.video import probe_video
    from .progress import ConsoleProgress, print_timings

    probe_video(video)  # fail on a bad input or output path before loading any weights
    check_output_path(args.output, video)
    engine = _engine_from_args(args)
    if engine.preset.random_weights or args.random_weights:
        print(f"note: preset '{engine.preset.name}' uses RANDOM weights: the audio is noise-like, "
              "not a real result (use --preset NAME --weights DIR for the official models)", file=sys.stderr)
    with ConsoleProgress() as progress:
        result = engine.generate(video, prompt=args.prompt, negative_prompt=args.negative_prompt,
                                 duration=args.duration, seed=args.seed, progress=progress)
        with result.timings.measure("write output"):
            path = result.save(args.output)
    print_timings(result)
    print(f"wrote {path} ({result.duration_s:.2f} s of audio at {result.sample_rate} Hz)")
    return 0


def _run(args: argparse.Namespace) -> int:
    return _generate(args, args.video)


def _demo(args: argparse.Namespace) -> int:
    from .io.sample import sample_clip_path

    args.output.parent.mkdir(parents=True, exist_ok=True)  # the demo's own default folder, out/
    return _generate(args, sample_clip_path())


def _verify(args: argparse.Namespace) -> int:
    from .verify.report import run_verify

    return run_verify(goldens=args.goldens, manifests_dir=args.manifests, manifests=args.manifest)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = {"run": _run, "demo": _demo, "verify": _verify}[args.command]
    try:
        return handler(args)
    except DeepSoundError as exc:
        print(f"deepsound-rt: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("deepsound-rt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
