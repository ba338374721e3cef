"""Ingest of the three layouts, and shards built from them."""

import io
import os
import tarfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from transferable.data.ilsvrc import IngestError, ingest, read_image_bytes
from transferable.data.pixels import decode
from transferable.data.reader import Shards
from transferable.data.shards import write_index, write_part


def _extract_tree(demo, dest, val_by_class=False):
    """The extracted layout: train/<wnid>/*.JPEG, val/ flat (or val/<wnid>/), and the devkit."""
    cat, images = ingest(demo)
    (dest / "train").mkdir(parents=True)
    with tarfile.open(demo / "ILSVRC2012_img_train.tar") as outer:
        for m in outer:
            inner = tarfile.open(fileobj=outer.extractfile(m))
            d = dest / "train" / m.name[:-4]
            d.mkdir()
            for im in inner:
                (d / im.name).write_bytes(inner.extractfile(im).read())
    (dest / "val").mkdir()
    val = images[images.subset == "val"]
    with tarfile.open(demo / "ILSVRC2012_img_val.tar") as tf:
        for m in tf:
            target = dest / "val"
            if val_by_class:
                cls = int(val[val.member == m.name].class_index.iloc[0])
                target = target / cat.wnid[cls]
                target.mkdir(exist_ok=True)
            (target / m.name).write_bytes(tf.extractfile(m).read())
    (dest / "ILSVRC2012_devkit_t12.tar.gz").write_bytes((demo / "ILSVRC2012_devkit_t12.tar.gz").read_bytes())
    return cat, images


def test_official_tars(demo_small):
    cat, images = ingest(demo_small)
    assert len(cat) == 6
    assert list(cat.wnid) == sorted(cat.wnid)  # class index = sorted-WNID order, not ILSVRC2012_ID order
    assert (cat.num_train == 6).all() and (cat.num_val == 3).all()
    assert cat.ancestors.str.contains("n00021939").sum() == 3 and cat.ancestors.str.contains("n00019128").sum() == 3
    # Every train image is read by one seek into the OUTER archive, and is the member the index names.
    with tarfile.open(demo_small / "ILSVRC2012_img_train.tar") as outer:
        row = list(images[images.subset == "train"].itertuples())[7]
        cls_tar, name = row.member.split("/")
        inner = tarfile.open(fileobj=outer.extractfile(cls_tar))
        assert inner.extractfile(name).read() == read_image_bytes(row.source, row.path, row.offset, row.size, row.member)
        assert cls_tar[:-4] == cat.wnid[row.class_index]


def test_val_labels_follow_ground_truth(demo_small):
    from transferable.data.ilsvrc import catalog_from_devkit

    cat, id_to_index, labels, _ = catalog_from_devkit(demo_small)
    _, images = ingest(demo_small)
    val = images[images.subset == "val"]
    for row in val.itertuples():
        i = int(row.member[len("ILSVRC2012_val_"):-len(".JPEG")])
        assert row.class_index == id_to_index[int(labels[i - 1])]


@pytest.mark.parametrize("val_by_class", [False, True])
def test_extracted_tree_matches_tars(demo_small, tmp_path, val_by_class):
    cat, images = _extract_tree(demo_small, tmp_path, val_by_class)
    cat2, images2 = ingest(tmp_path)
    pd.testing.assert_frame_equal(cat, cat2)
    for subset in ("train", "val"):
        a = images[images.subset == subset].groupby("class_index").size()
        b = images2[images2.subset == subset].groupby("class_index").size()
        pd.testing.assert_series_equal(a, b)


def test_image_folder_tree_any_format(tmp_path):
    for subset, n in (("train", 3), ("val", 2)):
        for cls, colour in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
            d = tmp_path / subset / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (20 + i, 30), colour).save(d / f"{i}.{'png' if i % 2 else 'bmp'}")
    cat, images = ingest(tmp_path)
    assert list(cat.wnid) == ["cats", "dogs"] and list(cat.num_train) == [3, 3] and list(cat.num_val) == [2, 2]
    parts = [str(tmp_path / "s" / "part0")]
    images.to_csv(tmp_path / "images.csv", index=False)
    write_part(str(tmp_path / "images.csv"), 0, 1, 8, parts[0], log=lambda *a: None)
    write_index(parts, 8, str(tmp_path / "s" / "index.json"), str(tmp_path / "s" / "rejects.csv"))
    sh = Shards(tmp_path / "s" / "index.json")
    x = sh.array("train", 1)
    assert x.shape == (3, 3, 8, 8) and x.dtype == np.uint8
    assert (x[:, 2] > 200).all() and (x[:, 0] < 50).all()  # dogs are blue
    mean = sh.mean_image([0, 1])
    assert np.allclose(mean[0], 127.5, atol=1) and np.allclose(mean[2], 127.5, atol=1)


def test_shards_of_demo_and_mean_image(demo_small, tmp_path):
    _, images = ingest(demo_small)
    images.to_csv(tmp_path / "images.csv", index=False)
    parts = [str(tmp_path / f"part{k}") for k in range(2)]
    for k, p in enumerate(parts):
        write_part(str(tmp_path / "images.csv"), k, 2, 12, p, log=lambda *a: None)
    idx = write_index(parts, 12, str(tmp_path / "index.json"), str(tmp_path / "rejects.csv"))
    assert idx["num_classes"] == 6 and all(v == [6, 3] for v in idx["counts"].values())
    sh = Shards(tmp_path / "index.json")
    images_set, y = sh.load("train", [4, 1])
    assert images_set.in_memory and images_set.shape == (12, 3, 12, 12) and list(np.bincount(y)) == [6, 6]
    x = images_set.data
    mapped, _ = sh.load("train", [4, 1], ram_limit=0)  # the paper-scale path: read on demand from memory maps
    assert not mapped.in_memory
    idx = np.array([11, 0, 5, 6, 6])
    assert np.array_equal(mapped.take(idx), x[idx]) and np.array_equal(mapped.slice(3, 9), x[3:9])
    # the mean image from per-class sums equals the mean over the images themselves
    assert np.allclose(sh.mean_image([4, 1]), x.astype(np.float64).mean(0), atol=1e-4)
    # one class's file holds exactly the decoded images of that class, in index order
    rows = images[(images.subset == "train") & (images.class_index == 4)].sort_values(["path", "offset"])
    r = next(rows.itertuples())
    first = decode(read_image_bytes(r.source, r.path, r.offset, r.size, r.member), 12, "x")
    assert np.array_equal(sh.array("train", 4)[0], first)


def test_decode_converts_modes_to_rgb():
    for mode in ("L", "CMYK", "P", "RGBA"):
        buf = io.BytesIO()
        Image.new(mode, (10, 7)).save(buf, format="PNG" if mode in ("P", "RGBA") else "JPEG")
        assert decode(buf.getvalue(), 6, mode).shape == (3, 6, 6)


def test_bad_inputs_name_the_file(tmp_path, demo_small):
    with pytest.raises(IngestError, match="does not exist"):
        ingest(tmp_path / "nope")
    with pytest.raises(IngestError, match="no dataset found"):
        ingest(tmp_path)
    with pytest.raises(IngestError, match="empty file"):
        decode(b"", 8, "x.JPEG")
    with pytest.raises(IngestError, match="cannot decode"):
        decode(b"not an image", 8, "x.JPEG")
    # the official layout without its devkit
    d = tmp_path / "nodevkit"
    d.mkdir()
    for f in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"):
        (d / f).write_bytes((demo_small / f).read_bytes())
    with pytest.raises(IngestError, match="no devkit"):
        ingest(d)


def test_tar_with_path_traversal_is_refused(tmp_path, demo_small):
    d = tmp_path / "evil"
    d.mkdir()
    (d / "ILSVRC2012_devkit_t12.tar.gz").write_bytes((demo_small / "ILSVRC2012_devkit_t12.tar.gz").read_bytes())
    (d / "ILSVRC2012_img_train.tar").write_bytes((demo_small / "ILSVRC2012_img_train.tar").read_bytes())
    with tarfile.open(d / "ILSVRC2012_img_val.tar", "w") as tf:
        info = tarfile.TarInfo("../../etc/ILSVRC2012_val_00000001.JPEG")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(IngestError, match="unsafe path"):
        ingest(d)


def test_memory_mapped_stream_with_prefetch_equals_in_memory(demo_small, tmp_path):
    """The paper-scale path (memory maps, next batch read ahead in a thread) gives exactly the batches of
    the in-memory path, across epochs and after a state save/restore."""
    import torch

    from transferable.data.loader import TrainStream

    _, images = ingest(demo_small)
    images.to_csv(tmp_path / "images.csv", index=False)
    write_part(str(tmp_path / "images.csv"), 0, 1, 12, str(tmp_path / "part0"), log=lambda *a: None)
    write_index([str(tmp_path / "part0")], 12, str(tmp_path / "index.json"), str(tmp_path / "rejects.csv"))
    sh = Shards(tmp_path / "index.json")
    classes = [0, 2, 5]
    mean = sh.mean_image(classes)
    mem, y = sh.load("train", classes)
    mapped, _ = sh.load("train", classes, ram_limit=0)
    a = TrainStream(mem, y, mean, 10, 4, seed=3)
    b = TrainStream(mapped, y, mean, 10, 4, seed=3)
    assert a._pool is None and b._pool is not None
    for step in range(12):  # 18 images, batch 4: several epoch boundaries
        if step == 7:
            b.load_state_dict(a.state_dict())
        (xa, ya), (xb, yb) = a.next(), b.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb), step


def test_raw_fingerprint_sees_content_not_mtimes(tmp_path):
    """data/rawfiles.py: a folder dataset's fingerprint changes when an image is added, replaced or deleted,
    not when one is touched; the official tars are not fingerprinted (they are rule inputs themselves)."""
    from PIL import Image

    from transferable.data import rawfiles

    root = tmp_path / "data"
    for subset in ("train", "val"):
        for cls in ("a", "b"):
            (root / subset / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8), (1, 2, 3)).save(root / subset / cls / "0.png")
    (root / "train/a/notes.txt").write_text("not read by ingest")
    out = tmp_path / "fp/raw_files.sha256"
    assert rawfiles.fingerprint(root, out) is True
    first = out.read_text()
    assert "train: 2 files" in first and "val: 2 files" in first
    assert rawfiles.fingerprint(root, out) is False
    os.utime(root / "train/a/0.png", ns=(1, 1))
    (root / "train/a/notes.txt").write_text("edited")
    assert rawfiles.fingerprint(root, out) is False and out.read_text() == first
    Image.new("RGB", (8, 8), (9, 2, 3)).save(root / "train/a/0.png")  # replaced, same size
    assert rawfiles.fingerprint(root, out) is True
    Image.new("RGB", (8, 8)).save(root / "train/b/1.png")
    assert rawfiles.fingerprint(root, out) is True and "train: 3 files" in out.read_text()
    (root / "train/b/1.png").unlink()
    assert rawfiles.fingerprint(root, out) is True and "train: 2 files" in out.read_text()
    demo_root = tmp_path / "official"
    from transferable.data import demo

    demo.generate(demo_root, seed=0, classes_per_family=1, train_per_class=2, val_per_class=1, min_side=8, max_side=10)
    assert rawfiles.fingerprint(demo_root, tmp_path / "fp2/x") is None


def test_names_that_look_like_options_or_numbers_survive_ingest(tmp_path, monkeypatch):
    """Issue 27, case 4: a data root called -data (as the workflow passes it: --root=-data) and class folders
    called 007 and true are ingested and read back under their own names."""
    from transferable.cli import main

    root = tmp_path / "-data"
    for subset in ("train", "val"):
        for cls in ("007", "true"):
            (root / subset / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (12, 12), (i, 0, 0)).save(root / subset / cls / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    assert main(["ingest", "--root=-data", "--catalog", "cat.csv", "--images", "img.csv"]) == 0
    assert main(["split", "manifest", "--name", "s", "--params", '{"kind": "all"}', "--catalog", "cat.csv",
                 "--out", "s.json"]) == 0
    import json

    assert json.loads((tmp_path / "s.json").read_text())["halves"]["A"]["wnids"] == ["007", "true"]


def test_one_walk_for_ingest_and_fingerprint(tmp_path):
    """Issue 27, case 2: a class folder that is a link is ingested AND fingerprinted (an edit inside it is
    seen); folders nested in a class folder and loose files beside the class folders are not read by
    either, and ingest says so with counts; a link looping back to train/ does not loop the walk."""
    from transferable.data import rawfiles

    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere/dog"
    elsewhere.mkdir(parents=True)
    for subset in ("train", "val"):
        (root / subset / "cat").mkdir(parents=True)
        Image.new("RGB", (8, 8), (1, 2, 3)).save(root / subset / "cat" / "0.png")
    Image.new("RGB", (8, 8), (4, 5, 6)).save(elsewhere / "0.png")
    (root / "train/dog").symlink_to(elsewhere)  # a linked class folder
    (root / "val/dog").mkdir()
    Image.new("RGB", (8, 8), (4, 5, 6)).save(root / "val/dog/0.png")
    (root / "train/cat/extra").mkdir()  # nested: not read
    Image.new("RGB", (8, 8)).save(root / "train/cat/extra/1.png")
    Image.new("RGB", (8, 8)).save(root / "train/loose.png")  # loose: not read
    (root / "train/cat/loop").symlink_to(root / "train")  # a loop: not walked
    lines = []
    cat, images = ingest(root, log=lines.append)
    assert list(cat.wnid) == ["cat", "dog"] and list(cat.num_train) == [1, 1]
    said = "\n".join(lines)
    assert "2 folder(s) nested in a class folder not read" in said and "1 loose file(s)" in said, said
    out = tmp_path / "fp/raw_files.sha256"
    assert rawfiles.fingerprint(root, out) is True and "train: 2 files" in out.read_text()
    Image.new("RGB", (8, 8), (7, 7, 7)).save(elsewhere / "1.png")  # an edit inside the linked class
    assert rawfiles.fingerprint(root, out) is True and "train: 3 files" in out.read_text()
    Image.new("RGB", (8, 8)).save(root / "train/cat/extra/2.png")  # what ingest does not read changes nothing
    assert rawfiles.fingerprint(root, out) is False
