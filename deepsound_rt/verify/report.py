"""``deepsound-rt verify``: print PASS/FAIL per golden and manifest; non-zero exit on any failure."""
from __future__ import annotations

from pathlib import Path

from ..console import escape, report_console
from ..errors import DeepSoundError
from . import check_goldens, check_manifest, manifest_builders

# ../shared/reference as seen from the working directory, else from beside the source checkout.
DEFAULT_REFERENCES = (Path("../shared/reference"), Path(__file__).resolve().parents[3] / "shared" / "reference")


def _resolve(path: Path | None, subdir: str) -> Path:
    candidates = [Path(path)] if path is not None else [root / subdir for root in DEFAULT_REFERENCES]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise DeepSoundError(f"{subdir} directory not found: {candidates[0]}")


def run_verify(goldens: Path | None, manifests_dir: Path | None, manifests: list[Path]) -> int:
    console = report_console()
    failures = 0
    checked = 0

    if not manifests:
        golden_dir = _resolve(goldens, "goldens")
        for report in check_goldens(golden_dir):
            checked += 1
            label = escape(f"golden {report.name} ({report.kind}) [{report.path}]")
            if report.error:
                console.print(f"[red]FAIL[/] {label}: {report.error}")
            else:
                worst = report.worst
                verdict = "[green]PASS[/]" if report.passed else "[red]FAIL[/]"
                console.print(f"{verdict} {label}: worst {worst.tensor} "
                              f"max-abs {worst.max_abs:.3g} (atol {worst.atol:.3g})")
                for comparison in report.comparisons:
                    mark = "ok " if comparison.passed else "BAD"
                    console.print(f"       {mark} {comparison.tensor:<32} {comparison.max_abs:10.3g}"
                                  f"  atol {comparison.atol:.3g}", highlight=False)
            failures += not report.passed
        directory = _resolve(manifests_dir, "manifests")
        known = manifest_builders()
        manifests = [p for p in sorted(directory.glob("*.json")) if p.stem in known]

    for path in manifests:
        if not Path(path).is_file():
            raise DeepSoundError(f"manifest not found: {path}")
        report = check_manifest(Path(path))
        checked += 1
        if report.passed:
            console.print(f"[green]PASS[/] manifest {report.name}: {report.num_keys} keys match")
        else:
            detail = report.error or (f"{len(report.missing)} missing, {len(report.unexpected)} unexpected, "
                                      f"{len(report.wrong_shape)} wrong shape; first: "
                                      f"{(report.missing + report.unexpected + report.wrong_shape)[:3]}")
            console.print(f"[red]FAIL[/] manifest {report.name}: {detail}")
            failures += 1

    if checked == 0:
        raise DeepSoundError("nothing to verify: no golden or manifest of a known kind found")
    console.print(f"{checked - failures}/{checked} passed")
    return 1 if failures else 0
