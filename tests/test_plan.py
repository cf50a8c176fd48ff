"""`pas plan`: per-stage cost from the throughput table, checked against the table's own figures."""
from __future__ import annotations

import copy
import importlib.util
import json
import math

import pytest
import yaml
from conftest import REPO

from pas.cli import main
from pas.core.config import ConfigError
from pas.evaluate.throughput import GPUS, UTILISATION
from pas.evaluate.throughput import rate as costs_rate

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())

FIGURES = [
    {"task": "generate", "model": "sdxl-turbo", "batch": 16, "device": "h100", "images_per_s": 40.0,
     "gflops_per_image": 4103.0, "machine": "NVIDIA H100 80GB HBM3", "date": "2026-11-01"},
    {"task": "generate", "model": "sdxl-turbo", "batch": 1, "device": "h100", "images_per_s": 10.0,
     "gflops_per_image": 4103.0, "machine": "NVIDIA H100 80GB HBM3", "date": "2026-11-01"},
    {"task": "clip_embed", "model": "ViT-L-14", "batch": 256, "device": "a100", "images_per_s": 1000.0,
     "gflops_per_image": 162.0, "machine": "NVIDIA A100", "date": "2026-10-01"},
    {"task": "pretrain", "model": "dino/vit_small_patch16_224", "batch": 64, "device": "cpu", "images_per_s": 2.0,
     "gflops_per_image": 112.0, "machine": "a CPU", "date": "2026-11-27"},
]
SETTINGS = ["-S", "size=1.2M", "-S", "models.generator=sdxl-turbo", "-S", "models.clip=ViT-L-14/laion2b_s32b_b82k",
            "-S", "pretrain.method=dino", "-S", "pretrain.backbone=vit_small_patch16_224", "-S", "pretrain.epochs=10"]


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "throughput.json"
    path.write_text(json.dumps({"figures": FIGURES}))
    return str(path)


def number(text: str) -> float:
    return float(text.replace(",", ""))


def rows(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in out.splitlines() if line and line.split()[0] in
            ("generate", "pool_index", "retrieve", "embed", "pretrain", "finetune", "total")}


def test_plan_prices_every_stage_from_the_table_and_totals_them(table, capsys):
    assert main(["plan", *SETTINGS, "--gpu", "h100", "--gpus", "8", "--pool-images", "0", "--table", table]) == 0
    out = capsys.readouterr().out
    table_rows = rows(out)
    assert set(table_rows) == {"generate", "pool_index", "retrieve", "embed", "pretrain", "finetune", "total"}
    generated = 1_200_000                                      # 1.2M x oversample 2 x (1 - real share 0.5)
    assert table_rows["generate"][1] == f"{generated:,}"
    generate_h = generated / 40.0 / 3600                       # the measured batch-16 figure, not batch 1
    assert number(table_rows["generate"][2]) == pytest.approx(generate_h, rel=1e-2)
    assert number(table_rows["generate"][3]) == pytest.approx(generate_h / 8, rel=1e-2)
    embed_rate = 1000.0 * GPUS["h100"]["tflops"] / GPUS["a100"]["tflops"]           # from a100 by peak TFLOPs
    embed_h = generated / embed_rate / 3600
    assert number(table_rows["embed"][2]) == pytest.approx(embed_h, rel=1e-2)
    pretrain_rate = GPUS["h100"]["tflops"] * 1e3 * UTILISATION / 112.0              # cpu figure unusable: FLOPs
    pretrain_h = 1_200_000 * 10 / pretrain_rate / 3600
    assert number(table_rows["pretrain"][2]) == pytest.approx(pretrain_h, rel=1e-2)
    assert number(table_rows["total"][1]) == pytest.approx(generate_h + embed_h + pretrain_h, rel=1e-2)
    assert "generate: generate sdxl-turbo on h100: measured on NVIDIA H100 80GB HBM3, 2026-11-01, batch 16" in out
    assert "extrapolated from a100 (2026-10-01) by peak TFLOPs x3.17" in out
    assert "extrapolated from 112 GFLOPs/image at 35% of peak" in out
    assert table_rows["pretrain"][-1] == "EXTRAPOLATED" and table_rows["generate"][-1] == "measured"
    assert "precomputed embeddings: no GPU work" in out


def test_a_stage_without_a_figure_is_named_not_priced(table, capsys):
    assert main(["plan", *SETTINGS, "-S", "models.generator=flux-schnell", "--gpu", "cpu", "--pool-images", "100",
                 "--table", table]) == 0
    out = capsys.readouterr().out
    assert "no figure for generate flux-schnell in the throughput table" in out
    assert "not priced: generate, pool_index, embed" in out          # on a CPU only measured CPU figures count
    assert number(rows(out)["pretrain"][2]) == pytest.approx(1_200_000 * 10 / 2.0 / 3600, rel=1e-2)


@pytest.mark.parametrize(("flags", "message"), [
    (["--gpus", "0"], "pas plan: error: --gpus 0 must be at least 1"),
    (["--gpu", "v100"], "pas plan: error: --gpu 'v100' is not a known profile; use one of h100, a100, l4, cpu"),
    (["-S", "size"], "pas plan: error: -S 'size' is refused, as dvc exp run refuses it: Error parsing override 'size'"),
    (["-S", "size=1.2Q"], "pas plan: error: size='1.2Q' is not a size"),
    (["--table", "/nonexistent/t.json"], "pas plan: error: /nonexistent/t.json not found: run `python benchmarks/"),
    (["--finetune-images", "5000"], "pas plan: error: --finetune-images '5000' must be TRAIN,TEST image counts"),
])
def test_bad_input_is_one_line_and_exit_2(flags, message, table, capsys):
    args = ["plan", *flags] if "--table" in flags else ["plan", *flags, "--table", table]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message) and len(captured.err.strip().splitlines()) == 1 and captured.out == ""


def test_the_shipped_table_has_a_figure_for_every_suite_model_with_machine_and_date():
    from pathlib import Path

    figures = json.loads((Path(__file__).parents[1] / "benchmarks" / "throughput.json").read_text())["figures"]
    needed = {("generate", "sdxl-turbo"), ("generate", "sd-1.5"), ("clip_embed", "ViT-L-14"),
              ("clip_embed", "ViT-B-32"), ("pretrain", "dino/vit_small_patch16_224"), ("pretrain", "all4one/resnet50")}
    assert needed <= {(f["task"], f["model"]) for f in figures}
    assert all(f["machine"] and f["date"] and (f["images_per_s"] or f["gflops_per_image"]) for f in figures)
    assert all(math.isfinite(f["gflops_per_image"]) for f in figures if f["gflops_per_image"])


# --- what pas plan prices is what the stages would run: recipes, budgets, their checks; tiny models not extrapolated

RECIPE = yaml.safe_load((REPO / "recipes" / "dino_vits16.yaml").read_text())["pretrain"]
SIZE = PARAMS["size"]


def pretrain_stage_error(params: dict) -> str:
    """The ConfigError stages/pretrain.py raises for these params (its body builds the config before any work)."""
    spec = importlib.util.spec_from_file_location("pretrain_stage", REPO / "stages" / "pretrain.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    with pytest.raises(ConfigError) as caught:
        stage.body(None, params, None)
    return str(caught.value)


def test_a_recipe_is_priced_as_the_pretrain_stage_applies_it(table, capsys):
    assert main(["plan", "-S", "pretrain.recipe=dino_vits16", "--pool-images", "0", "--table", table]) == 0
    out = capsys.readouterr().out
    method, backbone, epochs, batch = RECIPE["method"], RECIPE["backbone"], RECIPE["epochs"], RECIPE["batch_size"]
    assert (method, backbone) == ("dino", "vit_small_patch16_224") and epochs != PARAMS["pretrain"]["epochs"]
    seen = epochs * (SIZE // batch) * batch                  # the recipe's epochs of whole batches, not params.yaml's
    row = rows(out)["pretrain"]
    assert row[1] == f"{seen:,}"
    rate = GPUS["h100"]["tflops"] * 1e3 * UTILISATION / 112.0   # the table's dino/vit_small_patch16_224 FLOPs
    assert number(row[2]) == pytest.approx(seen / rate / 3600, rel=1e-2)
    assert f"pretrain: pretrain {method}/{backbone} on h100: extrapolated from 112 GFLOPs/image" in out
    assert (f"pretrain: {method}/{backbone} at {RECIPE['image_size']}px (recipe dino_vits16): {epochs} epoch(s) of "
            f"{SIZE} images" in out)
    not_finetune = "\n".join(line for line in out.splitlines()
                             if not line.lstrip().startswith(("finetune", "fine-tuning", "input of fine")))
    assert PARAMS["pretrain"]["backbone"] not in not_finetune       # the imagenet init's own arch may share its name
    assert f"init pas ({backbone} at " in out                        # the pas init is the recipe's backbone


@pytest.mark.parametrize(("flags", "seen"), [
    ([], 2 * (300 // 64) * 64),                                          # 2 epochs of whole batches of 64
    (["-S", "pretrain.budget=1k"], math.ceil(1000 / 64) * 64),           # whole global batches up to the budget
    (["-S", "pretrain.budget=1k", "--gpus", "3"], math.ceil(1000 / 192) * 192),   # 3 devices: a global batch of 192
    (["-S", "pretrain.budget=1.2M", "-S", "pretrain.accumulate_grad_batches=2"], math.ceil(1.2e6 / 128) * 128),
    (["-S", "pretrain.budget=1.2M", "-S", "size=1.2M"], 1_200_000),       # the budget, not size x epochs
    (["-S", "pretrain.budget=1k", "-S", "pretrain.max_steps=5"], 5 * 64),   # max_steps still caps a budget
    (["-S", "pretrain.budget=2M", "-S", "pretrain.dataset=/elsewhere/release.parquet"], 2_000_000),
])
def test_pretrain_is_counted_in_the_images_pretraining_sees(flags, seen, table, capsys):
    assert main(["plan", "-S", "size=300", "-S", "pretrain.epochs=2", "-S", "pretrain.batch_size=64", *flags,
                 "--pool-images", "0", "--table", table]) == 0
    out = capsys.readouterr().out
    assert rows(out)["pretrain"][1] == f"{seen:,}"
    if "pretrain.budget=1.2M" in flags:
        assert "budget 1.2M images = " in out


def test_an_outside_dataset_without_a_budget_is_named_not_priced(table, capsys):
    assert main(["plan", "-S", "pretrain.dataset=/elsewhere/release.parquet", "--pool-images", "0",
                 "--table", table]) == 0
    out = capsys.readouterr().out
    assert rows(out)["pretrain"][1] == "?"
    assert "pretrain.dataset='/elsewhere/release.parquet' has a size unknown here: set pretrain.budget" in out
    assert "(not priced: " in out and "pretrain" in out.split("(not priced: ")[1].split(")")[0]   # not a silent gap


def test_the_methods_own_check_runs_at_the_planned_world_size(table, capsys):
    """SwAV's queue must be a multiple of the global batch: 64 x 7 GPUs = 448 does not divide 3840."""
    flags = ["-S", "size=2k", "-S", "pretrain.method=swav", "-S", "pretrain.method_args.swav.queue_length=3840"]
    assert main(["plan", *flags, "--gpus", "6", "--table", table]) == 0            # 384 divides 3840
    capsys.readouterr()
    assert main(["plan", *flags, "--gpus", "7", "--table", table]) == 2
    assert capsys.readouterr().err == ("pas plan: error: pretrain.method_args.swav.queue_length=3840 is not allowed; "
                                       "use 0 or a multiple of the global batch (448)\n")


@pytest.mark.parametrize("setting", ["pretrain.epochs=-3", "pretrain.method=foo", "pretrain.recipe=nope",
                                     "++pretrain.epoch=3", "pretrain.budget=lots", "pretrain.budget=-5"])
def test_a_bad_pretrain_value_is_the_pretrain_stages_one_line_and_exit_2(setting, table, capsys):
    key, _, value = setting.removeprefix("++").partition("=")
    params = copy.deepcopy(PARAMS)
    params["pretrain"][key.split(".")[1]] = yaml.safe_load(value)
    said = pretrain_stage_error(params)
    assert main(["plan", "-S", setting, "--table", table]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"pas plan: error: {said}\n" and captured.out == ""


@pytest.mark.parametrize(("flags", "message"), [
    (["-S", "sise=5"], ("pas plan: error: -S 'sise=5' is refused, as dvc exp run refuses it: Could not override "
                        "'sise'. To append to your config use +sise=5")),
    (["-S", "++sise=5"], ("pas plan: error: unknown top-level key 'sise' in params.yaml with -S overrides (did you "
                          "mean size?); allowed: size, ")),
    (["-S", "pretrain=5"], "pas plan: error: pretrain=5 must be a mapping of its keys"),
    (["-S", "retrieve.download_margin=-1"],
     "pas plan: error: retrieve.download_margin=-1.0 is not allowed; use a share"),
    (["-S", "generate.output_size=0"], "pas plan: error: generate.output_size=0 is not allowed"),
    (["-S", "models.clip=./no/such/folder"], "pas plan: error: models.clip='./no/such/folder' is not tiny://..."),
    (["-S", "size=100", "--gpus", "4"], ("pas plan: error: pretrain.batch_size=64 is not allowed; use at most 25 "
                                          "(the images per device: 100 images on 4 device(s))")),
    # the sections plan does not price are checked too: the whole file at once
    (["-S", "finetune.protocols=[bogus]"], "pas plan: error: finetune.protocols=['bogus'] is not allowed"),
    (["-S", "++finetune.sise=1"], "pas plan: error: unknown key finetune.sise; allowed keys of finetune: "),
    (["-S", "finetune.recipe=nope"], "pas plan: error: finetune.recipe='nope' is not a recipe"),
    (["-S", "filter.threshold=abc"], "pas plan: error: filter.threshold='abc' must be a number"),
    (["-S", "dedup.balance=nope"], "pas plan: error: dedup.balance='nope' is not allowed"),
    (["-S", "concepts.llm.backend=nope"], "pas plan: error: concepts.llm.backend='nope' is not allowed"),
    (["-S", "evaluate.allow_mixed_arch=maybe"], "pas plan: error: evaluate.allow_mixed_arch='maybe'"),
    (["-S", "++report.sise=1"], "pas plan: error: unknown key report.sise"),
    (["-S", "++sample_data.sise=1"], "pas plan: error: unknown key sample_data.sise"),
])
def test_a_bad_param_elsewhere_is_one_line_and_exit_2(flags, message, table, capsys):
    assert main(["plan", *flags, "--table", table]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(message) and len(captured.err.strip().splitlines()) == 1 and captured.out == ""


TINY = [
    {"task": "clip_embed", "model": "tiny://clip", "batch": 256, "device": "cpu", "images_per_s": 7000.0,
     "gflops_per_image": 0.0095, "machine": "a CPU", "date": "2026-11-27"},
    {"task": "generate", "model": "tiny://sd", "batch": 16, "device": "a100", "images_per_s": 500.0,
     "gflops_per_image": 0.01, "machine": "NVIDIA A100", "date": "2026-11-27"},
]


@pytest.mark.parametrize("gpu", ["h100", "l4"])
def test_a_tiny_test_model_is_never_extrapolated_into_a_throughput(gpu, tmp_path, capsys):
    path = tmp_path / "throughput.json"
    path.write_text(json.dumps({"figures": TINY}))
    assert main(["plan", "-S", "models.clip=tiny://clip", "-S", "models.generator=tiny://sd", "--gpu", gpu,
                 "--pool-images", "100", "--table", str(path)]) == 0
    out = capsys.readouterr().out
    table_rows = rows(out)
    for stage, where in (("pool_index", "cpu"), ("embed", "cpu"), ("generate", "a100")):
        assert table_rows[stage][2] == "-" and " ".join(table_rows[stage][4:]) == \
            f"no figure (tiny test model, measured on {where} only)"
    # the finetune row's backbones are params' real architectures (tf_efficientnet_lite0), priced from their FLOPs
    rest = "\n".join(line for line in out.splitlines()
                     if not line.lstrip().startswith(("finetune", "fine-tuning", "input of fine")))
    assert "EXTRAPOLATED" not in rest and "img/s" not in rest and "GFLOPs" not in rest
    assert table_rows["total"][1:3] == table_rows["finetune"][2:4]


def test_a_tiny_test_model_is_priced_where_it_was_measured(tmp_path, capsys):
    path = tmp_path / "throughput.json"
    path.write_text(json.dumps({"figures": TINY}))
    assert main(["plan", "-S", "models.clip=tiny://clip", "--gpu", "cpu", "--pool-images", "100",
                 "--table", str(path)]) == 0
    embed = rows(capsys.readouterr().out)["embed"]
    assert embed[-1] == "measured" and number(embed[4]) == 7000.0


def test_a_small_flops_figure_is_shown_not_rounded_to_zero():
    figure = {"task": "pretrain", "model": "simclr/resnet18", "device": "cpu", "images_per_s": None,
              "gflops_per_image": 0.42, "machine": "a CPU", "date": "2026-11-27"}
    found = costs_rate([figure], "pretrain", "simclr/resnet18", "h100")
    assert found.images_per_s == pytest.approx(GPUS["h100"]["tflops"] * 1e3 * UTILISATION / 0.42)
    assert "extrapolated from 0.42 GFLOPs/image" in found.how


def test_set_values_are_applied_by_dvcs_own_code(table, capsys):
    """As `dvc exp run -S` applies them: 1e-5 is a number (a YAML 1.1 reader took it for a string), and the
    `++key=value` flags `pas recipe` prints are taken as they are."""
    from pas.core.recipes import recipe_flags

    assert main(["plan", "-S", "pretrain.weight_decay=1e-5", "-S", "finetune.protocols=[linear, knn]",
                 "--table", table]) == 0
    assert capsys.readouterr().err == ""
    flags = [part for flag in recipe_flags("dino_vits16") for part in ("-S", flag.removeprefix("-S '").rstrip("'"))]
    assert flags[1].startswith("++pretrain.")
    assert main(["plan", *flags, "--table", table]) == 0
    assert "pretrain: dino/vit_small_patch16_224 at 224px" in capsys.readouterr().out


INPUT = [{"task": "input", "model": "dino/device", "batch": 16, "image_size": 224, "device": "cpu",
          "images_per_s": 100.0, "machine": "a CPU", "date": "2026-11-28", "gflops_per_image": None},
         {"task": "input", "model": "dino/cpu", "batch": 16, "image_size": 224, "device": "cpu",
          "images_per_s": 50.0, "machine": "a CPU", "date": "2026-11-28", "gflops_per_image": None}]


@pytest.mark.parametrize("cpus, bound", [(16, "input"), (256, "model")])
def test_a_pretraining_row_runs_at_the_slower_of_the_model_and_its_input_pipeline(cpus, bound, tmp_path, capsys):
    path = tmp_path / "throughput.json"
    path.write_text(json.dumps({"figures": FIGURES + INPUT}))
    assert main(["plan", *SETTINGS, "--gpu", "h100", "--pool-images", "0", "--table", str(path),
                 "--cpus-per-gpu", str(cpus)]) == 0
    out = capsys.readouterr().out
    row = rows(out)["pretrain"]
    model_rate = GPUS["h100"]["tflops"] * 1e3 * UTILISATION / 112.0             # ~3,090 img/s from FLOPs
    speed = min(model_rate, 100.0 * cpus)                                        # the device path's CPU work
    assert row[4] == bound and number(row[5]) == pytest.approx(speed, rel=1e-3)
    assert number(row[2]) == pytest.approx(1_200_000 * 10 / speed / 3600, rel=1e-2)
    assert (f"input of pretrain (dino, device path): {100.0 * cpus:,.1f} samples/s from 100.0 samples/s per core "
            f"x {cpus} cores (device path at 224 px") in out


def test_a_cpu_plan_prices_the_cpu_path(tmp_path, capsys):
    path = tmp_path / "throughput.json"
    path.write_text(json.dumps({"figures": FIGURES + INPUT}))
    assert main(["plan", *SETTINGS, "--gpu", "cpu", "--pool-images", "0", "--table", str(path),
                 "--cpus-per-gpu", "1"]) == 0
    row = rows(capsys.readouterr().out)["pretrain"]
    assert row[4] == "model" and number(row[5]) == 2.0                          # 2 img/s model < 50 img/s input
    assert main(["plan", *SETTINGS, "--gpu", "h100", "--cpus-per-gpu", "0", "--table", str(path)]) == 2
    assert "--cpus-per-gpu 0 must be at least 1" in capsys.readouterr().err


# --- the finetune row: the images the finetune stage runs through its backbones, priced like the pretraining row

ARCH = PARAMS["pretrain"]["backbone"]          # every default init's architecture (pas, random, imagenet)
FINETUNE = [{"task": "finetune_features", "model": ARCH, "batch": 256, "image_size": 64, "device": "h100",
             "images_per_s": 1000.0, "machine": "NVIDIA H100", "date": "2026-12-07", "gflops_per_image": None},
            {"task": "finetune_train", "model": ARCH, "batch": 64, "image_size": 64, "device": "h100",
             "images_per_s": 300.0, "machine": "NVIDIA H100", "date": "2026-12-07", "gflops_per_image": None},
            {"task": "input", "model": "finetune_pad_crop/cpu", "batch": 64, "image_size": 64, "device": "cpu",
             "images_per_s": 10.0, "machine": "a CPU", "date": "2026-12-07", "gflops_per_image": None}]


def finetune_images(train: int, test: int, flags: list[str]) -> int:
    """Images per init as pas.transfer.finetune runs them: features of train + test, then per full run the capped
    train subset's whole batches of 64 for each epoch plus the test predictions."""
    epochs = 3 if "finetune.full.epochs=3" in flags else 1
    cap = train if "finetune.full.max_train_images=0" in flags else min(train, 200)
    runs = 0 if "finetune.protocols=[linear, knn]" in flags else 2 if "finetune.elfis.protocols=[linear, full]" in \
        flags else 1
    return train + test + runs * (epochs * min(cap, max(1, cap // 64) * 64) + test)


@pytest.mark.parametrize("flags", [[], ["-S", "finetune.full.epochs=3"], ["-S", "finetune.full.max_train_images=0"],
                                   ["-S", "finetune.protocols=[linear, knn]"],
                                   ["-S", "finetune.elfis.protocols=[linear, full]"]])
def test_the_finetune_row_counts_the_images_the_stage_runs(flags, tmp_path, capsys):
    path = tmp_path / "throughput.json"
    path.write_text(json.dumps({"figures": FIGURES + FINETUNE}))
    inits = len(PARAMS["finetune"]["inits"])
    train, test = PARAMS["sample_data"]["downstream_train"], PARAMS["sample_data"]["downstream_test"]
    assert main(["plan", *flags, "--pool-images", "0", "--table", str(path)]) == 0        # sample_data's one set
    assert rows(capsys.readouterr().out)["finetune"][1] == f"{inits * finetune_images(train, test, flags):,}"
    sets = ["--finetune-images", "50000,10000", "--finetune-images", "100,20"]           # one per dataset
    assert main(["plan", *flags, *sets, "--pool-images", "0", "--table", str(path)]) == 0
    seen = inits * (finetune_images(50000, 10000, flags) + finetune_images(100, 20, flags))
    assert rows(capsys.readouterr().out)["finetune"][1] == f"{seen:,}"


@pytest.mark.parametrize("cpus, bound", [(16, "input"), (256, "model")])
def test_the_finetune_row_runs_at_the_slower_of_the_model_and_its_augmentation(cpus, bound, tmp_path, capsys):
    path = tmp_path / "throughput.json"
    path.write_text(json.dumps({"figures": FIGURES + FINETUNE}))
    assert main(["plan", "--gpus", "4", "--pool-images", "0", "--table", str(path), "--cpus-per-gpu", str(cpus)]) == 0
    out = capsys.readouterr().out
    row, inits = rows(out)["finetune"], len(PARAMS["finetune"]["inits"])
    train = min(10.0 * cpus, 300.0)                     # pad_crop on the cores, or the measured training figure
    seconds = inits * ((1000 + 500 + 500) / 1000.0 + 192 / train)
    assert row[4] == bound and row[-1] == "measured"
    assert number(row[2]) == pytest.approx(seconds / 3600, rel=1e-2)
    assert number(row[3]) == number(row[2])             # the finetune stage runs on one device, not on the 4
    assert (f"input of finetune (full fine-tuning's pad_crop + flip on decoded uint8 images, DataLoader workers on "
            f"the CPU): {10.0 * cpus:,.1f} samples/s from 10.0 samples/s per core x {cpus} cores") in out


def test_unmeasured_finetune_is_extrapolated_from_the_backbones_flops_and_says_its_input_is_not_measured(table,
                                                                                                         capsys):
    assert main(["plan", "-S", "finetune.image_size=224", "--pool-images", "0", "--table", table]) == 0
    out = capsys.readouterr().out
    row = rows(out)["finetune"]
    assert row[4] == "model" and " ".join(row[6:]) == "img/s, EXTRAPOLATED (input not measured)"
    assert "no finetune_random_resized_crop/cpu input figure in the table" in out
    assert f"init pas ({ARCH} at 224px): forward " in out
    assert "(forward FLOPs counted on the meta device at 224px); training " in out
    assert "3 x the forward pass (no finetune_train figure)" in out
    assert main(["plan", "--gpu", "cpu", "--pool-images", "0", "--table", table]) == 0     # a CPU: measured only
    assert f"no figure for finetune_features {ARCH} in the throughput table" in capsys.readouterr().out
