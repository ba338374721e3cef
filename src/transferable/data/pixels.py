"""Pixels: one image file decoded and warped to S x S RGB (Pillow; the bicubic and ImageMagick-style
Mitchell resizes), JPEG re-encoding, and batched JPEG decoding on CPU threads or the GPU (nvJPEG). What
the shard writer (shards.py) and the JPEG shard reader (reader.py) share."""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from .formats import RESIZES
from .errors import IngestError

# torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec (not a dependency here); they
# are what the product card names and they work: when torchvision drops them, decode_jpegs is the one
# function to port.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


EXIF_ORIENTATION = ("ignore", "apply")


def decode(data: bytes, size: int, where: str, exif: str = "ignore", resize: str = "fast") -> np.ndarray:
    """Decode any Pillow format (CMYK, grayscale, palette, 16-bit, float and PNG-as-JPEG included) to RGB,
    warp to size x size (the paper: ``convert -resize 256x256!``, aspect ratio not kept), return uint8
    (3, size, size). High-bit-depth and float images are scaled to 8 bits, not clipped (``to_8bit``).
    ``exif``: ``ignore`` keeps the stored pixel order, as the authors' ImageMagick ``convert`` does without
    ``-auto-orient``; ``apply`` rotates/flips by the EXIF Orientation tag first.

    ``resize`` (``preprocess.resize``):
      * ``fast``: a JPEG is first shrunk in the DCT domain (libjpeg's 1/2, 1/4, 1/8 scaling, never below
        ``size``), then resized bicubically: 2-4x faster on large images, not pixel-identical to a full decode;
      * ``bicubic``: full decode, bicubic (Keys, a = -0.5);
      * ``imagemagick``: full decode and the filter ImageMagick 6's ``-resize`` picks by default: Lanczos (3
        lobes, Pillow's) when an RGB image loses area; Mitchell-Netravali (B = C = 1/3, ``mitchell_resize``)
        when it gains some, and for greyscale, palette and alpha images, which ImageMagick reads as
        PseudoClass or with alpha (ImageNet: the images under 256 x 256 = 65,536 pixels and the greyscale
        JPEGs, a few percent). Against ``convert -resize 256x256!`` (6.9.11 Q16): within one grey level.
    """
    if not data:
        raise IngestError(f"{where}: empty file (0 bytes)")
    if resize not in RESIZES:
        raise ValueError(f"preprocess.resize: {resize!r} is not one of {', '.join(RESIZES)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            if im.format == "JPEG" and resize == "fast":
                im.draft("RGB", (size, size))  # DCT-domain downscale, never below size
            if exif == "apply":
                im = ImageOps.exif_transpose(im)
            im = to_8bit(im, where)
            pseudo = im.mode in ("1", "L", "LA", "P", "PA", "RGBA") or "transparency" in im.info
            im = im.convert("RGB")
            if resize != "imagemagick":
                arr = np.asarray(im.resize((size, size), Image.BICUBIC), dtype=np.uint8)
            elif pseudo or size * size > im.width * im.height:
                arr = mitchell_resize(np.asarray(im), size)
            else:
                arr = np.asarray(im.resize((size, size), Image.LANCZOS), dtype=np.uint8)
    except IngestError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... for bad files
        raise IngestError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from e
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _mitchell(x: np.ndarray) -> np.ndarray:
    """The Mitchell-Netravali cubic, B = C = 1/3: ImageMagick's default filter for enlargements and
    PseudoClass images."""
    b = c = 1 / 3
    x = np.abs(x)
    near = ((12 - 9 * b - 6 * c) * x**3 + (-18 + 12 * b + 6 * c) * x**2 + (6 - 2 * b)) / 6
    far = ((-b - 6 * c) * x**3 + (6 * b + 30 * c) * x**2 + (-12 * b - 48 * c) * x + (8 * b + 24 * c)) / 6
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


@functools.lru_cache(maxsize=64)
def _mitchell_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) resampling weights as ImageMagick's resize computes them: pixel centres at +0.5, the
    filter stretched by the shrink factor (support 2 x max(1, n_in / n_out)), each row normalised."""
    scale = n_out / n_in
    blur = max(1.0, 1.0 / scale)
    support = 2.0 * blur
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) / scale
        start, stop = int(max(centre - support + 0.5, 0)), int(min(centre + support + 0.5, n_in))
        taps = _mitchell((np.arange(start, stop) - centre + 0.5) / blur)
        w[i, start:stop] = taps / taps.sum()
    return w


def mitchell_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8 with the Mitchell filter, separable, as ``convert -resize
    {size}x{size}!`` does (which rounds from 16-bit quanta: results agree within one grey level)."""
    h, w = rgb.shape[:2]
    out = np.tensordot(_mitchell_weights(h, size), rgb.astype(np.float64), axes=(1, 0))  # (size, W, 3)
    out = np.tensordot(_mitchell_weights(w, size), out, axes=(1, 1))  # (size_x, size_y, 3)
    return np.clip(np.rint(out.transpose(1, 0, 2)), 0, 255).astype(np.uint8)


def encode_jpeg(arr: np.ndarray, quality: int) -> bytes:
    """A warped uint8 (3, S, S) image as a baseline JPEG (4:2:0, as photo JPEGs are) at ``quality``."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr.transpose(1, 2, 0))).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def decode_jpegs(blobs: list, device: str | None = None, threads: int | None = None, stack: bool = True):
    """JPEG files (1-D uint8 tensors or bytes) -> uint8 tensor (B, 3, S, S) on ``device``, with
    ``torchvision.io.decode_jpeg``: one batched nvJPEG call on a GPU; on the CPU split between ``threads``
    threads (default: torch's intra-op threads), which decode in parallel (the decoder releases the GIL).
    ``stack=False`` on the CPU returns the list of (3, S, S) images: stacking a batch of 256 px images
    took half as long as decoding it here (53 ms against 98 ms for 256), and the CPU crop reads them one
    by one anyway."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    ts = [b if isinstance(b, torch.Tensor) else torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    if not ts:
        raise ValueError("decode_jpegs: no images")
    dev = torch.device(device or "cpu")
    if dev.type == "cuda":
        # On a stream of its own, finished before it returns: torchvision's batched decoder allocates its
        # outputs on the current stream and decodes on streams of its own that do not wait for it, so on
        # the training stream it could be handed memory that queued kernels still read
        # (pytorch/vision#9606). The caller marks the result as used by its stream (record_stream).
        stream = decode_stream(dev)
        with torch.cuda.stream(stream):
            out = torch.stack(decode_jpeg(ts, mode=ImageReadMode.RGB, device=dev))
        stream.synchronize()
        return out
    k = max(1, min(threads or torch.get_num_threads(), len(ts)))

    def work(chunk):
        return [decode_jpeg(t, mode=ImageReadMode.RGB) for t in chunk]

    if k == 1:
        out = work(ts)
    else:
        out = [None] * len(ts)
        for j, imgs in enumerate(thread_pool("decode", k).map(work, [ts[j::k] for j in range(k)])):
            out[j::k] = imgs
    return torch.stack(out) if stack else out


_POOLS: dict = {}  # (purpose, threads) -> a thread pool kept for the process's life
_DECODE_STREAMS: dict = {}  # (CUDA device, thread) -> the stream nvJPEG decodes on


def decode_stream(dev):
    """The CUDA stream nvJPEG decodes on for this device AND this thread: one per consumer. The read-ahead
    thread (training batches) and the main thread (evaluation) never share one, so an evaluation started
    while a prefetch decodes cannot wait on, or reuse memory of, the other's work."""
    import threading

    import torch

    key = (torch.device(dev), threading.get_ident())
    if key not in _DECODE_STREAMS:
        _DECODE_STREAMS[key] = torch.cuda.Stream(key[0])
    return _DECODE_STREAMS[key]


def thread_pool(name: str, k: int):
    from concurrent.futures import ThreadPoolExecutor

    if (name, k) not in _POOLS:
        _POOLS[(name, k)] = ThreadPoolExecutor(k, thread_name_prefix=name)
    return _POOLS[(name, k)]


def to_8bit(im: Image.Image, where: str) -> Image.Image:
    """An 8-bit image for Pillow's ``convert("RGB")``, which CLIPS wider values (a 16-bit grey 30000 would
    become 255, a float 0.5 would become 0). Integer images are scaled from their bit depth (16-bit PNG and
    TIFF: x * 255 / 65535, rounded); float images must lie in [0, 1] and are scaled by 255. Anything else
    is refused with a message naming the image (``data.on_corrupt: skip`` records and skips it)."""
    if im.mode not in ("I", "F") and not im.mode.startswith("I;16"):
        return im
    a = np.asarray(im)
    if im.mode == "F":
        lo, hi = (float(np.min(a)), float(np.max(a))) if a.size else (0.0, 0.0)
        if not np.isfinite(a).all() or lo < 0 or hi > 1:
            raise IngestError(f"{where}: float image with values outside [0, 1] (min {lo:g}, max {hi:g}); "
                              "its meaning in 8 bits is unknown: convert it to 8 bits yourself")
        return Image.fromarray(np.rint(a * 255).astype(np.uint8))
    bits, signed = 16, im.mode.startswith("I;16S")
    if im.mode == "I" and im.format == "TIFF":
        tags = im.tag_v2 if hasattr(im, "tag_v2") else {}
        bps, fmt = tags.get(258, 16), tags.get(339, 1)  # BitsPerSample, SampleFormat (2: signed)
        bits = int(bps[0] if isinstance(bps, tuple) else bps)
        signed = int(fmt[0] if isinstance(fmt, tuple) else fmt) == 2
    elif im.mode == "I":
        bits = 32  # a 32-bit integer image of another format (Pillow's mode I)
    if signed or bits > 16:
        raise IngestError(f"{where}: {'signed ' if signed else ''}{bits}-bit integer image: what its values mean in "
                          "8 bits is unknown (scaling a 32-bit range would make it black): convert it to 8 bits "
                          "yourself")
    a = a.astype(np.int64)
    top = (1 << bits) - 1
    if a.size and (a.min() < 0 or a.max() > top):
        raise IngestError(f"{where}: {bits}-bit integer image with values outside 0..{top} "
                          f"(min {a.min()}, max {a.max()}): convert it to 8 bits yourself")
    return Image.fromarray(((a * 255 + top // 2) // top).astype(np.uint8))
