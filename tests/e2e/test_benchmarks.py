"""The GPU benchmark keeps working: bench/gpu.sh runs end to end on the CPU (tiny models).

The compiled half is left out here (--no-compile): compiling four times would cost CI minutes,
and tests/integration/test_speed.py covers --compile on the engine itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_runs_end_to_end_on_the_cpu(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(ROOT / "bench" / "gpu.sh"), "--no-compile", "--steps", "2", "--probes", "1",
         "--clients", "2", "--jobs", "4", "--workdir", str(tmp_path)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for model in ("tiny SD", "tiny SDXL"):
        assert f"{model}, 64x64" in done.stdout
    assert done.stdout.count("bare diffusers, eager, batch 8:") == 2  # the CPU's cap at 64 px
    assert done.stdout.count("sdapi serve: lone request") == 2
