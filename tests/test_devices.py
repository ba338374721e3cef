"""One GPU per concurrent training job on a workstation: flock-held GPU indices (train/devices.py)."""

import subprocess
import sys

from transferable.train import devices

GRAB = "import sys, pathlib; from transferable.train.devices import acquire_gpu; " \
       "print(acquire_gpu(int(sys.argv[1]), pathlib.Path(sys.argv[2])), flush=True); sys.stdin.read()"


def _other_process(count, locks):
    """Another job: takes a GPU and holds it until its stdin closes."""
    p = subprocess.Popen([sys.executable, "-c", GRAB, str(count), str(locks)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    return p, p.stdout.readline().strip()


def test_jobs_get_different_gpus_and_one_process_keeps_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "_held", {})
    locks = tmp_path / "locks"
    assert devices.acquire_gpu(2, locks) == 0
    assert devices.acquire_gpu(2, locks) == 0  # the same process asks again (the benchmarks do): its own GPU
    other, got = _other_process(2, locks)
    assert got == "1"
    third, got3 = _other_process(2, locks)
    assert got3 == "None"  # both taken
    third.kill()
    other.kill()  # SIGKILL: the kernel drops its lock, GPU 1 is free again
    other.wait()
    again, got = _other_process(2, locks)
    assert got == "1"
    again.kill()
