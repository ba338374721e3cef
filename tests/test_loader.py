"""Training crops: Caffe's data layer semantics (crop at an offset, mirror, mean subtracted at the crop's
position and mirrored with it, times scale), the same from the CPU's slicing and the GPU's gather."""

import numpy as np
import torch

from transferable.data.loader import _crops_by_index, _crops_by_slice, _gather_crops


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
