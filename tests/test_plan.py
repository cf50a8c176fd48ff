"""`pas plan`: per-stage cost from the throughput table, checked against the table's own figures."""
from __future__ import annotations

import json
import math

import pytest

from pas.cli import main
from pas.sources.costs import GPUS, UTILISATION

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
            ("generate", "pool_index", "retrieve", "embed", "pretrain", "total")}


def test_plan_prices_every_stage_from_the_table_and_totals_them(table, capsys):
    assert main(["plan", *SETTINGS, "--gpu", "h100", "--gpus", "8", "--pool-images", "0", "--table", table]) == 0
    out = capsys.readouterr().out
    table_rows = rows(out)
    assert set(table_rows) == {"generate", "pool_index", "retrieve", "embed", "pretrain", "total"}
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
    (["-S", "size"], "pas plan: error: -S 'size' is not key=value; use e.g. -S size=1.2M"),
    (["-S", "size=1.2Q"], "pas plan: error: size='1.2Q' is not a size"),
    (["--table", "/nonexistent/t.json"], "pas plan: error: /nonexistent/t.json not found: run `python benchmarks/"),
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
