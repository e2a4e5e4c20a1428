"""The engine's thread is the only one that computes on several cores once it runs on a CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import torch


def test_on_a_cpu_only_the_engines_thread_computes_on_several_cores(tmp_path: Path) -> None:
    # In a process of its own: the engine lowers torch's default for the threads that start after it.
    script = tmp_path / "threads.py"
    script.write_text(
        textwrap.dedent(
            """
            import json
            import threading
            import torch
            from musicgen_bento.engine import DecodeEngine, DecodeRequest, Sampling
            from musicgen_bento.engine.threads import PROCESS_THREADS
            from musicgen_bento.models.tiny import build_tiny_model

            def count_on_new_thread():
                counts = []
                thread = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
                thread.start()
                thread.join()
                return counts[0]

            before = count_on_new_thread()
            model, processor = build_tiny_model("text")
            engine = DecodeEngine(model, "cpu", 2)
            with torch.inference_mode():
                states, mask = engine.encode_conditioning(dict(processor(text=["x"], return_tensors="pt")))
            engine.decode(DecodeRequest(states, mask, None, 8, Sampling(), torch.Generator().manual_seed(0)), (0,))
            print(json.dumps({
                "process": PROCESS_THREADS,
                "new_thread_before": before,
                "engine": engine.stats().threads,
                "new_thread_after": count_on_new_thread(),
                "main_after": torch.get_num_threads(),
            }))
            engine.close()
            """
        )
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    cores = torch.get_num_threads()
    assert counts == {
        "process": cores,
        "new_thread_before": cores,  # torch's default until an engine runs
        "engine": cores,
        "new_thread_after": 1,  # a request's thread: the codec and text encoder run on one core
        "main_after": cores,  # a thread that computed before keeps its count
    }
