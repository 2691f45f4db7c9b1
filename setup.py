"""Package build. The optional ``deepsound_rt._kernels`` extension is built by CMake (kernels/);
when CMake, pybind11 or a compiler is missing, or DEEPSOUND_RT_NO_KERNELS=1, the package installs
without it and the models run their torch ops."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: Path):
        super().__init__(name, sources=[])
        self.source_dir = source_dir


class CMakeBuild(build_ext):
    """Configure and build with CMake; a failed build is reported and skipped, never fatal."""

    def build_extensions(self) -> None:
        # Drop what did not build, so that install/editable steps do not look for its file.
        self.extensions = [ext for ext in self.extensions if self._build_with_cmake(ext)]

    def _build_with_cmake(self, ext: CMakeExtension) -> bool:
        if os.environ.get("DEEPSOUND_RT_NO_KERNELS") == "1":
            print("deepsound_rt: DEEPSOUND_RT_NO_KERNELS=1, skipping the kernels extension")
            return False
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        config = [
            "cmake", str(ext.source_dir),
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        try:
            import pybind11

            config.append(f"-Dpybind11_DIR={pybind11.get_cmake_dir()}")
            subprocess.run(config, cwd=build_dir, check=True)
            jobs = str(os.cpu_count() or 2)
            subprocess.run(["cmake", "--build", ".", "--parallel", jobs], cwd=build_dir, check=True)
        except (ImportError, OSError, subprocess.CalledProcessError) as exc:
            print(f"deepsound_rt: kernels extension not built ({exc}); the models will run torch ops")
            return False
        return Path(self.get_ext_fullpath(ext.name)).exists()


setup(
    name="deepsound_rt",
    version="0.1.0",
    description="Inference runtime for step-by-step video-to-audio generation (DeepSound-V1 style)",
    packages=find_packages(include=["deepsound_rt", "deepsound_rt.*"]),
    package_data={"deepsound_rt": ["assets/*.mp4", "serving/page/*"]},
    python_requires=">=3.10",
    # Ranges for embedders; requirements.txt pins the exact versions the suite passes with. Upper
    # bounds stop at the next major release, which has broken us before (PyAV 18 closed streams).
    install_requires=[
        "torch>=2.4,<3",
        "torchvision>=0.19",
        "open_clip_torch>=2.24,<4",
        "timm>=1.0,<2",
        "transformers>=5,<6",
        "tokenizers>=0.21,<1",
        "jinja2>=3.1,<4",
        "pillow>=10,<14",
        "safetensors>=0.4,<1",
        "soxr>=1.0,<2",
        "av>=14,<19",
        "soundfile>=0.12,<1",
        "numpy>=1.26,<3",
        "rich>=13,<16",
        "matplotlib>=3.8,<4",
        "silero-vad>=6,<7",
        "onnxruntime>=1.20,<2",
        "onnx>=1.17,<2",
        "onnxscript>=0.5,<1",
        "onnx-ir>=0.1.10,<2",
    ],
    extras_require={
        "plot": ["matplotlib>=3.8"],  # deepsound_rt.plot
        "int8": ["torchao>=0.18,<1"],  # int8 MLLM weights (mllm_precision="int8", the `low` memory tier)
        # `deepsound-rt serve` on one box, and on Ray Serve (the SDK imports neither)
        "serve": ["fastapi>=0.160,<1", "uvicorn>=0.30", "python-multipart>=0.0.20", "prometheus-client>=0.20",
                  "matplotlib>=3.8"],
        "ray": ["ray[serve]>=2.60,<3", "fastapi>=0.160,<1", "uvicorn>=0.30", "python-multipart>=0.0.20",
                "prometheus-client>=0.20", "matplotlib>=3.8"],
        # The versions the TensorRT backend is written for (README: never run here). onnxruntime-gpu
        # replaces the CPU onnxruntime above (both install the module `onnxruntime`): README, GPU extra.
        "gpu": ["tensorrt>=10.0,<12", "onnxruntime-gpu>=1.27,<2"],
    },
    ext_modules=[CMakeExtension("deepsound_rt._kernels", ROOT)],
    cmdclass={"build_ext": CMakeBuild},
    entry_points={"console_scripts": ["deepsound-rt=deepsound_rt.cli:main"]},
    zip_safe=False,
)
