"""The embedded demo dataset: official ILSVRC2012 layout, devkit metadata, determinism, and injected faults."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile

import numpy as np
import pytest
import scipy.io
from PIL import Image

from transferable.data import demo

SMALL = dict(classes_per_family=3, train_per_class=6, val_per_class=3, min_side=16, max_side=40)
FILES = (demo.TRAIN_TAR, demo.VAL_TAR, demo.DEVKIT_TGZ)
META = f"{demo.DEVKIT_DIR}/data/meta.mat"
GT = f"{demo.DEVKIT_DIR}/data/ILSVRC2012_validation_ground_truth.txt"


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, demo.generate(out, seed=3, **SMALL)


def _synsets(out):
    with tarfile.open(out / demo.DEVKIT_TGZ) as tf:
        return scipy.io.loadmat(io.BytesIO(tf.extractfile(META).read()), squeeze_me=True)["synsets"]


def _ground_truth(out):
    with tarfile.open(out / demo.DEVKIT_TGZ) as tf:
        return [int(x) for x in tf.extractfile(GT).read().decode().splitlines()]


def _train_images(out):
    """{inner member name: bytes} over all class tars."""
    images = {}
    with tarfile.open(out / demo.TRAIN_TAR) as outer:
        for m in outer:
            with tarfile.open(fileobj=io.BytesIO(outer.extractfile(m).read())) as inner:
                for im in inner:
                    images[im.name] = inner.extractfile(im).read()
    return images


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_official_layout(small):
    out, summary = small
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)  # no temporary files left behind
    C = 2 * SMALL["classes_per_family"]
    wnids = sorted(w for ws in summary["families"].values() for w in ws)
    assert len(set(wnids)) == C and all(re.fullmatch(r"n\d{8}", w) for w in wnids)

    with tarfile.open(out / demo.TRAIN_TAR) as outer:
        members = outer.getmembers()
        assert all(m.isreg() and m.mtime == demo._MTIME and m.uid == m.gid == 0 for m in members)
        assert sorted(m.name for m in members) == [f"{w}.tar" for w in wnids]
        for m in members:
            with tarfile.open(fileobj=outer.extractfile(m)) as inner:
                names = [im.name for im in inner.getmembers()]
                assert all(im.isreg() for im in inner.getmembers())
            wnid = m.name[:-4]
            assert names == [f"{wnid}_{k}.JPEG" for k in range(1, SMALL["train_per_class"] + 1)]

    n_val = C * SMALL["val_per_class"]
    with tarfile.open(out / demo.VAL_TAR) as tf:
        assert tf.getnames() == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, n_val + 1)]

    with tarfile.open(out / demo.DEVKIT_TGZ, "r:gz") as tf:
        names = tf.getnames()
    assert META in names and GT in names and all(n.startswith(f"{demo.DEVKIT_DIR}/") or n == demo.DEVKIT_DIR
                                                 for n in names)

    assert summary["classes"] == C
    assert summary["train_images"] == C * SMALL["train_per_class"] and summary["val_images"] == n_val
    assert summary["bytes"] == sum((out / f).stat().st_size for f in FILES)
    assert summary["injected"] == {} and summary["seconds"] >= 0


def test_meta_mat_hierarchy(small):
    out, summary = small
    syn = _synsets(out)
    assert syn.ndim == 1 and syn.dtype.names == demo.SYNSET_FIELDS
    with tarfile.open(out / demo.DEVKIT_TGZ) as tf:  # stored K x 1, as the official file
        assert scipy.io.loadmat(io.BytesIO(tf.extractfile(META).read()))["synsets"].shape == (len(syn), 1)
    C = 2 * SMALL["classes_per_family"]
    by_id = {int(s["ILSVRC2012_ID"]): s for s in syn}
    assert sorted(by_id) == list(range(1, len(syn) + 1))
    children = {i: [int(c) for c in np.atleast_1d(s["children"])] for i, s in by_id.items()}
    for i, s in by_id.items():
        assert int(s["num_children"]) == len(children[i])
        if i <= C:  # leaves: IDs 1..C
            assert children[i] == [] and int(s["wordnet_height"]) == 0
            assert int(s["num_train_images"]) == SMALL["train_per_class"]
            assert str(s["words"]) and str(s["gloss"])
        else:
            assert children[i] and int(s["wordnet_height"]) > 0 and int(s["num_train_images"]) == 0

    leaves = [by_id[i] for i in range(1, C + 1)]
    wnids = [str(s["WNID"]) for s in leaves]
    assert wnids != sorted(wnids)  # as in the real devkit, ID order is not sorted-WNID order
    assert len({str(s["WNID"]) for s in syn}) == len(syn)

    def leaf_descendants(i):
        return {i} if not children[i] else set().union(*(leaf_descendants(c) for c in children[i]))

    fam = {str(s["WNID"]): int(s["ILSVRC2012_ID"]) for s in syn}
    man, nat = leaf_descendants(fam["n00021939"]), leaf_descendants(fam["n00019128"])
    assert man | nat == set(range(1, C + 1)) and not man & nat
    assert str(by_id[fam["n00021939"]]["words"]).startswith("artifact")
    assert sorted(str(by_id[i]["WNID"]) for i in man) == summary["families"]["man-made"]
    assert sorted(str(by_id[i]["WNID"]) for i in nat) == summary["families"]["natural"]
    roots = set(by_id) - {c for cs in children.values() for c in cs}
    assert len(roots) == 1 and leaf_descendants(roots.pop()) == set(range(1, C + 1))


def test_ground_truth_matches_val(small):
    out, summary = small
    gt = _ground_truth(out)
    C, v = 2 * SMALL["classes_per_family"], SMALL["val_per_class"]
    assert len(gt) == C * v
    assert sorted(gt) == sorted(list(range(1, C + 1)) * v)  # IDs 1..C, val_per_class images each
    assert gt != sorted(gt)  # classes are shuffled through the val tar
    wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in _synsets(out)}
    assert {wnid[i] for i in gt} == {w for ws in summary["families"].values() for w in ws}


def test_labels_follow_the_pictures(small):
    """Train members and ground-truth labels give each image its family's look: man-made images (saturated
    flat/striped backgrounds) are brighter and more saturated than natural ones (earthy noise)."""
    out, summary = small
    man = set(summary["families"]["man-made"])

    def vividness(b):  # mean HSV saturation + value, 0..510
        hsv = np.asarray(Image.open(io.BytesIO(b)).convert("HSV"), dtype=float)
        return hsv[..., 1].mean() + hsv[..., 2].mean()

    train = [(name.split("_")[0] in man, vividness(b)) for name, b in _train_images(out).items()]
    wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in _synsets(out)}
    with tarfile.open(out / demo.VAL_TAR) as tf:
        val = [(wnid[i] in man, vividness(tf.extractfile(m).read())) for i, m in zip(_ground_truth(out), tf)]
    for pairs in (train, val):
        assert np.mean([is_man == (v > 250) for is_man, v in pairs]) >= 0.8
        man_v, nat_v = [v for m, v in pairs if m], [v for m, v in pairs if not m]
        assert np.mean(man_v) > np.mean(nat_v) + 80


def test_images_decode_rgb_with_varied_sizes(small):
    out, _ = small
    blobs = list(_train_images(out).values())
    with tarfile.open(out / demo.VAL_TAR) as tf:
        blobs += [tf.extractfile(m).read() for m in tf]
    sizes = set()
    for b in blobs:
        img = Image.open(io.BytesIO(b))
        assert img.format == "JPEG" and img.mode == "RGB"
        img.load()
        sizes.add(img.size)
        assert all(SMALL["min_side"] <= s <= SMALL["max_side"] for s in img.size)
    assert len({w for w, _ in sizes}) > 3 and len({h for _, h in sizes}) > 3 and any(w != h for w, h in sizes)


def test_deterministic_by_seed(tmp_path, small):
    out, _ = small
    a, b = tmp_path / "a", tmp_path / "b"
    demo.generate(a, seed=3, **SMALL)
    demo.generate(b, seed=4, **SMALL)
    for f in FILES:
        assert _sha(a / f) == _sha(out / f)
        assert _sha(b / f) != _sha(out / f)


def test_injections(tmp_path):
    summary = demo.generate(tmp_path, seed=1, **SMALL, inject=demo.INJECTIONS)
    inj = summary["injected"]
    assert set(inj) == set(demo.INJECTIONS)
    jpeg_members = [inj[k] for k in ("cmyk", "grayscale", "png_as_jpeg", "truncated_jpeg", "zero_byte")]
    assert len(set(jpeg_members)) == 5

    # The outer tar ends inside the named class tar: reading it all fails, the classes before it are intact.
    with pytest.raises(tarfile.TarError):
        with tarfile.open(tmp_path / demo.TRAIN_TAR) as outer:
            for m in outer:
                outer.extractfile(m).read()
    images = {}
    with tarfile.open(tmp_path / demo.TRAIN_TAR) as outer:
        for m in outer:
            if m.name == inj["truncated_tar"]:
                assert (tmp_path / demo.TRAIN_TAR).stat().st_size < m.offset_data + m.size
                break
            with tarfile.open(fileobj=io.BytesIO(outer.extractfile(m).read())) as inner:
                images.update({im.name: inner.extractfile(im).read() for im in inner})
        else:
            pytest.fail("the truncated class tar was not found")
    assert set(jpeg_members) <= set(images)  # faults sit before the cut, so a reader meets them

    assert Image.open(io.BytesIO(images[inj["cmyk"]])).mode == "CMYK"
    assert Image.open(io.BytesIO(images[inj["cmyk"]])).format == "JPEG"
    assert Image.open(io.BytesIO(images[inj["grayscale"]])).mode == "L"
    png = Image.open(io.BytesIO(images[inj["png_as_jpeg"]]))
    assert inj["png_as_jpeg"].endswith(".JPEG") and png.format == "PNG" and png.mode == "RGB"
    assert images[inj["zero_byte"]] == b""
    with pytest.raises(OSError):
        Image.open(io.BytesIO(images[inj["truncated_jpeg"]])).load()
    # Everything else is untouched.
    for name, b in images.items():
        if name not in jpeg_members:
            assert Image.open(io.BytesIO(b)).mode == "RGB"


def test_single_injection_only_touches_its_member(tmp_path):
    clean = _train_images_gen(tmp_path / "clean", ())
    cmyk_summary = demo.generate(tmp_path / "cmyk", seed=1, **SMALL, inject=["cmyk"])
    cmyk = _train_images(tmp_path / "cmyk")
    changed = [n for n in clean if clean[n] != cmyk[n]]
    assert changed == [cmyk_summary["injected"]["cmyk"]]
    assert _sha(tmp_path / "clean" / demo.VAL_TAR) == _sha(tmp_path / "cmyk" / demo.VAL_TAR)


def _train_images_gen(out, inject):
    demo.generate(out, seed=1, **SMALL, inject=inject)
    return _train_images(out)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(inject=["cmyk", "sepia"]), r"'sepia'.*allowed: cmyk, grayscale"),
        (dict(min_side=40, max_side=20), "max_side"),
        (dict(classes_per_family=0), "classes_per_family"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        demo.generate(tmp_path, **{**SMALL, **kwargs})


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("render failed")

    monkeypatch.setattr(demo, "_render", boom)
    with pytest.raises(RuntimeError):
        demo.generate(tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []


def _first_train_images(path, k=3):
    with tarfile.open(path / demo.TRAIN_TAR) as outer:
        m = next(x for x in outer.getmembers() if x.name.endswith(".tar"))
        with tarfile.open(fileobj=outer.extractfile(m)) as inner:
            names = sorted(x.name for x in inner.getmembers())[:k]
            return names, [np.asarray(Image.open(io.BytesIO(inner.extractfile(n).read())).convert("RGB"), dtype=float)
                           for n in names]


def test_negative_style_is_the_same_dataset_in_negative(tmp_path):
    """style negative (issue 25: a second dataset of another kind): the same classes, names and layout, each
    image the photographic negative of the plain one (up to JPEG's rounding), not a different picture."""
    args = dict(seed=3, classes_per_family=1, train_per_class=3, val_per_class=1, min_side=24, max_side=32)
    plain = demo.generate(tmp_path / "plain", **args)
    neg = demo.generate(tmp_path / "neg", **args, style="negative")
    assert plain["families"] == neg["families"]
    names_p, imgs_p = _first_train_images(tmp_path / "plain")
    names_n, imgs_n = _first_train_images(tmp_path / "neg")
    assert names_p == names_n
    for a, b in zip(imgs_p, imgs_n):
        assert a.shape == b.shape
        assert np.abs(a + b - 255).mean() < 4  # b = 255 - a, up to the two JPEG encodings
        assert np.abs(a - b).mean() > 30  # and not the same picture
    with pytest.raises(ValueError, match="style"):
        demo.generate(tmp_path / "bad", **args, style="sepia")
