"""`bench/gpu_check.py --tiny`, run as a session lent a GPU runs it, at the tiny shape on whatever
device this is: so that the check is ready the day a GPU is, rather than broken by changes made
without one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_check_runs_every_phase_and_writes_its_report(tmp_path: Path) -> None:
    report_path = tmp_path / "report" / "gpu-check.json"
    env = {key: value for key, value in os.environ.items() if key != "BENTOML_HOME"}  # a store of its own
    finished = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--tiny", "--out", str(report_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert finished.returncode == 0, finished.stdout[-4000:] + finished.stderr[-4000:]
    report = json.loads(report_path.read_text())
    rows = report["rows"]
    assert {row["phase"] for row in rows} == {"tokens", "precision", "memory", "http", "targets"}
    assert not [row for row in rows if row["passed"] is False and row["phase"] != "targets"]
    tokens = rows[0]
    assert tokens["check"].endswith("engine = transformers") and tokens["passed"] is True
    finite = [row for row in rows if row["phase"] == "precision" and row["expected"] == "finite"]
    assert len(finite) == 6  # float32, float16 and bfloat16 at two shapes
    assert [row["check"].split(": ")[1] for row in rows if "concurrent /continue" in row["check"]] == [
        "1 concurrent /continue, 1 s clips",
        "8 concurrent /continue, 1 s clips",
        "16 concurrent /continue, 1 s clips",
    ]
    assert "| phase | check | measured | expected | ok |" in finished.stdout
    if not torch.cuda.is_available():
        assert finished.stdout.startswith("MEASURED ON A CPU, NOT A GPU")
        assert report["device"] == "cpu"
        assert all(row["passed"] is None for row in rows if row["phase"] == "targets")
