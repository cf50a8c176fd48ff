"""ImageFolder and CSV datasets, held-out splits, discovery, and data problems reported without a crash."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from pas.data.downstream import (
    DownstreamDataError,
    detect_format,
    find_datasets,
    iter_image_batches,
    load_dataset,
    load_split,
    stratified_split,
)
from pas.evaluate.eval_md import render_eval_md
from pas.evaluate.metrics import EvaluateConfig, evaluate
from pas.transfer.config import ElfisConfig, FinetuneConfig, InitSpec, LinearConfig
from pas.transfer.finetune import run_finetune
from pas.transfer.probe import torch_threads

COLOURS = {"blue": (30, 30, 220), "green": (30, 200, 30), "red": (220, 30, 30)}


def _image(path, colour, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 50, size=(20, 20, 3), dtype=np.uint8)
    pixels[4:16, 4:16] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def imagefolder(root, per_class=(4, 2), empty: str | None = None, broken: bool = False):
    """root/{train,test}/<colour>/<i>.png; `empty` leaves that train class folder empty; `broken` adds a bad file."""
    for split, count in zip(("train", "test"), per_class):
        for c, (name, colour) in enumerate(COLOURS.items()):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            if split == "train" and name == empty:
                continue
            for i in range(count):
                _image(root / split / name / f"{i}.png", colour, seed=100 * c + i + (50 if split == "test" else 0))
    if broken:
        (root / "train" / "red" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def csv_dataset(root, rows: dict[str, list[str]]):
    """Images under root/img/<colour>_<i>.png and one CSV per split from the given lines."""
    for c, (name, colour) in enumerate(COLOURS.items()):
        for i in range(4):
            _image(root / "img" / f"{name}_{i}.png", colour, seed=10 * c + i)
    for split, lines in rows.items():
        (root / f"{split}.csv").write_text("path,label\n" + "\n".join(lines) + "\n")
    return root


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads made these steps ~9x slower."""
    with torch_threads(1):
        yield


def test_imagefolder_lists_classes_labels_and_files(tmp_path):
    data = load_dataset(imagefolder(tmp_path / "colours"))
    assert data.format == "imagefolder" and data.class_names == ["blue", "green", "red"] and not data.problems
    train = data.splits["train"]
    assert len(train.labels) == 12 and np.bincount(train.labels).tolist() == [4, 4, 4]
    images, labels, names = load_split(train)
    assert len(images) == 12 and names == data.class_names
    red = np.asarray(images[int(np.flatnonzero(labels == 2)[0])])
    assert tuple(red[10, 10]) == COLOURS["red"]  # the label matches the folder the image came from


def test_empty_class_folder_and_unreadable_image_are_reported_not_fatal(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="pas"):
        data = load_dataset(imagefolder(tmp_path / "colours", empty="green", broken=True))
    assert data.class_names == ["blue", "green", "red"]  # the class stays: test still has green images
    assert any("train/green: empty class folder" in p for p in data.problems)
    assert "empty class folder" in caplog.text
    problems: list[str] = []
    rows = np.concatenate([r for r, _ in iter_image_batches(data.splits["train"], rows_per_batch=3,
                                                             problems=problems)])
    assert len(data.splits["train"].labels) == 9 and len(rows) == 8
    assert len(problems) == 1 and "broken.png: unreadable image" in problems[0]


def test_csv_reports_missing_label_missing_file_and_unseen_test_label(tmp_path):
    root = csv_dataset(tmp_path / "c", {
        "train": ["img/red_0.png,red", "img/red_1.png,", "img/blue_0.png,blue", "img/nope.png,blue",
                  "img/blue_1.png,blue", "img/red_2.png,red"],
        "test": ["img/red_3.png,red", "img/green_0.png,green", "img/blue_2.png,blue"],
    })
    data = load_dataset(root)
    assert data.format == "csv" and data.class_names == ["blue", "green", "red"]
    text = "\n".join(data.problems)
    assert "train.csv line 3: label missing for img/red_1.png" in text
    assert "train.csv line 5: file img/nope.png not found" in text
    assert "test.csv: label(s) green do not occur in train.csv" in text
    assert data.splits["train"].labels.tolist() == [2, 0, 0, 2] and data.splits["test"].labels.tolist() == [2, 1, 0]


def test_csv_without_the_columns_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(DownstreamDataError, match=r"train.csv has columns file, class; need a header with path, label"):
        load_dataset(tmp_path / "d")


def test_numeric_csv_labels_sort_numerically(tmp_path):
    root = csv_dataset(tmp_path / "n", {"train": [f"img/red_{i}.png,{label}" for i, label in enumerate((10, 9, 2))]})
    assert load_dataset(root).class_names == ["2", "9", "10"]


def test_missing_test_split_is_made_deterministically_and_stratified(tmp_path):
    root = imagefolder(tmp_path / "only_train", per_class=(5, 0))
    for name in COLOURS:
        for path in (root / "test" / name).iterdir():
            path.unlink()
        (root / "test" / name).rmdir()
    (root / "test").rmdir()
    first, second = load_dataset(root, test_fraction=0.4, seed=3), load_dataset(root, test_fraction=0.4, seed=3)
    assert np.bincount(first.splits["test"].labels).tolist() == [2, 2, 2]
    assert np.bincount(first.splits["train"].labels).tolist() == [3, 3, 3]
    assert first.splits["test"].files == second.splits["test"].files
    assert not set(first.splits["test"].files) & set(first.splits["train"].files)
    train, test = stratified_split(np.array([0, 0, 1]), 0.5, seed=0)
    assert 2 in train  # a class never loses its only training item


def test_find_datasets_discovers_every_format_or_the_named_ones(tmp_path):
    imagefolder(tmp_path / "root" / "folder_set")
    csv_dataset(tmp_path / "root" / "csv_set", {"train": ["img/red_0.png,red", "img/blue_0.png,blue"],
                                                 "val": ["img/red_1.png,red"]})
    (tmp_path / "root" / "not_a_dataset").mkdir()
    found = find_datasets(tmp_path / "root")
    assert {n: d.format for n, d in found.items()} == {"csv_set": "csv", "folder_set": "imagefolder"}
    assert found["csv_set"].splits["test"].labels.tolist() == [1]  # val stands in for test
    assert list(find_datasets(tmp_path / "root", ("folder_set",))) == ["folder_set"]
    assert detect_format(tmp_path / "root" / "not_a_dataset") is None
    with pytest.raises(DownstreamDataError, match="'missing'"):
        find_datasets(tmp_path / "root", ("missing",))
    with pytest.raises(DownstreamDataError, match="holds no downstream dataset"):
        find_datasets(tmp_path / "root" / "not_a_dataset")


def test_run_finetune_goes_through_datasets_with_problems(tmp_path, monkeypatch):
    """A broken image and an empty class are reported; a dataset with no readable test image is skipped."""
    monkeypatch.setenv("PAS_DEVICE", "cpu")
    root = imagefolder(tmp_path / "colours", per_class=(4, 2), empty="green", broken=True)
    dead = imagefolder(tmp_path / "dead", per_class=(2, 1))
    for path in (dead / "test").rglob("*.png"):
        path.write_bytes(b"garbage")
    cfg = FinetuneConfig(image_size=16, protocols=("linear", "knn"), linear=LinearConfig(epochs=5),
                         elfis=ElfisConfig(protocols=()), inits=(InitSpec("random", "resnet10t", "random"),))
    metrics = run_finetune({"dead": dead, "colours": root}, "resnet10t", None, cfg, tmp_path / "out", seed=0)
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    entry = index["datasets"]["colours"]
    assert metrics["colours"]["problems"] == 2 and len(entry["problems"]) == 2
    assert entry["train"] == {"items": 9, "images": 8} and entry["test"]["images"] == 6
    assert "no readable image in its test split" in index["datasets"]["dead"]["skipped"]
    assert metrics["dead"]["skipped"] == 1 and len(index["datasets"]["dead"]["problems"]) == 4  # 3 images + the skip
    results = evaluate(tmp_path / "out", EvaluateConfig(reference="random", confusion=()), tmp_path / "plots")
    assert set(results) == {"colours", "summary"} and 0 <= results["colours"]["random"]["linear"]["top1"] <= 1
    assert "## dead: skipped" in render_eval_md(results, index, "random")
