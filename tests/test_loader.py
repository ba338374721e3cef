"""Training crops: Caffe's data layer semantics (crop at an offset, mirror, mean subtracted at the crop's
position and mirrored with it, times scale), the same from the CPU's slicing and the GPU's gather."""

import os

import numpy as np
import pytest
import torch

from transferable.data.loader import TrainStream, _crops_by_index, _crops_by_slice, _gather_crops


def test_crops_match_caffes_transform_and_both_implementations_agree():
    rng = np.random.default_rng(0)
    b, s, crop = 6, 12, 9
    x = torch.from_numpy(rng.integers(0, 256, (b, 3, s, s), dtype=np.uint8))
    mean = torch.from_numpy(rng.random((3, s, s), dtype=np.float32) * 255)
    oy = torch.tensor([0, 3, 1, 2, 0, 3])
    ox = torch.tensor([3, 0, 2, 1, 0, 3])
    flip = torch.tensor([False, True, True, False, True, False])
    by_slice = _crops_by_slice(x, mean, oy, ox, crop, flip)
    by_index = _crops_by_index(x, mean, oy, ox, crop, flip)
    assert torch.equal(by_slice, by_index)
    for out in (by_slice, by_index):
        assert out.shape == (b, 3, crop, crop) and out.is_contiguous(memory_format=torch.channels_last)
    for i in range(b):
        a, c = int(oy[i]), int(ox[i])
        ref = x[i, :, a : a + crop, c : c + crop].numpy().astype(np.float32) - mean[:, a : a + crop, c : c + crop].numpy()
        if flip[i]:
            ref = ref[:, :, ::-1]
        assert np.array_equal(by_slice[i].numpy(), ref), i
    scaled = _gather_crops(x, mean, oy, ox, crop, flip, 0.5)
    assert torch.equal(scaled, by_slice * 0.5)


def test_crops_split_between_threads_are_the_same(monkeypatch):
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.integers(0, 256, (7, 3, 70, 70), dtype=np.uint8))
    mean = torch.from_numpy(rng.random((3, 70, 70), dtype=np.float32))
    oy, ox = torch.from_numpy(rng.integers(0, 3, 7)), torch.from_numpy(rng.integers(0, 3, 7))
    flip = torch.from_numpy(rng.random(7) < 0.5)
    one = _crops_by_slice(x, mean, oy, ox, 68, flip)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert torch.equal(_crops_by_slice(x, mean, oy, ox, 68, flip), one)
    assert torch.equal(one, _crops_by_index(x, mean, oy, ox, 68, flip))


def test_reader_threads_read_what_one_thread_reads(tmp_path):
    """Issue 17 case 3: a batch gathered by several reader threads (straight into a given buffer, as into
    a pinned one for a GPU) equals the one-thread read, from memory and from memory maps; a stream over
    a memory-mapped set with 3 readers gives the in-memory stream's batches."""
    from transferable.data.reader import ImageSet

    rng = np.random.default_rng(0)
    arrays = []
    for c in range(3):
        np.save(tmp_path / f"{c}.npy", rng.integers(0, 256, (40 + c, 3, 12, 12), dtype=np.uint8))
        arrays.append(np.load(tmp_path / f"{c}.npy", mmap_mode="r"))
    mem, mapped = ImageSet(arrays), ImageSet(arrays, ram_limit=0)
    assert mem.in_memory and not mapped.in_memory
    idx = rng.permutation(len(mem))[:64]
    one = mem.take(idx)
    for s in (mem, mapped):
        for threads in (1, 3, 8):
            buf = np.zeros_like(one)
            assert s.take(idx, out=buf, threads=threads) is buf
            assert np.array_equal(buf, one)
    labels = np.concatenate([np.full(len(a), i) for i, a in enumerate(arrays)])
    mean = np.full((3, 12, 12), 100.0, dtype=np.float32)
    a = TrainStream(mem, labels, mean, 10, 16, seed=3)
    b = TrainStream(mapped, labels, mean, 10, 16, seed=3, readers=3)
    assert b.readers == 3 and b._pool is not None and a._pool is None
    for _ in range(10):  # past an epoch (123 images, batches of 16)
        (xa, ya), (xb, yb) = a.next(), b.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_job_cpus_follow_affinity_and_slurm():
    from transferable.data.host import job_cpus

    n = len(os.sched_getaffinity(0))
    assert job_cpus({}) == n
    assert job_cpus({"SLURM_CPUS_PER_TASK": "1"}) == 1
    assert job_cpus({"SLURM_CPUS_PER_TASK": str(n + 8)}) == n  # never more than the job may run on


def test_a_reader_thread_is_bound_to_the_jobs_indexed_device(monkeypatch):
    """On an H200, `transferable smoke` failed at the memory-mapped reader's first batch: the thread pool's
    initializer passed a bare "cuda" to torch.cuda.set_device, which wants an index. The job's device is
    resolved to its index (the calling thread's current device) before the thread binds to it."""
    import torch.cuda._utils

    from transferable.data import loader

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert loader.with_index("cuda") == torch.device("cuda", 1)
    assert loader.with_index("cuda:0") == torch.device("cuda", 0)
    assert loader.with_index("cpu") == torch.device("cpu")
    bound = []  # what torch.cuda.set_device would do first: read the index (ValueError without one)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: bound.append(torch.cuda._utils._get_device_index(d)))
    loader.bind_device(loader.with_index("cuda"))
    assert bound == [1]
    with pytest.raises(ValueError):
        loader.bind_device("cuda")  # the failure seen on the GPU, reproduced on the CPU
