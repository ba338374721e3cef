"""The paper-scale data path (issue 14): ImageNet-sized generated images, the resize choice, JPEG shards."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transferable import paths
from transferable.data import demo
from transferable.data.ilsvrc import ingest
from transferable.data.loader import TrainStream, eval_batches
from transferable.data.pixels import decode, decode_jpegs, mitchell_resize
from transferable.data.reader import JpegSet, Shards
from transferable.data.shards import write_index, write_part


def test_imagenet_size_model_matches_ilsvrc2012():
    """Mean about 400 x 350 px, most long sides at Flickr's 500 px, some images below 256 x 256 (upscaled
    by the warp) and some above 500 px."""
    rng = np.random.default_rng(0)
    s = np.array([demo.imagenet_size(rng) for _ in range(20_000)])
    w, h = s.mean(0)
    assert 380 <= w <= 420 and 320 <= h <= 370, (w, h)
    long = s.max(1)
    assert 0.4 <= (long == 500).mean() <= 0.5
    assert 0.005 <= (long > 500).mean() <= 0.03
    assert 0.1 <= (s.prod(1) < 256 * 256).mean() <= 0.3
    assert (s.min(1) >= 32).all()


def test_imagenet_sized_archives_weigh_what_real_ones_do_and_ingest_unchanged(tmp_path):
    summary = demo.generate(tmp_path, seed=0, classes_per_family=1, train_per_class=12, val_per_class=1,
                            sizes="imagenet")
    catalog, images = ingest(tmp_path)
    assert len(catalog) == 2 and len(images) == summary["train_images"] + summary["val_images"] == 26
    tr = images[images.subset == "train"]
    kb = tr["size"].mean() / 1e3
    assert 70 <= kb <= 160, kb  # ImageNet: ~110 KB per training JPEG
    # the same seed, the same bytes; the uniform model is untouched by the new one
    demo.generate(tmp_path / "again", seed=0, classes_per_family=1, train_per_class=12, val_per_class=1,
                  sizes="imagenet")
    assert (tmp_path / "again" / demo.TRAIN_TAR).read_bytes() == (tmp_path / demo.TRAIN_TAR).read_bytes()
    with pytest.raises(ValueError, match="sizes must be one of"):
        demo.generate(tmp_path / "bad", sizes="huge")


def _jpeg(w, h, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((w, h), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue(), im


@pytest.mark.parametrize("w, h", [(500, 375), (200, 150)])
def test_resize_choice_is_honoured(w, h):
    data, _ = _jpeg(w, h)
    full = Image.open(io.BytesIO(data)).convert("RGB")
    drafted = Image.open(io.BytesIO(data))
    drafted.draft("RGB", (64, 64))
    drafted = drafted.convert("RGB")
    want = {
        "fast": drafted.resize((64, 64), Image.BICUBIC),
        "bicubic": full.resize((64, 64), Image.BICUBIC),
        # ImageMagick: Lanczos when an RGB image loses area, Mitchell when it gains some
        "imagemagick": (full.resize((64, 64), Image.LANCZOS) if w * h >= 64 * 64
                        else Image.fromarray(mitchell_resize(np.asarray(full), 64))),
    }
    got = {r: decode(data, 64, "x.JPEG", resize=r) for r in paths.RESIZES}
    for r, im in want.items():
        assert np.array_equal(got[r], np.asarray(im).transpose(2, 0, 1)), r
    assert not np.array_equal(got["fast"], got["bicubic"])  # the DCT pre-shrink is not a full decode
    assert not np.array_equal(got["bicubic"], got["imagemagick"])
    assert np.array_equal(decode(data, 256, "x.JPEG", resize="imagemagick"),
                          np.asarray(full.resize((256, 256), Image.LANCZOS) if w * h >= 256 * 256
                                     else mitchell_resize(np.asarray(full), 256)).transpose(2, 0, 1))


IM6 = Path(__file__).parent / "data" / "imagemagick"


@pytest.mark.parametrize("name, tol", [("48x40_RGB", 1), ("60x30_L", 1), ("160x120_L", 1), ("160x120_RGB", 2)])
def test_imagemagick_resize_matches_imagemagick(name, tol):
    """Issue 26: `resize: imagemagick` against `convert in.jpg -resize 64x64! -type TrueColor` (ImageMagick
    6.9.11-60 Q16, outputs stored in tests/data/imagemagick): Mitchell for enlargements and greyscale JPEGs
    (which ImageMagick reads as PseudoClass), Lanczos for RGB images that lose area."""
    data = (IM6 / f"in_{name}.jpg").read_bytes()
    ref = np.asarray(Image.open(IM6 / f"im6_{name}_64.png").convert("RGB")).astype(int)
    ours = decode(data, 64, name, resize="imagemagick").transpose(1, 2, 0).astype(int)
    diff = np.abs(ours - ref)
    assert diff.max() <= tol and diff.mean() < 0.2, (diff.max(), diff.mean())
    if name.endswith("_L") or name == "48x40_RGB":  # the filter chosen before (Lanczos / Keys bicubic) is off
        full = Image.open(io.BytesIO(data)).convert("RGB")
        before = Image.LANCZOS if name == "160x120_L" else Image.BICUBIC
        assert np.abs(np.asarray(full.resize((64, 64), before)).astype(int) - ref).mean() > 0.5


def test_prep_names_round_trip():
    for size, resize, fmt, q in [(20, "fast", "raw", 90), (256, "imagemagick", "jpeg", 90), (64, "bicubic", "jpeg", 75),
                                 (256, "imagemagick", "raw", 90)]:
        name = paths.prep_name(size, resize, fmt, q)
        assert paths.parse_prep(name) == {"size": size, "resize": resize, "format": fmt, "quality": q}
    assert paths.prep_name(20) == "warp20"  # the demo's shards keep their path
    with pytest.raises(ValueError, match="preprocess.resize"):
        paths.prep_name(20, "lanczos")


@pytest.fixture(scope="module")
def both_formats(tmp_path_factory):
    d = tmp_path_factory.mktemp("formats")
    demo.generate(d / "raw", seed=3, classes_per_family=2, train_per_class=10, val_per_class=3, min_side=24,
                  max_side=60)
    _, images = ingest(d / "raw")
    images.to_csv(d / "images.csv", index=False)
    out = {}
    for fmt in ("raw", "jpeg"):
        part = d / fmt / "part0"
        write_part(str(d / "images.csv"), 0, 1, 32, str(part), log=lambda *a: None, resize="imagemagick", fmt=fmt,
                   quality=85)
        write_index([str(part)], 32, str(d / fmt / "index.json"), str(d / fmt / "rejects.csv"))
        out[fmt] = Shards(d / fmt / "index.json")
    return out


def _by_hand(shards, subset, classes):
    """Every stored JPEG of ``classes`` decoded with Pillow, one by one, in label order."""
    part = shards.root / "part0"
    imgs = []
    for c in classes:
        blob = np.load(part / f"{subset}_{c:05d}.jpeg.npy")
        off = np.load(part / f"{subset}_{c:05d}.offsets.npy")
        for a, b in zip(off[:-1], off[1:]):
            imgs.append(np.asarray(Image.open(io.BytesIO(blob[a:b].tobytes())).convert("RGB")).transpose(2, 0, 1))
    return np.stack(imgs)


def test_jpeg_shards_give_the_batches_of_their_files_decoded_by_hand(both_formats):
    sh = both_formats["jpeg"]
    assert sh.format == "jpeg" and sh.index["quality"] == 85 and sh.index["resize"] == "imagemagick"
    classes = [3, 0]
    images, labels = sh.load("train", classes)
    assert isinstance(images, JpegSet) and images.shape == (20, 3, 32, 32) and labels.tolist() == [0] * 10 + [1] * 10
    hand = _by_hand(sh, "train", classes)
    assert np.array_equal(images.take(np.arange(20)), hand)
    # the mean image is the mean of what training sees (the decoded JPEGs), not of the pixels before encoding
    mean = sh.mean_image(classes)
    assert np.allclose(mean, hand.mean(0, dtype=np.float64), atol=1e-4)
    # training batches: identical to a stream over the hand-decoded pixels with the same seed
    a = TrainStream(images, labels, mean, 28, 8, seed=5)
    b = TrainStream(hand, labels, mean, 28, 8, seed=5)
    for _ in range(4):  # past an epoch boundary (20 images, batches of 8)
        (xa, ya), (xb, yb) = a.next(), b.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    val, vy = sh.load("val", classes)
    hand_val = _by_hand(sh, "val", classes)
    for (xa, ya), (xb, yb) in zip(eval_batches(val, vy, mean, 28, 4), eval_batches(hand_val, vy, mean, 28, 4)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_jpeg_shards_are_close_to_raw_and_smaller(both_formats):
    raw, jpg = both_formats["raw"], both_formats["jpeg"]
    r, _ = raw.load("train", [1])
    j, _ = jpg.load("train", [1])
    x, y = r.take(np.arange(10)).astype(float), j.take(np.arange(10)).astype(float)
    psnr = 10 * np.log10(255**2 / np.mean((x - y) ** 2))
    assert psnr > 25, psnr
    part = jpg.root / "part0"
    assert (part / "train_00001.jpeg.npy").stat().st_size < 0.7 * (raw.root / "part0" / "train_00001.npy").stat().st_size
    counts = json.loads((part / "counts.json").read_text())
    assert counts["format"] == "jpeg" and counts["counts"]["1"] == [10, 3]
    # threaded decoding returns images in order
    files = j.files(np.arange(10))
    assert torch.equal(decode_jpegs(files, threads=3), decode_jpegs(files, threads=1))


def test_memory_mapped_jpeg_set_equals_in_memory(both_formats):
    sh = both_formats["jpeg"]
    mem, _ = sh.load("val", [0, 1, 2])
    mapped, _ = sh.load("val", [0, 1, 2], ram_limit=0)
    assert isinstance(mapped.blobs[0], np.memmap) and not mapped.in_ram
    assert mem.in_ram and mem.blobs[0].flags.owndata  # a copy in the job's memory, not a view of the map
    idx = np.array([8, 0, 4, 4])
    assert np.array_equal(mem.take(idx), mapped.take(idx))


def test_raw_part_bounded_open_files_gives_the_same_arrays(both_formats, tmp_path, monkeypatch):
    """A part of many classes keeps at most _OPEN_MAX files open (closing the least recently used and
    appending to it later: validation images come in no class order), with the same arrays."""
    from transferable.data import shards

    raw = both_formats["raw"]
    images = raw.root.parent / "images.csv"
    monkeypatch.setattr(shards._PartWriter, "_OPEN_MAX", 2)
    write_part(str(images), 0, 1, 32, str(tmp_path / "part0"), log=lambda *a: None, resize="imagemagick")
    for f in sorted((raw.root / "part0").glob("*.npy")):
        assert np.array_equal(np.load(f), np.load(tmp_path / "part0" / f.name)), f.name


def test_out_of_range_images_are_an_error(both_formats):
    images, _ = both_formats["raw"].load("train", [0, 1])
    with pytest.raises(IndexError, match="outside 0..19"):
        images.take(np.array([0, 20]))


@pytest.mark.slow
def test_micro_pipeline_runs_on_jpeg_shards(resnet_done):
    """The whole DAG on JPEG shards with the full-decode resize (conftest's ResNet family run): the shards
    under their own path, with their settings in the index; every net names them in its provenance."""
    wd = resnet_done
    index = json.loads((wd / "results/shards/warp20-imagemagick-jpeg90/index.json").read_text())
    assert index["format"] == "jpeg" and index["quality"] == 90 and index["resize"] == "imagemagick"
    assert not (wd / "results/shards/warp20").exists()
    nets = sorted((wd / "results/nets").glob("*/*/metrics.json"))
    assert len(nets) == 20
    for path in nets:
        shards = json.loads(path.read_text())["provenance"]["shards"]
        assert shards["index"].endswith("warp20-imagemagick-jpeg90/index.json") and shards["format"] == "jpeg"
        assert shards["digest"] == index["digest"]
    assert (wd / "results/figures/fig2.pdf").stat().st_size > 0


def test_a_part_whose_inputs_did_not_change_is_linked_not_rebuilt(tmp_path):
    """Issue 27, case 7: one changed image reran every shard part (they share images.csv). A part whose rows,
    source files, settings and code are unchanged is hard-linked from its kept copy; the changed part is
    rebuilt; a damaged kept copy is rebuilt, not reused."""
    import numpy as np
    from PIL import Image

    from transferable.data.ilsvrc import ingest
    from transferable.data.reader import Shards
    from transferable.data.shards import write_index, write_part

    root = tmp_path / "data"
    for subset in ("train", "val"):
        for i, cls in enumerate(("ant", "bee", "cat", "dog")):
            (root / subset / cls).mkdir(parents=True)
            for j in range(2):
                Image.new("RGB", (10, 10), (60 * i, 30 * j, 9)).save(root / subset / cls / f"{j}.png")

    def build(out):
        _, images = ingest(root)
        images.to_csv(tmp_path / "images.csv", index=False)
        rs = [write_part(str(tmp_path / "images.csv"), k, 2, 8, str(out / f"part{k}"), log=lambda *a: None)
              for k in range(2)]
        write_index([str(out / f"part{k}") for k in range(2)], 8, str(out / "index.json"), str(out / "rejects.csv"))
        return rs

    out = tmp_path / "shards"
    first = build(out)
    assert not any(r.get("reused") for r in first)
    Image.new("RGB", (10, 10), (1, 2, 3)).save(root / "train/dog/added.png")  # dog: part 1
    again = build(out)
    assert again[0].get("reused") and not again[1].get("reused")
    fresh = tmp_path / "fresh"
    build(fresh)  # (the kept copies of `fresh` are its own)
    a, b = Shards(out / "index.json"), Shards(fresh / "index.json")
    for c in range(4):
        assert np.array_equal(a.array("train", c), b.array("train", c))
    assert a.digest == b.digest
    kept = out / ".reuse/part0/train_00000.npy"
    data = bytearray(kept.read_bytes())
    data[-1] ^= 1
    kept.write_bytes(bytes(data))  # in place: the part's own file, the same inode, is damaged too
    assert not build(out)[0].get("reused")
    assert np.array_equal(Shards(out / "index.json").array("train", 0), b.array("train", 0))
