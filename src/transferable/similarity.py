"""Why features transfer: per-layer representation similarity (linear CKA) and linear probes.

Linear CKA (Kornblith et al. 2019) compares two nets' representations of the same images at a layer:
1 for representations equal up to an orthogonal transform and an isotropic scaling, near 0 for unrelated
ones. It is estimated on mini-batches as Nguyen et al. (2021) do: the unbiased HSIC estimator (Song et al.
2012) of each batch's linear Gram matrices, summed over batches, so that paper-scale activations never
have to be held at once:

    CKA = sum_b HSIC_1(K_b, L_b) / sqrt(sum_b HSIC_1(K_b, K_b) * sum_b HSIC_1(L_b, L_b))

A linear probe fits a multinomial logistic regression on a frozen unit's features of one half's training
images (its ridge penalty chosen by cross-validation on them) and scores it on that half's validation
images: how much of the target task a unit already separates.

Every architecture is read through its feature taps (``TransferNet.taps``), one set per transferable unit:
a CaffeNet layer's or a ResNet block's output; a ViT block's class token and the mean of its patch tokens,
both, labelled in the ``features`` column. Feature maps are average-pooled to at most ``pool`` x ``pool``
positions and flattened (CaffeNet's conv5 is 6 x 6, so with the default 6 it is kept whole; conv1's
55 x 55 becomes 6 x 6): global pooling would discard the spatial layout that CKA on flattened maps sees,
and full conv1 maps (290,400 values per image) would make the Gram products of a batch cost more than the
forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import advice
from .settings import schema_default, schema_defaults, setting


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
        self.constant = False  # a side with no variance across images: CKA is undefined (NaN)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.reshape(len(x), -1).double()
        y = y.reshape(len(y), -1).double()
        if len(x) != len(y) or len(x) < 4:
            raise ValueError(f"CKA batches need the same >= 4 images on both sides, got {len(x)} and {len(y)}")
        for z in (x, y):
            if float(z.var(0).sum()) <= 1e-10 * float(z.pow(2).mean(0).sum()):
                self.constant = True
        k, l_ = x @ x.T, y @ y.T
        self.xy += float(_unbiased_hsic(k, l_))
        self.xx += float(_unbiased_hsic(k, k))
        self.yy += float(_unbiased_hsic(l_, l_))
        self.batches += 1

    def value(self) -> float:
        if not self.batches or self.constant or self.xx <= 0 or self.yy <= 0:
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


# A probe's ridge penalty is chosen per layer by cross-validation on its training sample, from a grid
# (experiment.similarity.probe_lambdas and probe_folds, defaults in the schema; the loss is the mean
# cross-entropy + lambda * |W|^2 on standardised features): with lambda fixed at 1e-4 every conv layer
# fitted its training images perfectly and a larger lambda moved held-out top-1 by up to +7.4 points
# (issue 24).
# Probes whose feature matrix holds more values than this train on mini-batches (Adam, a fixed number of
# steps) instead of full-batch L-BFGS: ImageNet-scale features (10,000 images x 9,216 values: 92 M) stay
# within reach of a 4 GB job either way, but a larger sample or wider layers need not fit twice over.
FULL_BATCH_MAX = 100_000_000


@dataclass(frozen=True)
class ProbeFit:
    top1: float  # held-out (the half's validation images)
    train_top1: float  # on the images it was fitted to
    lam: float  # the ridge penalty cross-validation chose
    cv_top1: float  # its mean top-1 over the folds


def _linear(x: torch.Tensor, y: torch.Tensor, classes: int, lam: float, steps: int,
            full_batch_max: int = FULL_BATCH_MAX, start: torch.nn.Linear | None = None) -> torch.nn.Linear:
    """A multinomial logistic regression fitted to standardised features from zero weights (deterministic):
    full-batch L-BFGS (scipy's; at most ``steps`` iterations), or, above ``full_batch_max`` feature values,
    ``20 * steps`` steps of mini-batch Adam in a fixed order. ``start``: warm-start from that fit (a
    regularisation path: each penalty starts where the next larger one ended)."""
    lin = torch.nn.Linear(x.shape[1], classes)
    with torch.no_grad():
        lin.weight.copy_(start.weight if start is not None else torch.zeros_like(lin.weight))
        lin.bias.copy_(start.bias if start is not None else torch.zeros_like(lin.bias))
    if x.numel() <= full_batch_max:
        # scipy's L-BFGS-B on the exact loss and gradient in float64 (numpy): on the demo's probes torch's
        # L-BFGS spent ~0.8 ms per evaluation, this ~0.12 ms (with one BLAS thread, as a job has)
        from scipy.optimize import minimize

        xn, yn, n, d = x.double().numpy(), y.numpy(), len(x), x.shape[1]
        onehot = np.eye(classes)[yn]

        def loss_grad(w):
            wm, b = w[: classes * d].reshape(classes, d), w[classes * d :]
            z = xn @ wm.T + b
            z -= z.max(1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(1, keepdims=True))
            g = (np.exp(logp) - onehot) / n
            loss = -logp[np.arange(n), yn].mean() + lam * (wm * wm).sum()
            return loss, np.concatenate([(g.T @ xn + 2 * lam * wm).ravel(), g.sum(0)])

        w0 = np.concatenate([lin.weight.detach().double().numpy().ravel(), lin.bias.detach().double().numpy()])
        w = minimize(loss_grad, w0, jac=True, method="L-BFGS-B", options={"maxiter": steps, "ftol": 1e-6}).x
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w[: classes * d].reshape(classes, d)))
            lin.bias.copy_(torch.from_numpy(w[classes * d :]))
        return lin

    def loss_of(xb, yb):
        return F.cross_entropy(lin(xb), yb) + lam * lin.weight.pow(2).sum()

    batch = min(len(x), max(256, full_batch_max // x.shape[1]))
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    for i in range(20 * steps):  # mini-batch steps in a fixed order, cycling through the sample
        idx = order[(i * batch + torch.arange(batch)) % len(x)]
        opt.zero_grad()
        loss_of(x[idx], y[idx]).backward()
        opt.step()
    return lin


def _top1(lin: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((lin(x).argmax(1) == y).float().mean())


def _standardised(train_x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """The sets standardised by the first one's mean and std; with fewer images than features, expressed
    in the basis of the first one's row space (its right singular vectors): an L2-penalised linear model's
    optimum lies in that span (the representer theorem), so the probe is the same function, fitted on
    min(images, features) columns instead of all of them (CaffeNet's conv maps: 300 images x up to 3,456
    values in the demo, a tenth of the work)."""
    mu, sd = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    out = [((t - mu) / sd).float() for t in (train_x, *others)]
    if len(train_x) < train_x.shape[1]:
        v = torch.linalg.svd(out[0].double(), full_matrices=False).Vh.T.float()
        out = [t @ v for t in out]
    return out


def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
              classes: int, steps: int = 100, lambdas=None, folds: int | None = None,
              full_batch_max: int = FULL_BATCH_MAX) -> ProbeFit:
    """A linear probe: ``lambdas`` compared by ``folds``-fold cross-validation on (train_x, train_y) (fixed
    folds; each fold standardised by its own training part; ``steps // 2`` iterations, enough to rank the
    penalties; ties go to the larger penalty), then refitted on all of it and scored on (val_x, val_y).
    ``lambdas``, ``folds``: the schema's defaults of ``experiment.similarity.probe_lambdas``, ``probe_folds``."""
    lambdas = lambdas or schema_default("experiment.similarity.probe_lambdas")
    folds = folds or schema_default("experiment.similarity.probe_folds")
    lam, cv = float(lambdas[0]), float("nan")
    if len(lambdas) > 1:
        fold = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0)) % folds
        accs: dict[float, list[float]] = {float(lam_): [] for lam_ in lambdas}
        for f in range(folds):
            fit, held = fold != f, fold == f
            tx, hx = _standardised(train_x[fit], train_x[held])
            prev = None
            for lam_ in sorted(accs, reverse=True):  # the path from the largest penalty down, warm-started
                prev = _linear(tx, train_y[fit], classes, lam_, steps // 2, full_batch_max, start=prev)
                accs[lam_].append(_top1(prev, hx, train_y[held]))
        scores = {lam_: float(np.mean(a)) for lam_, a in accs.items()}
        cv = max(scores.values())
        lam = max(k for k, v in scores.items() if v == cv)
    tx, vx = _standardised(train_x, val_x)
    lin = _linear(tx, train_y, classes, lam, steps, full_batch_max)
    return ProbeFit(top1=_top1(lin, vx, val_y), train_top1=_top1(lin, tx, train_y), lam=lam, cv_top1=cv)


# ------------------------------------------------------------------------------------- the pipeline's step
SIM_COLUMNS = ["kind", "split", "net_a", "net_b", "layer", "features", "n", "cka", "images"]
PROBE_COLUMNS = ["split", "target_half", "net", "source_half", "layer", "features", "n", "top1", "train_top1",
                 "lambda", "cv_top1", "train_images", "val_images"]


def load_net(path: str):
    """(model, mean image, input scale, crop) of a trained net's model.pt, of any architecture (it carries
    its config and outputs)."""
    import json

    from .transfer import build_net, spec_from_config

    try:
        m = torch.load(path, map_location="cpu", weights_only=True)
        cfg = json.loads(m["config"])
        net = build_net(spec_from_config(cfg["net"], int(m["outputs"])))
        net.load_state_dict(m["state_dict"])
    except Exception as e:  # noqa: BLE001 - any damage: name the file
        raise RuntimeError(f"{path}: not a model.pt of this version of transferable ({type(e).__name__}: {e}); "
                           f"rebuild it with: {advice.snakemake_command('--force', path)}") from e
    net.eval()
    return net, m["mean"].numpy(), float(setting(cfg, "net", "input_scale")), int(setting(cfg, "net", "crop"))


def net_features(path: str, images: np.ndarray, pool: int, batch: int) -> dict[tuple[int, str, str], torch.Tensor]:
    """The net at ``path``'s feature taps at every transferable unit, for uint8 images (N, 3, S, S)
    centre-cropped and minus the net's own mean image, as in its evaluation: {(n, unit, features):
    (N, d)}, in unit order, maps average-pooled to at most ``pool`` x ``pool``."""
    from .data.loader import eval_batches

    net, mean, scale, crop = load_net(path)
    out: dict[tuple[int, str, str], list[torch.Tensor]] = {}
    labels = np.zeros(len(images), dtype=np.int64)
    for xb, _ in eval_batches(images, labels, mean, crop, batch, "cpu", scale):
        for i, taps in enumerate(net.features(xb, len(net.units))):
            for label, f in taps.items():
                out.setdefault((i + 1, net.units[i].name, label), []).append(pooled(f, pool))
    return {k: torch.cat(v) for k, v in out.items()}


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

    a = _Analysis(models, manifests, shards_index, {**schema_defaults("experiment.similarity"), **params}, log)
    a.pairs()
    a.seed_floor()
    a.probes()
    return pd.DataFrame(a.sim_rows, columns=SIM_COLUMNS), pd.DataFrame(a.probe_rows, columns=PROBE_COLUMNS)


class _Analysis:
    """One similarity job: fixed image samples read once while the features that use them are kept (one
    run's at a time: ~0.5 GB per net at paper scale), the CKA rows and the probe rows."""

    def __init__(self, models, manifests, shards_index, params, log):
        import json

        from .data.reader import Shards

        self.models, self.log = models, log
        self.shards = Shards(shards_index)
        self.pool, self.batch, self.k_img, self.k_probe = (int(params[k]) for k in
                                                           ("pool", "batch", "images", "probe_images"))
        self.lambdas = tuple(float(v) for v in params["probe_lambdas"])
        self.folds = int(params["probe_folds"])
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
        for (n, layer, label), x in fa.items():
            self.sim_rows.append({"kind": kind, "split": run, "net_a": name_a, "net_b": name_b, "layer": layer,
                                  "features": label, "n": n, "cka": cka(x, fb[(n, layer, label)], self.batch),
                                  "images": len(x)})
        self.log(f"CKA {kind} {run} {name_a} vs {name_b}: "
                 + " ".join(f"{r['cka']:.2f}" for r in self.sim_rows[-len(fa):]))

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
                    for (n, layer, label), x in ftr.items():
                        fit = fit_probe(x, torch.from_numpy(ytr), fva[(n, layer, label)], torch.from_numpy(yva),
                                        n_classes, lambdas=self.lambdas, folds=self.folds)
                        self.probe_rows.append({"split": run, "target_half": target, "net": f"base{source}",
                                                "source_half": source, "layer": layer, "features": label, "n": n,
                                                "top1": fit.top1, "train_top1": fit.train_top1, "lambda": fit.lam,
                                                "cv_top1": fit.cv_top1, "train_images": len(ytr),
                                                "val_images": len(yva)})
                    self.log(f"probes {run} base{source} on half {target}: " + " ".join(
                        f"{r['top1']:.2f} (train {r['train_top1']:.2f}, lambda {r['lambda']:g})"
                        for r in self.probe_rows[-len(ftr):]))
                self.forget()  # the next target's images


CROSS_COLUMNS = ["n", "unit", "features", "cka", "cka_sd", "bases", "probe_top1", "probe_train_top1", "probe_lambda",
                 "own_probe_top1", "images", "probe_images"]


def cross_profile(source: str, bases: list[str], manifest: str, half: str, shards_index: str, params: dict,
                  log=print):
    """One (source, target) pair of the cross experiment, unit by unit, on the target half's images: the
    linear CKA between the source net's features and each of the target's base nets' (mean and SD over
    those seed replicates), and linear probes (the linear-evaluation protocol) on the source's features and
    on the first base net's (the target's own net: the reference), fitted on a fixed sample of the target's
    training images and scored on a fixed sample of its validation images. Columns CROSS_COLUMNS."""
    import json

    import pandas as pd

    from .data.reader import Shards

    p = {**schema_defaults("experiment.similarity"), **params}
    pool, batch = int(p["pool"]), int(p["batch"])
    classes = json.loads(Path(manifest).read_text())["halves"][half]["classes"]
    shards = Shards(shards_index)

    def sample(subset: str, k: int, seed: int):
        x, y = shards.load(subset, classes)
        idx = _sample(len(x), k, seed)
        return x.take(idx), torch.from_numpy(y[idx])

    xv, yv = sample("val", int(p["images"]), 2)
    xt, yt = sample("train", int(p["probe_images"]), 1)
    src_v, src_t = (net_features(source, x, pool, batch) for x in (xv, xt))
    ckas: dict[tuple, list[float]] = {k: [] for k in src_v}
    for b in bases:
        fb = net_features(b, xv, pool, batch)
        for k, x in src_v.items():
            ckas[k].append(cka(x, fb[k], batch))
    own_v, own_t = (net_features(bases[0], x, pool, batch) for x in (xv, xt))
    lambdas, folds = tuple(float(v) for v in p["probe_lambdas"]), int(p["probe_folds"])
    rows = []
    for k in src_v:
        fit = fit_probe(src_t[k], yt, src_v[k], yv, len(classes), lambdas=lambdas, folds=folds)
        own = fit_probe(own_t[k], yt, own_v[k], yv, len(classes), lambdas=lambdas, folds=folds)
        c = np.array(ckas[k], dtype=float)
        rows.append({"n": k[0], "unit": k[1], "features": k[2], "cka": float(np.nanmean(c)),
                     "cka_sd": float(np.nanstd(c, ddof=1)) if len(c) > 1 else float("nan"), "bases": len(c),
                     "probe_top1": fit.top1, "probe_train_top1": fit.train_top1, "probe_lambda": fit.lam,
                     "own_probe_top1": own.top1, "images": len(yv), "probe_images": len(yt)})
        log(f"unit {k[0]} {k[1]} ({k[2]}): CKA {rows[-1]['cka']:.2f}, probe top-1 {fit.top1:.3f} "
            f"(the target's own net: {own.top1:.3f})")
    return pd.DataFrame(rows, columns=CROSS_COLUMNS)
