"""Distributed training faults: 2 processes (accelerate, CPU, gloo) equal 1 process with the same global batch, and
a ``kill -9`` of one rank mid-run followed by ``--resume latest`` equals the uninterrupted 2-process run.

The runs are real ``accelerate launch --multi_gpu --num_processes 2 -m hifi_portrait.training.train`` launches on
the tiny random SDXL and the dataset built from the bundled photos; the 1-process reference runs in this process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from training_helpers import tiny_config

from hifi_portrait.training.train import train

pytestmark = pytest.mark.slow
STEPS = 16
ADAPTER = "hifi_portrait_adapter.safetensors"


def _config(tiny_sdxl, built_dataset, out: Path, batch: int):
    """``batch`` per process. Adam's epsilon is 1e-4, not 1e-8: with 1e-8 Adam turns the last-bit differences of
    near-zero gradients (zero-initialised convolutions), which differ with the summation order of an all-reduce,
    into steps of the full learning rate (measured: 4.7e-5 after one step, 2.2e-4 after 16, against 2.4e-7 with
    1e-4); that is rounding amplified, not a difference in what the two runs compute."""
    return tiny_config(
        tiny_sdxl,
        out,
        data={"train_data_dir": str(built_dataset), "ref_size": 32, "min_refs": 1, "max_refs": 2},
        train={"max_train_steps": STEPS, "train_batch_size": batch},
        optim={"learning_rate": 1e-3, "lr_warmup_steps": 0, "lr_scheduler": "constant", "adam_epsilon": 1e-4},
        checkpointing={"checkpointing_steps": 4, "checkpoints_total_limit": 2},
        validation={"num_validation_samples": 0, "loss_samples": 0},
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(cfg, folder: Path, *extra: str) -> subprocess.Popen:
    path = folder / f"{Path(cfg.train.output_dir).name}.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1", "HIFI_LOG_LEVEL": "WARNING"}
    env.pop("ACCELERATE_USE_CPU", None)  # the trainer itself must see that there is no GPU
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--main_process_port", str(_free_port()), "-m", "hifi_portrait.training.train", "--config", str(path)]
    # the output goes to a file, not a pipe: a pipe that nobody reads while the test polls for checkpoints blocks
    # the run once 64 KiB are written (transformers 5.0's loading bars alone write more than that)
    log = path.with_suffix(f".{len(list(folder.glob('*.log')))}.log")
    with open(log, "w") as out:
        proc = subprocess.Popen([*cmd, *extra], env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    proc.log_path = log
    return proc


def _finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    proc.wait(timeout=timeout)
    output = proc.log_path.read_text(errors="replace")
    assert proc.returncode == 0, output[-3000:]
    return output


def _max_diff(a: Path, b: Path) -> float:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    return max(float((ta[k].double() - tb[k].double()).abs().max()) for k in ta)


@pytest.fixture(scope="module")
def two_process_run(tiny_sdxl, built_dataset, tmp_path_factory):
    """An uninterrupted 2-process run, global batch 2 (1 per process)."""
    folder = tmp_path_factory.mktemp("ddp")
    output = _finish(_launch(_config(tiny_sdxl, built_dataset, folder / "two", batch=1), folder))
    assert f"done: {STEPS} steps" in output
    return folder / "two"


def test_two_processes_equal_one_process_with_the_same_global_batch(
    tiny_sdxl, built_dataset, two_process_run, tmp_path
):
    torch.set_num_threads(1)
    one = train(_config(tiny_sdxl, built_dataset, tmp_path / "one", batch=2))
    assert one.global_step == STEPS
    assert _max_diff(one.adapter_path, two_process_run / ADAPTER) < 1e-5
    # the comparison can fail: a different global batch, or an untrained adapter, is far away
    half = train(_config(tiny_sdxl, built_dataset, tmp_path / "half", batch=1))
    assert _max_diff(half.adapter_path, two_process_run / ADAPTER) > 1e-4
    first = sorted((two_process_run).glob("checkpoint-*"))[0] / ADAPTER
    assert _max_diff(first, two_process_run / ADAPTER) > 1e-4


def test_kill_9_of_one_rank_then_resume_latest_equals_the_uninterrupted_run(
    tiny_sdxl, built_dataset, two_process_run, tmp_path
):
    psutil = pytest.importorskip("psutil")
    cfg = _config(tiny_sdxl, built_dataset, tmp_path / "killed", batch=1)
    proc = _launch(cfg, tmp_path)
    run = tmp_path / "killed"
    deadline = time.monotonic() + 240
    while not (run / "checkpoint-4").is_dir():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint-4 before the kill"
        time.sleep(0.05)
    ranks = {
        p.environ().get("RANK"): p for p in psutil.Process(proc.pid).children(recursive=True) if "RANK" in p.environ()
    }
    os.kill(ranks["1"].pid, signal.SIGKILL)  # one rank dies mid-run
    proc.wait(timeout=120)
    assert proc.returncode != 0 and not (run / ADAPTER).exists()  # the run failed; its workers ended with it
    assert not ranks["0"].is_running() or ranks["0"].status() == psutil.STATUS_ZOMBIE
    # what a rank killed while saving leaves (checkpoints are written beside and renamed when complete)
    (run / ".tmp-checkpoint-99").mkdir()
    (run / ".tmp-checkpoint-99" / "optimizer.bin").write_bytes(b"half")
    resumed = _finish(_launch(cfg, tmp_path, "--resume", "latest"))
    assert f"done: {STEPS} steps" in resumed
    assert _max_diff(run / ADAPTER, two_process_run / ADAPTER) < 1e-6
    assert not list(run.glob(".tmp-checkpoint-*"))  # the partial one was ignored, then removed
