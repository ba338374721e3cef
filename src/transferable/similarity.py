"""Why features transfer: per-layer representation similarity (linear CKA) and linear probes.

Linear CKA (Kornblith et al. 2019) compares two nets' representations of the same images at a layer:
1 for representations equal up to an orthogonal transform and an isotropic scaling, near 0 for unrelated
ones. It is estimated on mini-batches as Nguyen et al. (2021) do: the unbiased HSIC estimator (Song et al.
2012) of each batch's linear Gram matrices, summed over batches, so that paper-scale activations never
have to be held at once:

    CKA = sum_b HSIC_1(K_b, L_b) / sqrt(sum_b HSIC_1(K_b, K_b) * sum_b HSIC_1(L_b, L_b))

A linear probe fits a multinomial logistic regression on a frozen layer's features of one half's training
images and scores it on that half's validation images: how much of the target task a layer already
separates.

Feature maps are average-pooled to at most ``pool`` x ``pool`` positions and flattened (CaffeNet's conv5
is 6 x 6, so with the default 6 it is kept whole; conv1's 55 x 55 becomes 6 x 6): global pooling would
discard the spatial layout that CKA on flattened maps sees, and full conv1 maps (290,400 values per
image) would make the Gram products of a batch cost more than the forward pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import advice
from .settings import setting
from .paths import LAYER_NAMES


def _unbiased_hsic(k: torch.Tensor, l_: torch.Tensor) -> torch.Tensor:
    """HSIC_1 of Song et al. (2012) for two n x n Gram matrices (n > 3), in float64."""
    n = k.shape[0]
    k = k.clone()
    l_ = l_.clone()
    k.fill_diagonal_(0)
    l_.fill_diagonal_(0)
    ones = torch.ones(n, 1, dtype=k.dtype, device=k.device)
    trace = (k * l_).sum()
    sums = (ones.T @ k @ ones) * (ones.T @ l_ @ ones) / ((n - 1) * (n - 2))
    cross = (ones.T @ k @ l_ @ ones) * 2 / (n - 2)
    return ((trace + sums - cross) / (n * (n - 3))).squeeze()


class MinibatchCKA:
    """Linear CKA of two representations, accumulated batch by batch (each batch: the same images)."""

    def __init__(self):
        self.xy = self.xx = self.yy = 0.0
        self.batches = 0

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.reshape(len(x), -1).double()
        y = y.reshape(len(y), -1).double()
        if len(x) != len(y) or len(x) < 4:
            raise ValueError(f"CKA batches need the same >= 4 images on both sides, got {len(x)} and {len(y)}")
        k, l_ = x @ x.T, y @ y.T
        self.xy += float(_unbiased_hsic(k, l_))
        self.xx += float(_unbiased_hsic(k, k))
        self.yy += float(_unbiased_hsic(l_, l_))
        self.batches += 1

    def value(self) -> float:
        if not self.batches or self.xx <= 0 or self.yy <= 0:
            return float("nan")
        return self.xy / np.sqrt(self.xx * self.yy)


def cka(x: torch.Tensor, y: torch.Tensor, batch: int | None = None) -> float:
    """Linear CKA of x and y (n x ... each); on mini-batches of ``batch`` rows (all rows: one batch)."""
    est = MinibatchCKA()
    b = batch or len(x)
    for i in range(0, len(x), b):
        if len(x[i : i + b]) >= 4:  # a last batch of fewer than 4 images has no unbiased HSIC
            est.update(x[i : i + b], y[i : i + b])
    return est.value()


def pooled(x: torch.Tensor, pool: int) -> torch.Tensor:
    """A layer's output as one feature vector per image: conv maps average-pooled to at most pool x pool."""
    if x.dim() == 4 and x.shape[-1] > pool:
        x = F.adaptive_avg_pool2d(x, pool)
    return x.reshape(len(x), -1).float()


@torch.no_grad()
def layer_features(model, images: torch.Tensor, layers: int, pool: int) -> list[torch.Tensor]:
    """The pooled outputs of layers 1..``layers`` of a CaffeNet (conv1 ... fc7) for a batch of inputs."""
    model.eval()
    out, x = [], images
    for i in range(layers):
        x = model._block(i, x)
        out.append(pooled(x, pool))
    return out


def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
              classes: int, steps: int = 100, weight_decay: float = 1e-4) -> float:
    """Top-1 of a multinomial logistic regression on standardised features (full-batch L-BFGS, at most
    ``steps`` iterations from zero weights: deterministic), trained on (train_x, train_y), scored on
    (val_x, val_y)."""
    mu, sd = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    tx, vx = (train_x - mu) / sd, (val_x - mu) / sd
    lin = torch.nn.Linear(tx.shape[1], classes)
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    tx, vx = tx.float(), vx.float()
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(tx), train_y) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((lin(vx).argmax(1) == val_y).float().mean())


# ------------------------------------------------------------------------------------- the pipeline's step
SIM_COLUMNS = ["kind", "split", "net_a", "net_b", "layer", "n", "cka", "images"]
PROBE_COLUMNS = ["split", "target_half", "net", "source_half", "layer", "n", "top1", "train_images", "val_images"]


def load_net(path: str):
    """(model, mean image, input scale) of a trained net's model.pt (it carries its config and outputs)."""
    import json

    from .models.caffenet import CaffeNet, spec_from_config

    try:
        m = torch.load(path, map_location="cpu", weights_only=True)
        cfg = json.loads(m["config"])
    except Exception as e:  # noqa: BLE001 - any damage: name the file
        raise RuntimeError(f"{path}: not a model.pt of this version of transferable ({type(e).__name__}: {e}); "
                           f"rebuild it with: {advice.snakemake_command('--force', path)}") from e
    net = CaffeNet(spec_from_config(cfg["net"], int(m["outputs"])))
    net.load_state_dict(m["state_dict"])
    net.eval()
    return net, m["mean"].numpy(), float(setting(cfg, "net", "input_scale"))


def net_features(path: str, images: np.ndarray, pool: int, batch: int) -> list[torch.Tensor]:
    """Pooled features of layers 1..7 of the net at ``path`` for uint8 images (N, 3, S, S), centre-cropped
    and minus the net's own mean image, as in its evaluation."""
    from .data.loader import eval_batches

    net, mean, scale = load_net(path)
    per_layer: list[list[torch.Tensor]] = [[] for _ in LAYER_NAMES]
    labels = np.zeros(len(images), dtype=np.int64)
    for xb, _ in eval_batches(images, labels, mean, net.spec.crop, batch, "cpu", scale):
        for i, f in enumerate(layer_features(net, xb, len(LAYER_NAMES), pool)):
            per_layer[i].append(f)
    return [torch.cat(f) for f in per_layer]


def _sample(n: int, k: int, seed: int) -> np.ndarray:
    """A fixed sample of k of n indices (all n when k >= n), in a fixed RANDOM order: the shards hold a
    half's images class by class, and the mini-batch CKA estimator assumes random batches (a sorted sample
    made each batch of 250 hold about half the demo's classes, ~125 consecutive classes at ImageNet scale,
    and biased CKA low: baseA vs baseB at conv5 0.629 against 0.675 with random batches, issue 24)."""
    rng = np.random.default_rng(seed)
    return rng.permutation(n) if k >= n else rng.choice(n, k, replace=False)


def analyse(models: dict[tuple[str, str], str], manifests: dict[str, str], shards_index: str, params: dict,
            log=print):
    """CKA between the pairs the pipeline asks about, and linear probes, for the nets in ``models``
    ({(run, net): model.pt}); ``manifests`` maps each configured split to its manifest. Returns the
    similarity and probe frames (columns SIM_COLUMNS, PROBE_COLUMNS)."""
    import pandas as pd

    a = _Analysis(models, manifests, shards_index, params, log)
    a.pairs()
    a.seed_floor()
    a.probes()
    return pd.DataFrame(a.sim_rows, columns=SIM_COLUMNS), pd.DataFrame(a.probe_rows, columns=PROBE_COLUMNS)


class _Analysis:
    """One similarity job: fixed image samples read once while the features that use them are kept (one
    run's at a time: ~0.5 GB per net at paper scale), the CKA rows and the probe rows."""

    def __init__(self, models, manifests, shards_index, params, log):
        import json

        from .data.shards import Shards

        self.models, self.log = models, log
        self.shards = Shards(shards_index)
        self.pool, self.batch, self.k_img, self.k_probe = (int(params[k]) for k in
                                                           ("pool", "batch", "images", "probe_images"))
        mans = {s: json.loads(Path(p).read_text()) for s, p in manifests.items()}
        self.halves = {s: m["halves"] for s, m in mans.items()}
        self.random = {s for s, m in mans.items() if m.get("kind") == "random"}
        self.runs = sorted({r for r, _ in models})
        self.feats: dict[tuple, list[torch.Tensor]] = {}
        self.imgs: dict[tuple, tuple] = {}
        self.sim_rows: list[dict] = []
        self.probe_rows: list[dict] = []

    def nets_of(self, run: str) -> set[str]:
        return {n for r, n in self.models if r == run}

    def forget(self) -> None:
        self.feats.clear()
        self.imgs.clear()

    def images_of(self, split: str, subset: str, which: list[str], k: int, seed: int):
        """A fixed sample of the images of some halves."""
        key = (split, subset, tuple(which), k, seed)
        if key not in self.imgs:
            classes = sorted(c for h in which for c in self.halves[split][h]["classes"])
            x, y = self.shards.load(subset, classes)
            idx = _sample(len(x), k, seed)
            self.imgs[key] = (x.take(idx), y[idx], len(classes))
        return self.imgs[key]

    def features(self, run, net, split, subset, which, k, seed):
        key = (run, net, split, subset, tuple(which), k)
        if key not in self.feats:
            x, _, _ = self.images_of(split, subset, which, k, seed)
            self.feats[key] = net_features(self.models[(run, net)], x, self.pool, self.batch)
        return self.feats[key]

    def compare(self, kind, a, b, split, name_a, name_b, run):
        which = sorted(self.halves[split])
        fa = self.features(a[0], a[1], split, "val", which, self.k_img, 0)
        fb = self.features(b[0], b[1], split, "val", which, self.k_img, 0)
        for i, layer in enumerate(LAYER_NAMES):
            self.sim_rows.append({"kind": kind, "split": run, "net_a": name_a, "net_b": name_b, "layer": layer,
                                  "n": i + 1, "cka": cka(fa[i], fb[i], self.batch), "images": len(fa[i])})
        self.log(f"CKA {kind} {run} {name_a} vs {name_b}: " + " ".join(f"{r['cka']:.2f}" for r in self.sim_rows[-7:]))

    def pairs(self) -> None:
        """The two halves' base nets of each run, and each fine-tuned net (and base+) against its base net."""
        from .paths import base_split, parse_net

        for run in self.runs:
            split, nets = base_split(run), self.nets_of(run)
            if {"baseA", "baseB"} <= nets and self.halves[split].keys() >= {"A", "B"}:
                kind = "A_vs_B" if split in self.random else "A_vs_B_fixed_split"  # natural / man-made halves
                self.compare(kind, (run, "baseA"), (run, "baseB"), split, "baseA", "baseB", run)
            for net in sorted(nets):
                p = parse_net(net)
                if p.finetune and f"base{p.target}" in nets:
                    self.compare("finetuned_vs_base", (run, net), (run, f"base{p.target}"), split, net,
                                 f"base{p.target}", run)
            self.forget()

    def seed_floor(self) -> None:
        """The noise floor: the same half's base net trained with another seed (replicate r >= 1 vs r = 0)."""
        from .paths import parse_net, parse_replicate

        for run in self.runs:
            split, r = parse_replicate(run)
            if r == 0:
                continue
            for net in sorted(n for n in self.nets_of(run) if parse_net(n).is_base):
                if (split, net) in self.models:
                    self.compare("seed_floor", (split, net), (run, net), split, f"{split}/{net}", f"{run}/{net}",
                                 run)

    def probes(self) -> None:
        """Linear probes: each base net's layers on each half of its random split (its own half: the
        reference)."""
        from .paths import base_split

        for run in self.runs:
            split = base_split(run)
            if split not in self.random or not {"baseA", "baseB"} <= self.nets_of(run):
                continue
            for target in ("A", "B"):
                _, ytr, n_classes = self.images_of(split, "train", [target], self.k_probe, 1)
                _, yva, _ = self.images_of(split, "val", [target], self.k_img, 2)
                for source in ("A", "B"):
                    ftr = self.features(run, f"base{source}", split, "train", [target], self.k_probe, 1)
                    fva = self.features(run, f"base{source}", split, "val", [target], self.k_img, 2)
                    for i, layer in enumerate(LAYER_NAMES):
                        top1 = fit_probe(ftr[i], torch.from_numpy(ytr), fva[i], torch.from_numpy(yva), n_classes)
                        self.probe_rows.append({"split": run, "target_half": target, "net": f"base{source}",
                                                "source_half": source, "layer": layer, "n": i + 1, "top1": top1,
                                                "train_images": len(ytr), "val_images": len(yva)})
                    self.log(f"probes {run} base{source} on half {target}: "
                             + " ".join(f"{r['top1']:.2f}" for r in self.probe_rows[-7:]))
                self.forget()  # the next target's images
