"""Linear CKA (mini-batch, unbiased HSIC) and linear probes (transferable/similarity.py)."""

import json

import pytest
import torch
import yaml
from conftest import ROOT

from transferable.similarity import cka, fit_probe, net_features

G = torch.Generator().manual_seed(0)


def _x(n=512, d=40):
    return torch.randn(n, d, generator=G, dtype=torch.float64)


def test_cka_of_a_representation_with_itself_is_one():
    x = _x()
    assert cka(x, x) == pytest.approx(1.0, abs=1e-9)
    assert cka(x, x, batch=128) == pytest.approx(1.0, abs=1e-9)


def test_cka_is_invariant_to_orthogonal_maps_and_isotropic_scaling_only():
    x = _x()
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=G, dtype=torch.float64))
    assert cka(x, 7.5 * x @ q) == pytest.approx(1.0, abs=1e-9)
    stretch = torch.eye(40, dtype=torch.float64)
    stretch[0, 0] = 50.0  # invertible, not orthogonal: one direction dominates
    assert cka(x, x @ stretch) < 0.5
    assert abs(cka(x, torch.randn(512, 30, generator=G, dtype=torch.float64))) < 0.05  # unrelated: ~0


def test_minibatch_estimator_agrees_with_the_full_batch_one():
    x = _x(1000, 50)
    y = x @ torch.randn(50, 20, generator=G, dtype=torch.float64) + 2 * torch.randn(1000, 20, generator=G,
                                                                                    dtype=torch.float64)
    full = cka(x, y)
    assert 0.2 < full < 0.95
    for b in (250, 100):
        assert cka(x, y, batch=b) == pytest.approx(full, abs=0.02)


def test_minibatches_of_a_class_sorted_set_are_shuffled():
    """Issue 24: the shards hold a half class by class; batches of a sorted sample hold few classes and bias
    the mini-batch estimator (class structure shared by both nets is what CKA measures). The sample the
    analysis draws is in a fixed random order: its batches agree with the full-batch value."""
    import numpy as np

    from transferable.similarity import _sample

    classes, per = 20, 50
    centres = torch.randn(classes, 30, generator=G, dtype=torch.float64) * 2
    labels = torch.arange(classes).repeat_interleave(per)  # sorted by class, as a half is read
    x = centres[labels] + torch.randn(len(labels), 30, generator=G, dtype=torch.float64)
    y = (centres @ torch.randn(30, 20, generator=G, dtype=torch.float64))[labels] \
        + 3 * torch.randn(len(labels), 20, generator=G, dtype=torch.float64)
    full = cka(x, y)
    assert abs(cka(x, y, batch=100) - full) > 0.05  # sorted: each batch holds 2 of the 20 classes
    idx = torch.from_numpy(_sample(len(x), len(x), 0))
    assert cka(x[idx], y[idx], batch=100) == pytest.approx(full, abs=0.03)
    first = labels[torch.from_numpy(_sample(len(x), 300, 0))][:100]
    assert len(set(first.tolist())) >= 15  # a batch of the sample spans most classes
    assert np.array_equal(_sample(1000, 300, 0), _sample(1000, 300, 0))  # fixed


def test_probe_is_deterministic_and_separates_what_is_separable():
    x = torch.randn(300, 10, generator=G)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    a = fit_probe(x[:200], y[:200], x[200:], y[200:], 4)
    assert a > 0.9 and a == fit_probe(x[:200], y[:200], x[200:], y[200:], 4)
    noise = torch.randn(300, 10, generator=G)
    assert fit_probe(noise[:200], y[:200], noise[200:], y[200:], 4) < 0.5


def test_two_seeds_are_most_similar_at_corresponding_layers(tmp_path):
    """Two small nets trained on the same 10 classes with different seeds. At this scale the strict
    per-layer argmax is noisy (adjacent layers of a small net are nearly the same representation: it held
    for 1-4 of 7 layers over the seed pairs tried), so the test asks what does hold: conv1 matches conv1
    best, and CKA at corresponding layers exceeds CKA between layers two or more apart, on average."""
    import numpy as np

    from transferable.data import demo
    from transferable.data.ilsvrc import ingest
    from transferable.data.shards import Shards, write_index, write_part
    from transferable.data.splits import make_manifest
    from transferable.train.loop import train_net

    demo.generate(tmp_path / "raw", seed=0, classes_per_family=5, train_per_class=60, val_per_class=10,
                  min_side=20, max_side=30)
    cat, images = ingest(tmp_path / "raw")
    images.to_csv(tmp_path / "images.csv", index=False)
    write_part(str(tmp_path / "images.csv"), 0, 1, 20, str(tmp_path / "part0"), log=lambda *a: None)
    write_index([str(tmp_path / "part0")], 20, str(tmp_path / "index.json"), str(tmp_path / "rejects.csv"))
    (tmp_path / "all.json").write_text(json.dumps(make_manifest("all", {"kind": "all"}, cat)))
    micro = yaml.safe_load((ROOT / "configs/micro.yaml").read_text())
    x, _ = Shards(tmp_path / "index.json").load("train", list(range(10)))
    feats = []
    for seed in (0, 1):
        cfg = {"net": dict(micro["net"], widths=[16, 16, 24, 24, 16, 32, 32], dropout=0.0),
               "train": dict(micro["train"], max_iter=300, eval_every=300, checkpoint_every=1000, lr_step=1000,
                             seed=seed, amp=False), "metric": {"best_k": 1}, "split_kind": "all"}
        out = tmp_path / f"s{seed}"
        train_net(split="all", net="baseA", manifest=str(tmp_path / "all.json"),
                  shards_index=str(tmp_path / "index.json"), out_dir=str(out), ckpt=str(tmp_path / "c.pt"),
                  cfg=cfg, device="cpu", log=lambda *a: None)
        feats.append(net_features(str(out / "model.pt"), x.take(np.arange(len(x))), pool=6, batch=1000))
    m = np.array([[cka(feats[0][i], feats[1][j]) for j in range(7)] for i in range(7)])
    assert m[0].argmax() == 0, m.round(2)
    diag = np.mean(np.diag(m))
    far = np.mean([m[i, j] for i in range(7) for j in range(7) if abs(i - j) >= 2])
    assert diag > far + 0.04, m.round(2)
