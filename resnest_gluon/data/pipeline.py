"""The two public iterators: :func:`train_iter` and :func:`val_iter`, over either back end."""

from typing import Optional

import cv2
import mxnet as mx

from .cpp_iter import CPP_INTERP, INT31, cpp_iter
from .index import read_shard
from .python_iter import ThreadIter
from .transforms import TrainTransform, ValTransform, interp_name


def _worker_seed(seed: int, part_index: int) -> int:
    """A non-negative 31-bit seed for this worker's augmentations, different for every worker."""
    return (seed * 7919 + part_index) % INT31


def _check_backend(backend: str) -> None:
    if backend not in ("auto", "cpp", "python"):
        raise ValueError(f"backend must be 'auto', 'cpp' or 'python', got {backend!r}")


def train_iter(
    rec_path: str,
    batch_size: int,
    input_size: int = 224,
    *,
    num_parts: int = 1,
    part_index: int = 0,
    threads: int = 4,
    seed: int = 0,
    auto_aug=False,
    jitter: float = 0.4,
    lighting: float = 0.1,
    mirror: bool = True,
    min_area: float = 0.08,
    dtype: str = "float32",
    backend: str = "auto",
    ctx: Optional[mx.Context] = None,
    reduced_decode: bool = False,
    opencv_threads: Optional[int] = 1,
    clip_colour: bool = True,
    crop: str = "auto",
    colour: str = "auto",
) -> mx.io.DataIter:
    """Shuffled, augmented training batches of this worker's shard of ``rec_path``.

    Parameters
    ----------
    rec_path : str
        ``.rec`` file with its ``.idx`` beside it.
    batch_size : int
        Samples per batch on this worker.
    input_size : int
        Side of the square crops.
    num_parts, part_index : int
        Number of workers and this worker's rank; the shards are disjoint and cover the file.
    threads : int
        Decoding threads (C++ iterator) or worker threads (Python path; 0 = in the calling thread).
    seed : int
        Seed of the shuffling and augmentations (offset by ``part_index`` for augmentations).
    auto_aug : bool or str
        AutoAugment's ImageNet policy (Python path only): ``True`` or ``"resnest"`` is the ResNeSt
        reference's flavour on the whole decoded image before the crop; ``"torchvision"`` the torchvision
        flavour on the crop (see :mod:`resnest_gluon.data.autoaugment`); ``False`` none.
    jitter : float
        Brightness, contrast and saturation jitter (0 for none).
    lighting : float
        Standard deviation of the PCA lighting noise (0 for none).
    mirror : bool
        Random horizontal flips (the recipe's; off for data such as digits or text).
    min_area : float
        Smallest fraction of the image a random resized crop may cover (the recipe's 0.08).
    dtype : str
        Data type of the images (``float32`` or ``float16``); labels are always ``float32``. A float16
        batch is made on the CPU (27 ms per 64 x 224 px batch on one core), except with ``ctx``: to train
        in float16 on a GPU, take float32 and cast there, as ``scripts/train.py`` does.
    backend : {'auto', 'cpp', 'python'}
        ``auto`` (= ``python``) is the Python path: with the pip wheel of MXNet, whose bundled JPEG
        decoder is about 3x slower than OpenCV's, it needs 40 % of the CPU time per image of ``cpp``,
        the C++ ``ImageRecordIter`` (``scripts/bench_pipeline.py`` measures both).
    ctx : mxnet.Context, optional
        Python path only: the worker threads produce uint8 crops and the colour
        jitter, lighting, normalisation and HWC -> CHW run as one batched step on ``ctx`` (e.g. the
        training GPU, where it is nearly free), and ``data[0]`` lives there. ``None`` (default): all of
        it on the CPU in the worker threads, which is faster than batched MXNet operators on a CPU.
    reduced_decode : bool
        Python path: decode a JPEG at 1/2, 1/4 or 1/8 of its size (in libjpeg's DCT) when the random
        crop would still be at least ``input_size`` pixels at that scale: faster, but those crops come out
        smoother than the reference's full-size decode and bilinear resize (off by default; ignored with
        the whole-image AutoAugment).
    opencv_threads : int, optional
        Python path: calls ``cv2.setNumThreads(opencv_threads)`` (process-wide) when the iterator is
        built. The worker threads are the parallelism; OpenCV's own pool inside each call only adds
        synchronisation (about 4 % more CPU per image measured here). ``None`` leaves OpenCV alone.
    clip_colour : bool
        Python path: brightness, contrast, saturation and lighting each clipped to 0..255 on the uint8
        crop, as the reference does (default, with ``colour``'s arithmetic); ``False`` applies them with the
        normalisation as one unclipped map.
    colour : {'auto', 'mxnet', 'torchvision', 'rounded'}
        Python path, with ``clip_colour``: ``mxnet`` is MXNet 1.9.1's ``RandomColorJitter`` and
        ``RandomLighting`` (truncating; saturation towards 0.114 x blue), the reference's below 320 px;
        ``torchvision`` is torchvision's ``ColorJitter`` (PIL's ``ImageEnhance``, truncating) and MXNet's
        lighting, the reference's from 320 px; ``auto`` picks the reference's by ``input_size``;
        ``rounded`` rounds each step and saturates towards each pixel's grey level (the former default).
    crop : {'auto', 'resized', 'tf'}
        Python path: ``resized`` is the random resized crop (area ``min_area``-1, log-uniform aspect 3/4-4/3);
        ``tf`` the TF-style crop of the reference's large models (area 0.1-1, aspect uniform in 3/4-4/3,
        the centre square if no draw fits); ``auto`` is ``tf`` from 320 px (bicubic) and ``resized`` below
        (bilinear).

    Returns
    -------
    mxnet.io.DataIter
        Yields ``DataBatch`` with ``data[0]`` ``(B, 3, S, S)``, ``label[0]`` ``(B,)`` and ``pad``;
        ``reset()`` starts a new, reshuffled epoch; ``len()`` is the number of batches per epoch and
        ``num_samples`` the shard size.
    """
    _check_backend(backend)
    shard = read_shard(rec_path, batch_size, num_parts, part_index)
    if ctx is not None and backend == "cpp":
        raise ValueError("ctx= needs the Python path: use backend='auto' or 'python'")
    if backend != "cpp":
        if opencv_threads is not None:
            cv2.setNumThreads(opencv_threads)
        interp = interp_name("auto", input_size)
        transform = TrainTransform(
            input_size,
            jitter,
            lighting,
            auto_aug,
            interp,
            reduced_decode,
            mirror,
            min_area,
            clip_colour=clip_colour,
            crop=crop,
            colour=colour,
        )
        return ThreadIter(
            rec_path,
            shard,
            transform,
            batch_size,
            (3, input_size, input_size),
            shuffle=True,
            seed=_worker_seed(seed, part_index),
            threads=threads,
            dtype=dtype,
            ctx=ctx,
        )
    if auto_aug:
        raise ValueError("AutoAugment needs the Python path: use backend='auto' or 'python'")
    return cpp_iter(
        rec_path,
        len(shard),
        input_size,
        batch_size,
        num_parts,
        part_index,
        threads,
        dtype,
        shuffle=True,
        seed=seed % INT31,
        seed_aug=_worker_seed(seed, part_index),
        rand_mirror=mirror,
        random_resized_crop=True,
        min_random_area=min_area,
        max_random_area=1.0,
        min_aspect_ratio=3.0 / 4.0,
        max_aspect_ratio=4.0 / 3.0,
        brightness=jitter,
        contrast=jitter,
        saturation=jitter,
        pca_noise=lighting,
        inter_method=CPP_INTERP[interp_name("auto", input_size)],
    )


def val_iter(
    rec_path: str,
    batch_size: int,
    crop_size: int = 224,
    *,
    num_parts: int = 1,
    part_index: int = 0,
    threads: int = 4,
    resize: Optional[int] = None,
    interpolation: str = "auto",
    dtype: str = "float32",
    backend: str = "auto",
    opencv_threads: Optional[int] = 1,
) -> mx.io.DataIter:
    """Centre-crop validation batches of this worker's shard of ``rec_path``, in file order.

    Every record of the file appears in exactly one worker's shard, once; the last batch of a shard is
    completed with repeats whose number is ``batch.pad``, so
    ``batch.label[0][: batch_size - batch.pad]`` are the samples to count.

    Parameters
    ----------
    rec_path : str
        ``.rec`` file with its ``.idx`` beside it.
    batch_size : int
        Samples per batch on this worker.
    crop_size : int
        Side of the centre crop.
    num_parts, part_index : int
        Number of workers and this worker's rank.
    threads : int
        Decoding threads (C++) or worker threads (Python path; 0 = in the calling thread).
    resize : int, optional
        None (the default) is the ResNeSt reference's protocol: below 320 px the shorter side resized to
        ``ceil(crop_size / 0.875)`` (bilinear) and the centre crop; from 320 px the centre square of side
        ``crop_size / (crop_size + 32)`` times the shorter side, resized to ``crop_size`` with PIL's bicubic
        filter. Given: the shorter side resized to ``resize`` (OpenCV), then the centre crop.
    interpolation : {'auto', 'bilinear', 'bicubic'}
        With ``resize``: ``auto`` is bicubic for crops of 320 px and more, else bilinear. Another value
        than ``auto`` also selects the resize-and-crop protocol.
    dtype : str
        Data type of the images.
    backend : {'auto', 'cpp', 'python'}
        ``auto`` (= ``python``) is the Python path, which also names an undecodable record; ``cpp`` (the C++
        ``ImageRecordIter``) has only the resize-and-crop protocol, so from 320 px it needs ``resize``.
    opencv_threads : int, optional
        Python path: as in :func:`train_iter`.

    Returns
    -------
    mxnet.io.DataIter
        As :func:`train_iter`, unshuffled.
    """
    _check_backend(backend)
    shard = read_shard(rec_path, batch_size, num_parts, part_index)
    transform = ValTransform(crop_size, resize, interpolation)
    if transform.resize < crop_size:
        raise ValueError(f"resize ({transform.resize}) must be >= crop_size ({crop_size})")
    interp = interp_name(interpolation, crop_size)
    if backend == "cpp" and transform.by_ratio:
        raise ValueError(
            f"the C++ iterator cannot evaluate a {crop_size} px crop as the reference does (a centre square "
            "resized with PIL): use backend='auto', or give resize= for the resize-and-crop protocol"
        )
    if backend != "cpp":
        if opencv_threads is not None:
            cv2.setNumThreads(opencv_threads)
        return ThreadIter(
            rec_path,
            shard,
            transform,
            batch_size,
            (3, crop_size, crop_size),
            shuffle=False,
            seed=0,
            threads=threads,
            dtype=dtype,
        )
    return cpp_iter(
        rec_path,
        len(shard),
        crop_size,
        batch_size,
        num_parts,
        part_index,
        threads,
        dtype,
        shuffle=False,
        resize=transform.resize,
        inter_method=CPP_INTERP[interp],
    )
