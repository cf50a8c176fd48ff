"""The input pipeline: ranks read only their tar members, draft decode, the device path's batches, worker count."""
from __future__ import annotations

import io
import random
import tarfile
from types import SimpleNamespace

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import make_image, write_image_shards
from PIL import Image
from torch.utils.data import default_collate

from pas.core import runtime
from pas.core.config import PasError
from pas.ssl.augment import decode_for_views
from pas.ssl.data import ViewStream
from pas.ssl.gpu_augment import DeviceViews
from pas.ssl.views import ViewSpec, simclr_view


CPU_MODULE = SimpleNamespace(device=torch.device("cpu"))   # what DeviceViews reads of the LightningModule


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("input")
    rows = write_image_shards(root, [[(f"s{s}-{i:02d}", make_image(100 * s + i)) for i in range(10)]
                                     for s in range(2)])
    return pa.Table.from_pylist(rows), root


def test_each_rank_reads_only_the_tar_members_it_trains_on(shards, monkeypatch):
    manifest, root = shards
    read: list[str] = []
    extract = tarfile.TarFile.extractfile

    def recording(self, member):
        read.append(member.name.split(".")[0])
        return extract(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", recording)
    trained = []
    for rank in range(2):
        stream = ViewStream(manifest, root, [simclr_view(16)], seed=0)
        stream.set_rank(rank, 2)
        read.clear()
        keys = [item["key"] for item in stream]
        assert sorted(read) == sorted(keys) and len(keys) == 10    # no other rank's member was read
        trained += keys
    assert sorted(trained) == sorted(manifest.column("key").to_pylist())


def test_views_stay_uint8_until_the_device_normalises_them(shards):
    manifest, root = shards
    items = [item for _, item in zip(range(4), ViewStream(manifest, root, [simclr_view(16)] * 2, 0, normalize=False))]
    batch = default_collate(items)
    assert batch["views"][0].dtype == torch.uint8
    DeviceViews([simclr_view(16)] * 2).on_train_batch_start(None, CPU_MODULE, batch, 0)
    assert batch["views"][0].dtype == torch.float32
    assert -2.2 < float(batch["views"][0].min()) and float(batch["views"][0].max()) < 2.7   # ImageNet-normalised
    same = [item["views"][0] for _, item in zip(range(4), ViewStream(manifest, root, [simclr_view(16)] * 2, 0))]
    assert torch.allclose(batch["views"][0], torch.stack(same), atol=1e-6)  # the CPU path's normalised views


def test_the_device_path_batch_carries_bytes_and_draws_and_becomes_the_same_views(shards):
    manifest, root = shards
    specs = [simclr_view(16), simclr_view(12, blur=1.0, solarize=0.2)]
    items = [item for _, item in zip(range(4), ViewStream(manifest, root, specs, seed=0, encoded=True))]
    batch = default_collate(items)
    assert isinstance(batch["encoded"], list) and isinstance(batch["encoded"][0], bytes)
    assert batch["params"].shape == (4, 2, 17)
    DeviceViews(specs).on_train_batch_start(None, CPU_MODULE, batch, 0)
    assert [tuple(v.shape) for v in batch["views"]] == [(4, 3, 16, 16), (4, 3, 12, 12)]
    cpu = [item for _, item in zip(range(4), ViewStream(manifest, root, specs, seed=0))]
    assert [item["key"] for item in cpu] == batch["key"]
    for v in range(2):
        assert (batch["views"][v] - torch.stack([item["views"][v] for item in cpu])).abs().mean() < 0.08
    with pytest.raises(ValueError, match="ViewSpec"):
        ViewStream(manifest, root, [lambda image: image], seed=0, encoded=True)


def test_draft_decode_shrinks_a_large_jpeg_only_as_far_as_every_crop_allows():
    buffer = io.BytesIO()
    make_image(0, size=64).resize((1024, 1024)).save(buffer, "JPEG", quality=90)
    small = [ViewSpec(32, scale=(0.5, 1.0))]
    image, params, factor = decode_for_views(buffer.getvalue(), small, random.Random(0))
    assert factor >= 4 and image.shape == (1024 / factor, 1024 / factor, 3) and image.dtype == np.uint8
    assert all(min(p[2] - p[0], p[3] - p[1]) / factor >= 32 for p in params)
    full, _, factor = decode_for_views(buffer.getvalue(), [ViewSpec(600, scale=(0.5, 1.0))], random.Random(0))
    assert factor == 1 and full.shape == (1024, 1024, 3)
    png = io.BytesIO()
    Image.new("RGB", (300, 200)).save(png, "PNG")
    assert decode_for_views(png.getvalue(), small, random.Random(0))[2] == 1   # not a JPEG: decoded whole


def test_workers_fill_the_cores_each_training_process_has(monkeypatch):
    monkeypatch.delenv("PAS_NUM_WORKERS", raising=False)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 64)
    assert runtime.num_workers() == 63 and runtime.num_workers(8) == 7 and runtime.num_workers(32) == 0
    monkeypatch.setenv("PAS_NUM_WORKERS", "3")
    assert runtime.num_workers(8) == 3
    monkeypatch.setenv("PAS_NUM_WORKERS", "many")
    with pytest.raises(PasError, match="PAS_NUM_WORKERS='many'"):
        runtime.num_workers()


def test_augmentation_runs_on_the_gpu_by_default_and_the_environment_can_say_otherwise(monkeypatch):
    monkeypatch.delenv("PAS_AUGMENT", raising=False)
    assert runtime.augment_on_device("cuda") and runtime.augment_on_device("cuda:1")
    assert not runtime.augment_on_device("cpu")
    monkeypatch.setenv("PAS_AUGMENT", "cpu")
    assert not runtime.augment_on_device("cuda")
    monkeypatch.setenv("PAS_AUGMENT", "device")
    assert runtime.augment_on_device("cpu")
    monkeypatch.setenv("PAS_AUGMENT", "gpu")
    with pytest.raises(PasError, match="PAS_AUGMENT='gpu'"):
        runtime.augment_on_device("cuda")


def _photo(side: int = 300, name: str = "astronaut", height: int | None = None) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB").resize((side, height or side), Image.BICUBIC)


PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _mean_diff(ours, reference) -> float:
    """Mean absolute difference in grey levels of two uint8 images (arrays, tensors or PIL)."""
    return float(np.abs(np.asarray(ours, dtype=np.float64) - np.asarray(reference, dtype=np.float64)).mean())


@pytest.mark.parametrize("op, reference", [(0, "adjust_brightness"), (1, "adjust_contrast"),
                                           (2, "adjust_saturation"), (3, "adjust_hue")])
def test_cpu_colour_adjustments_stay_within_a_grey_level_of_torchvisions_pil_ones(op, reference):
    # OpenCV's blends round where PIL's truncate, and its HSV round trip rounds differently: <= 1 level on average
    from torchvision.transforms import functional as TF

    from pas.ssl.views import ADJUST
    rng = random.Random(op)
    low, high = ((-0.5, 0.5) if op == 3 else (0.0, 2.0))
    for name in PHOTOS:
        image = _photo(96, name)
        for _ in range(6):
            factor = rng.uniform(low, high)
            ours = ADJUST[op](np.asarray(image), factor)
            assert ours.dtype == np.uint8 and _mean_diff(ours, getattr(TF, reference)(image, factor)) <= 1


def test_cpu_flip_grayscale_and_solarisation_stay_within_a_grey_level_of_pil():
    from PIL import ImageOps

    from pas.ssl.views import FLIP, GRAY, JITTER, RGB_TO_GREY, SIGMA, SOLARIZE, apply_view, sample_view
    for name in PHOTOS:
        image, spec = _photo(64, name), ViewSpec(64, scale=(1.0, 1.0), ratio=(1.0, 1.0))
        row = sample_view(spec, 64, 64, random.Random(0))   # the whole image, no jitter
        row[JITTER], row[GRAY], row[SIGMA], row[SOLARIZE], row[FLIP] = 0.0, 0.0, 0.0, 0.0, 1.0
        assert _mean_diff(apply_view(image, spec, row, normalize=False).permute(1, 2, 0),
                          ImageOps.mirror(image)) <= 1
        assert _mean_diff(cv2.cvtColor(np.asarray(image), RGB_TO_GREY), image.convert("L")) <= 1
        row[FLIP], row[SOLARIZE] = 0.0, 1.0
        assert _mean_diff(apply_view(image, spec, row, normalize=False).permute(1, 2, 0),
                          ImageOps.solarize(image, 128)) <= 1


def test_cpu_gaussian_blur_stays_within_two_grey_levels_of_pils_with_the_sigma_as_radius():
    # DINO utils.py:36-50 passes radius=uniform(0.1, 2) to PIL's GaussianBlur (box passes approximating a
    # Gaussian of that sigma); OpenCV blurs with the true Gaussian of the same sigma, edges repeated as PIL does
    from PIL import ImageFilter

    from pas.ssl.views import FLIP, GRAY, JITTER, SIGMA, apply_view, sample_view
    rng, spec = random.Random(0), ViewSpec(96, scale=(1.0, 1.0), ratio=(1.0, 1.0), blur=1.0)
    for name in PHOTOS:
        image = _photo(96, name)
        for _ in range(5):
            row = sample_view(spec, 96, 96, rng)
            row[JITTER], row[FLIP], row[GRAY], row[SIGMA] = 0.0, 0.0, 0.0, rng.uniform(0.1, 2.0)   # blur alone
            ours = apply_view(image, spec, row, normalize=False).permute(1, 2, 0)
            assert _mean_diff(ours, image.filter(ImageFilter.GaussianBlur(radius=row[SIGMA]))) <= 2


def test_cpu_crops_resized_stay_within_two_grey_levels_of_pils_bilinear_resize():
    # the methods' own draws (DINO global and local crops, SimCLR's) on 500x400 photos: shrinking up to ~3x,
    # growing, and one side shrinking while the other grows
    from pas.ssl.views import X0, Y1, crop_resize, sample_view
    rng = random.Random(0)
    specs = [ViewSpec(224, scale=(0.4, 1.0)), ViewSpec(96, scale=(0.05, 0.4)), simclr_view(224)]
    for name in PHOTOS:
        image = _photo(500, name, height=400)
        for spec in specs:
            for _ in range(4):
                box = tuple(sample_view(spec, 500, 400, rng)[X0:Y1 + 1])
                ours = crop_resize(np.asarray(image), box, spec.size)
                assert ours.shape == (spec.size, spec.size, 3)
                assert _mean_diff(ours, image.resize((spec.size, spec.size), Image.BILINEAR, box=box)) <= 2
    image = _photo(500)
    for box in [(0, 0, 76, 380), (0, 0, 380, 76), (10, 20, 60, 70)]:       # mixed, mixed, growing
        reference = image.resize((96, 96), Image.BILINEAR, box=box)
        assert _mean_diff(crop_resize(np.asarray(image), box, 96), reference) <= 2


def test_opencv_decode_matches_pils_whole_and_in_draft_mode_and_ignores_exif_orientation():
    image = _photo(512, "coffee")
    exif = Image.Exif()
    exif[0x0112] = 6                                       # "rotate 90": PIL's decode and the draws ignore it
    buffer = io.BytesIO()
    image.crop((0, 0, 512, 384)).save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    for spec, scale in [(ViewSpec(384, scale=(1.0, 1.0)), 1), (ViewSpec(96, scale=(0.5, 1.0)), 2)]:
        pixels, _, factor = decode_for_views(buffer.getvalue(), [spec], random.Random(0))
        assert factor == scale and pixels.shape == (384 // scale, 512 // scale, 3)
        with Image.open(io.BytesIO(buffer.getvalue())) as reference:
            reference.draft("RGB", (512 // scale, 384 // scale))
            assert _mean_diff(pixels, reference.convert("RGB")) <= 1


def test_a_grey_view_kept_in_one_band_is_torchvisions_three_band_grey_blurred_and_solarised():
    from PIL import ImageFilter, ImageOps
    from torchvision.transforms import functional as TF

    from pas.ssl.views import GRAY, SIGMA, SOLARIZE, apply_view, sample_view
    image, spec = _photo(200), ViewSpec(64, blur=1.0, solarize=1.0)
    row = sample_view(spec, 200, 200, random.Random(3))
    row[GRAY], row[SIGMA], row[SOLARIZE] = 1.0, 1.3, 1.0
    view = apply_view(image, spec, row, normalize=False)
    plain = list(row)
    plain[GRAY], plain[SIGMA], plain[SOLARIZE] = 0.0, 0.0, 0.0
    colour = TF.to_pil_image(apply_view(image, spec, plain, normalize=False))
    expected = ImageOps.solarize(TF.rgb_to_grayscale(colour, 3).filter(ImageFilter.GaussianBlur(1.3)), 128)
    assert view.shape == (3, 64, 64) and torch.equal(view[0], view[1]) and torch.equal(view[0], view[2])
    assert _mean_diff(view, TF.pil_to_tensor(expected)) <= 2


def test_pas_plan_adds_the_device_augmentations_gpu_time_to_the_model_or_says_it_is_not_counted(tmp_path, capsys):
    import json

    from test_plan import FIGURES, INPUT, SETTINGS, number, rows

    from pas.cli import main
    from pas.evaluate.throughput import GPUS, UTILISATION
    augment = {"task": "input", "model": "dino/device-gpu", "batch": 256, "image_size": 224, "device": "h100",
               "images_per_s": 6000.0, "machine": "NVIDIA H100", "date": "2026-12-07", "gflops_per_image": None}
    model_rate = GPUS["h100"]["tflops"] * 1e3 * UTILISATION / 112.0
    path = tmp_path / "throughput.json"
    for extra, speed in [([augment], 1 / (1 / model_rate + 1 / 6000.0)), ([], model_rate)]:
        path.write_text(json.dumps({"figures": FIGURES + INPUT + extra}))
        assert main(["plan", *SETTINGS, "--gpu", "h100", "--pool-images", "0", "--table", str(path),
                     "--cpus-per-gpu", "256"]) == 0
        out = capsys.readouterr().out
        row = rows(out)["pretrain"]
        assert row[4] == "model" and number(row[5]) == pytest.approx(speed, rel=1e-3)
        counted = "with the device augmentation's GPU time (6,000 samples/s" in out
        not_counted = "device augmentation of pretrain: GPU time not counted (no dino/device-gpu figure on h100" in out
        assert (counted, not_counted) == ((True, False) if extra else (False, True))


def test_a_loader_worker_runs_opencv_on_one_thread():
    """Each DataLoader worker limits OpenCV to one thread (it would start a pool per worker and oversubscribe).

    Run in a fresh process, as a stage is: a worker forked from a process whose OpenCV pool already ran (this test
    process, after the other tests) can hang in OpenCV, which is not fork-safe once its threads exist.
    """
    import subprocess
    import sys

    probe = """
import cv2, torch
from pas.ssl.data import make_loader, one_thread_per_worker

class Probe(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield torch.tensor(cv2.getNumThreads())

loader = torch.utils.data.DataLoader(Probe(), batch_size=None, num_workers=1, worker_init_fn=one_thread_per_worker)
print([int(t) for t in loader], make_loader(Probe(), 1, workers=1).worker_init_fn is one_thread_per_worker)
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split("\n")[0] == "[1] True"
