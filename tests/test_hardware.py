"""The CPU thread count of training runs: environment first, else the cores this process may use."""

import json
import os

import pytest
import torch

from conftest import tiny_run
from meshlm.errors import MeshLMError
from meshlm.train import hardware
from meshlm.train.hardware import cpu_threads
from meshlm.train.loop import TrainConfig, train


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("MESHLM_THREADS", "OMP_NUM_THREADS", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    before = torch.get_num_threads()
    yield monkeypatch
    torch.set_num_threads(before)


def test_environment_wins_meshlm_threads_first(clean_env):
    clean_env.setenv("OMP_NUM_THREADS", "1")
    assert cpu_threads() == 1
    clean_env.setenv("MESHLM_THREADS", "3")
    assert cpu_threads() == 3
    clean_env.setenv("MESHLM_THREADS", "two")
    with pytest.raises(MeshLMError, match="MESHLM_THREADS='two' is not a positive number"):
        cpu_threads()


def test_default_is_the_free_usable_cores_split_over_local_ranks(clean_env):
    cores = len(os.sched_getaffinity(0))
    clean_env.setattr(hardware, "_load_of_others", lambda: 0.0)  # an idle machine
    assert 1 <= cpu_threads() <= cores
    idle = cpu_threads()
    clean_env.setenv("OMP_NUM_THREADS", "4,2")  # OpenMP's nested form: left to OpenMP, not an error
    assert cpu_threads() == idle
    clean_env.setenv("LOCAL_WORLD_SIZE", str(2 * idle))
    assert cpu_threads() == 1
    clean_env.delenv("LOCAL_WORLD_SIZE")
    clean_env.setattr(hardware, "_load_of_others", lambda: 4.0 * (os.cpu_count() or 1))  # other jobs everywhere
    assert cpu_threads() == 1


def test_a_cpu_run_uses_and_records_the_thread_count(clean_env, tmp_path):
    (tmp_path / "doc.txt").write_text("the cat sat on the mat. " * 200)
    wanted = 2 if torch.get_num_threads() == 1 else 1  # differs from the current count
    clean_env.setenv("MESHLM_THREADS", str(wanted))
    out = tmp_path / "run"
    train(TrainConfig(**tiny_run(tmp_path / "doc.txt", out, tmp_path / "cache", max_steps=2, device="cpu")))
    assert torch.get_num_threads() == wanted
    assert json.loads((out / "run.json").read_text())["cpu_threads"] == wanted


def test_resolve_device_picks_the_gpu_only_when_there_is_one_and_checks_names(monkeypatch):
    from meshlm.train.hardware import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == resolve_device("") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(MeshLMError, match="--device gpu0 is not a device torch knows"):
        resolve_device("gpu0")
    with pytest.raises(MeshLMError, match="--device cuda:1 asked for CUDA but no GPU is available"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == torch.device("cuda")
