"""`pas plan`: what a run will cost before it starts, per stage and in total, on a chosen GPU and count.

Per-image costs are the rates of pas.evaluate.throughput (benchmarks/throughput.json): each figure names its
task, model, settings, device, machine and date, and is measured there or extrapolated; the table printed says
which, and how; a tiny test model (tiny://) is priced only where it was measured. A training row runs at the slower
of the model's rate and its input pipeline's (the per-core figures of benchmarks/input_pipeline.py times
--cpus-per-gpu cores; on a GPU the device path, whose CPU work is what the cores do), and says which bounds it. The params are checked as the
stages check them, recipes applied, and pretraining is counted in the images it sees (epochs, or pretrain.budget)
as pas.ssl.pretrain counts them; fine-tuning in the images its backbones process per downstream dataset and init
(feature passes, full fine-tuning's steps and predictions) as pas.transfer.finetune runs them.
"""
from __future__ import annotations

import math
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pas.core.config import ConfigError, PasError, TopLevel, build, check_keys, load_params, read_yaml12, top_level
from pas.evaluate.throughput import (
    DEFAULT_TABLE,
    DEVICES,
    GPUS,
    clip_arch,
    Rate,
    clip_dim,
    generator_model,
    input_rate,
    is_tiny,
    augment_rate,
    load_table,
    no_figure,
    rate,
)
from pas.sources.plan import candidate_counts
from pas.sources.pool_sources import IMAGE_SUFFIXES

if TYPE_CHECKING:
    from pas.models.registry import ModelsConfig
    from pas.sources.generate import GenerateConfig
    from pas.sources.pool_config import PoolIndexConfig
    from pas.sources.retrieve import RetrieveConfig
    from pas.ssl.pretrain import PretrainConfig
    from pas.transfer.config import FinetuneConfig

JPEG_BYTES_PER_PIXEL = 0.25  # a q90 JPEG of a photo: about 2 bits a pixel (an estimate, stated in the output)


def params_with_overrides(path: Path, assignments: Sequence[str]) -> dict[str, Any]:
    """The params file with `-S` overrides applied by DVC's own code, as `dvc exp run -S` applies them (Hydra's
    grammar: `key=value` for a key the file has, `++key=value` to add one, YAML 1.2 values), to a copy."""
    params = load_params(path)
    if not assignments:
        return params
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "params.yaml"
        shutil.copyfile(path, copy)
        for assignment in assignments:   # one at a time, so a refusal names its own -S
            try:
                apply_overrides(copy, [assignment])
            except InvalidArgumentError as err:
                why = " ".join(str(err.__cause__ or err).split())
                raise ConfigError(f"-S {assignment!r} is refused, as dvc exp run refuses it: {why}") from err
        return read_yaml12(copy.read_text()) or {}


@dataclass(frozen=True)
class Settings:
    """The params sections pas plan prices, each checked as its stage checks it."""

    top: TopLevel
    models: ModelsConfig
    generate: GenerateConfig
    pool_index: PoolIndexConfig
    retrieve: RetrieveConfig
    pretrain: PretrainConfig   # with its recipe applied, as stages/pretrain.py applies it
    finetune: FinetuneConfig   # with its recipe applied, as stages/finetune.py applies it
    downstream: tuple[tuple[int, int], ...]   # (train, test) images per downstream dataset: sample_data's one set


def _section(params: dict[str, Any], name: str) -> dict[str, Any]:
    value = params.get(name)
    if value is not None and not isinstance(value, dict):
        raise ConfigError(f"{name}={value!r} must be a mapping of its keys (a section of params.yaml)")
    return value or {}


def checked(params: dict[str, Any], source: str = "params.yaml") -> Settings:
    """The sections pas plan reads, through the stages' own checks: an unknown top-level key, an unknown section
    key, a bad value or recipe is the ConfigError the stage would raise."""
    from pas.core.recipes import with_recipe
    from pas.models.registry import ModelsConfig, check_names
    from pas.sources.generate import GenerateConfig
    from pas.sources.pool_config import PoolIndexConfig
    from pas.sources.retrieve import RetrieveConfig
    from pas.ssl.pretrain import PretrainConfig

    check_keys(params, source)
    top = top_level(params)
    models = build(ModelsConfig, _section(params, "models"), "models")
    check_names(models)
    generate = build(GenerateConfig, _section(params, "generate"), "generate")
    pool_index = build(PoolIndexConfig, _section(params, "pool_index"), "pool_index")
    retrieve = build(RetrieveConfig, _section(params, "retrieve"), "retrieve")
    _section(params, "pretrain")   # a mapping, before with_recipe copies it
    pretrain = build(PretrainConfig, with_recipe(params, "pretrain"), "pretrain")
    check_unpriced_sections(params)
    from pas.data.sample_data import SampleDataConfig
    from pas.transfer.config import finetune_config

    sample = build(SampleDataConfig, _section(params, "sample_data"), "sample_data")
    finetune = finetune_config(with_recipe(params, "finetune"))
    return Settings(top, models, generate, pool_index, retrieve, pretrain, finetune,
                    ((sample.downstream_train, sample.downstream_test),))


def check_unpriced_sections(params: dict[str, Any]) -> None:
    """The sections plan does not price, checked as their stages check them: the whole file is checked at once."""
    from pas.concepts.build import ConceptsConfig
    from pas.core.recipes import with_recipe
    from pas.curation.dedup import DedupConfig
    from pas.curation.filter import FilterConfig
    from pas.curation.report import ReportConfig
    from pas.data.sample_data import SampleDataConfig
    from pas.evaluate.metrics import EvaluateConfig
    from pas.transfer.config import finetune_config

    for cls, name in ((SampleDataConfig, "sample_data"), (ConceptsConfig, "concepts"), (FilterConfig, "filter"),
                      (DedupConfig, "dedup"), (ReportConfig, "report"), (EvaluateConfig, "evaluate")):
        build(cls, _section(params, name), name)
    _section(params, "finetune")
    finetune_config(with_recipe(params, "finetune"))


def pretrain_work(cfg: PretrainConfig, size: int, gpus: int, generated_share: float = 1.0) -> dict[str, Any]:
    """The images pretraining sees, counted as pas.ssl.pretrain counts them: whole batches per device (one loader
    worker: more workers drop at most a batch each per epoch), whole optimizer steps, then training_length.
    StableRep's items are groups of m views (pas.ssl.groups: m generated images of a prompt, or m views of any other
    image, `generated_share` of the curated set being generated): priced as m / 2 SimCLR samples of 2 views each."""
    from pas.ssl.pretrain import epoch_steps, heldout_count, training_length

    global_batch, args = cfg.batch_size * cfg.accumulate_grad_batches * gpus, cfg.args()
    # the method's own check at this world size, as pretraining runs it (e.g. SwAV's queue: a multiple of the batch)
    args.check_run(cfg.image_size, cfg.batch_size * gpus, f"pretrain.method_args.{cfg.method}")
    what = f"{cfg.method}/{cfg.backbone} at {cfg.image_size}px" + (f" (recipe {cfg.recipe})" if cfg.recipe else "")
    priced, pairs, unit = cfg.method, 1.0, "images"   # the throughput table's method, its samples per item
    if group := args.group_views:
        priced, pairs, unit = "simclr", group / 2, "groups"
        what += f", groups of {group} views priced as {pairs:g} SimCLR samples"
    work = {"stage": "pretrain", "task": "pretrain", "model": f"{priced}/{cfg.backbone}",
            "input": {"method": priced, "image_size": cfg.image_size}}
    if cfg.dataset == "curated":
        images = size - heldout_count(args, size)
        if group:   # a group per m generated images (prompt boundaries ignored), one per other
            generated = round(images * generated_share)
            images = -(-generated // group) + images - generated
        steps, epochs = training_length(cfg, epoch_steps(cfg, images, gpus), global_batch)
        passes = f"{epochs:,} epoch(s) of {images:,} {unit}"
    elif cfg.images_budget:
        steps, _ = training_length(cfg, 1, global_batch)   # a budget's steps do not depend on the dataset's size
        passes = ""
    else:
        return {**work, "images": None, "detail": what,
                "note": f"pretrain.dataset={cfg.dataset!r} has a size unknown here: set pretrain.budget to price it"}
    batches = f"{steps:,} steps x {global_batch:,} {unit}/step"
    if steps == cfg.max_steps:
        batches += " (pretrain.max_steps)"
    if cfg.images_budget:
        source = "" if cfg.dataset == "curated" else f" of {cfg.dataset}"
        length = f"budget {cfg.budget} images{source} = {batches}" + (f" ({passes})" if passes else "")
    else:
        length = f"{passes} = {batches}"
    return {**work, "images": round(steps * global_batch * pairs), "detail": f"{what}: {length}"}


def full_train_images(train: int, cfg: Any) -> int:
    """Images full fine-tuning trains on for one dataset's `train` images, counted as pas.transfer.fulltune counts
    them: the stratified subset of full.max_train_images (about that many: each class keeps its rounded share), then
    per epoch whole batches of full.batch_size (one batch of all of them when fewer)."""
    picked = train if cfg.max_train_images <= 0 else min(train, cfg.max_train_images)
    steps = max(1, picked // cfg.batch_size)            # finetune_full drops the last partial batch
    return cfg.epochs * min(picked, steps * cfg.batch_size)


def finetune_work(cfg: FinetuneConfig, backbone: str, downstream: Sequence[tuple[int, int]], source: str
                  ) -> dict[str, Any]:
    """The images the finetune stage runs through its backbones, per init, as pas.transfer.finetune runs them: one
    feature pass over train + test per (dataset, init); with `full` among the protocols, full.epochs of the
    (capped) train images as training steps and one prediction pass over test, twice when ELFIS extends `full`.
    The linear, kNN and few-shot protocols train on the features alone (no backbone) and are not counted."""
    from pas.transfer.config import resolve_arch

    runs = ("full" in cfg.protocols) * (1 + ("full" in cfg.elfis.protocols))
    parts = []
    for spec in cfg.inits:
        arch = resolve_arch(spec, backbone)
        features = sum(train + test for train, test in downstream)
        training = runs * sum(full_train_images(train, cfg.full) for train, _ in downstream)
        predict = runs * sum(test for _, test in downstream)
        parts.append({"init": spec.name, "arch": arch, "timm_eval": spec.weights == "timm",
                      "forward": features + predict, "train": training})
    kind = cfg.full.augmentation(cfg.image_size)
    sets = ", ".join(f"{train:,}+{test:,}" for train, test in downstream)
    full = (f"full: {cfg.full.epochs} epoch(s) x train" + (f" capped at {cfg.full.max_train_images:,}"
            if cfg.full.max_train_images > 0 else "") + f" x {runs} run(s), {kind} + flip in DataLoader workers"
            if runs else "no full fine-tuning (protocols without full): features only")
    detail = (f"{len(cfg.inits)} init(s) x {len(downstream)} dataset(s) of train+test {sets} ({source}) at "
              f"{cfg.image_size}px: features of train+test; {full}; on one device")
    return {"stage": "finetune", "task": "finetune", "model": None, "images": sum(p["forward"] + p["train"]
            for p in parts), "parts": parts, "image_size": cfg.image_size, "augment": kind if runs else None,
            "detail": detail}


def stage_work(settings: Settings, pool_images: int | None, gpus: int = 1,
               downstream: Sequence[tuple[int, int]] | None = None) -> list[dict[str, Any]]:
    """Per stage: images processed and the (task, model) whose rate prices them, from the params alone
    (`downstream`: (train, test) images per downstream dataset; default sample_data's offline set)."""
    top = settings.top
    counts = candidate_counts(top.size, top.oversample, top.mix)
    clip = clip_arch(settings.models.clip)
    downloads = math.ceil(counts["retrieved"] * (1 + settings.retrieve.download_margin))
    pool_note = {0: "precomputed embeddings: no GPU work", None: "pool size unknown: pass --pool-images N"}
    return [
        {"stage": "generate", "images": counts["generated"], "task": "generate",
         "model": generator_model(settings.models.generator)},
        {"stage": "pool_index", "images": pool_images, "task": "clip_embed", "model": clip,
         "note": pool_note.get(pool_images)},
        {"stage": "retrieve", "images": downloads, "task": None, "model": None,
         "note": "downloads only the hits (network-bound, no GPU)"},
        {"stage": "embed", "images": counts["generated"], "task": "clip_embed", "model": clip,
         "note": "retrieved images reuse their pool vectors"},
        pretrain_work(settings.pretrain, top.size, gpus, top.mix.generated / (top.mix.generated + top.mix.retrieved)),
        finetune_work(settings.finetune, settings.pretrain.backbone, downstream or settings.downstream,
                      "--finetune-images" if downstream else "sample_data.downstream_train/_test, the offline "
                      "default's one dataset: --finetune-images TRAIN,TEST per dataset for others"),
    ]


def disk_gb(settings: Settings, pool_images: int | None) -> dict[str, float]:
    """Estimated disk: image shards (JPEG), CLIP embeddings (float16), the pool's chunks + index."""
    counts = candidate_counts(settings.top.size, settings.top.oversample, settings.top.mix)
    side = settings.generate.output_size
    dim = clip_dim(clip_arch(settings.models.clip))
    shards = (counts["generated"] + counts["retrieved"]) * side * side * JPEG_BYTES_PER_PIXEL
    embeddings = (counts["generated"] + counts["retrieved"]) * dim * 2
    pool = (pool_images or 0) * (dim * 2 + dim + 8)
    return {"shards": shards / 1e9, "embeddings": embeddings / 1e9, "pool_index": pool / 1e9}


def pool_size(source: str) -> int | None:
    """Images pool_index would embed: 0 for a pool of precomputed embeddings, the files of a local folder (by name,
    nothing decoded), None when the pool is not here."""
    from pas.sources.embedding_pool import is_embedding_pool

    path = Path(source)
    if not path.exists():
        return None
    if is_embedding_pool(path):
        return 0
    return sum(1 for f in (path.rglob("*") if path.is_dir() else [path]) if f.suffix.lower() in IMAGE_SUFFIXES)


def feed_rate(figures: list[dict[str, Any]], work: dict[str, Any], device: str, cpus: int
              ) -> tuple[Rate | None, str]:
    """(samples/s the input pipeline of a training row delivers to one device from `cpus` cores, its path): the
    device path on a GPU (its CPU work bounds the cores), the CPU path on a CPU."""
    path = "device" if device in GPUS else "cpu"
    core = input_rate(figures, work["input"]["method"], path, work["input"]["image_size"])
    if core is None:
        return None, path
    return Rate(core.images_per_s * cpus, f"{core.images_per_s:,.1f} samples/s per core x {cpus} cores ({core.how})",
                core.measured), path


def with_augment(model: Rate, augment: Rate | None) -> Rate:
    """The model's rate with the device path's GPU time per sample added (the same GPU does both), or as it is
    when that time was not measured."""
    if augment is None:
        return model
    both = 1 / (1 / model.images_per_s + 1 / augment.images_per_s)
    return Rate(both, f"{model.how}; with the device augmentation's GPU time ({augment.images_per_s:,.0f} "
                      f"samples/s, {augment.how})", model.measured and augment.measured)


def backbone_gflops(arch: str, size: int, timm_eval: bool) -> tuple[float | None, int, str]:
    """(forward GFLOPs per image of the headless timm backbone, the side it sees, why not counted): counted with
    torch's FLOP counter on the meta device (no weights, no memory), as benchmarks/throughput.py counts its models;
    a `weights: timm` init sees timm's evaluation size (its pretrained cfg), as pas.transfer.inits feeds it."""
    import timm
    import torch
    from timm.data import resolve_data_config
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with torch.device("meta"):
            net = timm.create_model(arch, num_classes=0, pretrained=False)
            if timm_eval:
                size = int(resolve_data_config(model=net)["input_size"][-1])
            if hasattr(net, "set_input_size"):   # ViTs: position embeddings at this side, as features.prepare does
                net.set_input_size(img_size=size)
            with FlopCounterMode(display=False) as counter:
                net(torch.zeros(1, 3, size, size))
    except Exception as err:   # noqa: BLE001 - an arch timm cannot build here is named in the row, not a crash
        return None, size, f"FLOPs of {arch} not counted: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
    return counter.get_total_flops() / 1e9, size, ""


def finetune_rates(figures: list[dict[str, Any]], arch: str, size: int, timm_eval: bool, device: str
                   ) -> tuple[Rate | None, Rate | None, int, str]:
    """(forward rate, training rate, side, why unpriced) of one init's backbone: the table's finetune_features /
    finetune_train figures at that side (measured or extrapolated, as `rate` finds them), else the forward FLOPs
    counted on the meta device at UTILISATION; training without its own figure costs 3 forward passes (forward +
    backward), said so."""
    if timm_eval:
        _, size, _ = backbone_gflops(arch, size, timm_eval) if not is_tiny(arch) else (None, size, "")
    mine = [f for f in figures if f.get("image_size") in (None, size)]
    forward, train = rate(mine, "finetune_features", arch, device), rate(mine, "finetune_train", arch, device)
    why = ""
    if forward is None and device in GPUS and not is_tiny(arch):
        gflops, size, why = backbone_gflops(arch, size, timm_eval)
        if gflops:
            counted = [{"task": "finetune_features", "model": arch, "device": "meta", "gflops_per_image": gflops}]
            found = rate(counted, "finetune_features", arch, device)
            forward = Rate(found.images_per_s, f"{found.how} (forward FLOPs counted on the meta device at {size}px)",
                           False)
    if forward is None:
        return None, None, size, why or no_figure(figures, "finetune_features", arch)
    if train is None:
        train = Rate(forward.images_per_s / 3, f"3 x the forward pass (no finetune_train figure): {forward.how}", False)
    return forward, train, size, ""


def price_finetune(work: dict[str, Any], figures: list[dict[str, Any]], device: str, cpus: int) -> dict[str, Any]:
    """The finetune row: per init, its forward passes at the backbone's forward rate and its training steps at the
    slower of the training rate and full fine-tuning's augmentation on `cpus` cores (DataLoader workers, the CPU on
    any device: a `finetune_<augment>/cpu` input figure), on one device; which bounds it."""
    feed = None
    if work["augment"]:
        core = input_rate(figures, f"finetune_{work['augment']}", "cpu", work["image_size"])
        if core is not None:
            feed = Rate(core.images_per_s * cpus, f"{core.images_per_s:,.1f} samples/s per core x {cpus} cores "
                                                  f"({core.how})", core.measured)
    row = {"note": None, **work, "device_hours": None, "wall_hours": None, "rate": None, "bound": None,
           "feed": feed, "feed_path": "cpu"}
    seconds, measured, bounds, hows = 0.0, True, set(), []
    for part in work["parts"]:
        forward, train, size, why = finetune_rates(figures, part["arch"], work["image_size"], part["timm_eval"],
                                                   device)
        if forward is None:
            row["note"] = f"init {part['init']}: {why}"
            return row
        bound = "input" if part["train"] and feed is not None and feed.images_per_s < train.images_per_s else "model"
        step = feed if bound == "input" else train
        seconds += part["forward"] / forward.images_per_s + part["train"] / step.images_per_s
        measured &= forward.measured and (step.measured or not part["train"])
        bounds.add(bound if part["train"] else "model")
        hows.append(f"{part['init']} ({part['arch']} at {size}px): forward {forward.images_per_s:,.1f} img/s, "
                    f"{forward.how}" + (f"; training {train.images_per_s:,.1f} img/s, {train.how}"
                                        if part["train"] else ""))
    hours = seconds / 3600
    speed = work["images"] / seconds if seconds else 0.0
    row.update(device_hours=hours, wall_hours=hours, speed=speed, bound="input" if "input" in bounds else "model",
               rate=Rate(speed, "; ".join(hows), measured), hows=hows)
    return row


def plan(settings: Settings, figures: list[dict[str, Any]], device: str, gpus: int,
         pool_images: int | None, cpus_per_gpu: int = 16,
         downstream: Sequence[tuple[int, int]] | None = None) -> dict[str, Any]:
    """Per-stage images, GPU-hours (device-hours on a CPU), wall hours on `gpus` devices, the figure used and, for a
    training row, whether the model or the input pipeline on `cpus_per_gpu` cores bounds it (`downstream`: (train,
    test) images per downstream dataset for the finetune row; default sample_data's)."""
    rows = []
    for work in stage_work(settings, pool_images, gpus, downstream):
        if work["stage"] == "finetune":
            rows.append(price_finetune(work, figures, device, cpus_per_gpu))
            continue
        row = {"note": None, **work, "device_hours": None, "wall_hours": None, "rate": None, "bound": None}
        if work["task"] and work["images"]:
            found = rate(figures, work["task"], work["model"], device)
            if found is not None:
                row["bound"] = "model"
                if "input" in work:
                    feed, path = feed_rate(figures, work, device, cpus_per_gpu)
                    row.update(feed=feed, feed_path=path)
                    if path == "device":   # the augmentation kernels run on the training GPU: their time adds up
                        row["augment"] = augment_rate(figures, work["input"]["method"], device,
                                                      work["input"]["image_size"])
                        found = with_augment(found, row["augment"])
                    if feed is not None and feed.images_per_s < found.images_per_s:
                        row["bound"] = "input"
                speed = found.images_per_s if row["bound"] == "model" else row["feed"].images_per_s
                hours = work["images"] / speed / 3600
                row.update(device_hours=hours, wall_hours=hours / gpus, rate=found, speed=speed)
            else:
                row["note"] = no_figure(figures, work["task"], work["model"])
        rows.append(row)
    priced = [r for r in rows if r["device_hours"] is not None]
    return {"rows": rows, "device_hours": sum(r["device_hours"] for r in priced) if priced else None,
            "wall_hours": sum(r["wall_hours"] for r in priced) if priced else None,
            "disk_gb": disk_gb(settings, pool_images),
            "unpriced": [r["stage"] for r in rows if r["task"] and r["images"] != 0 and r["device_hours"] is None]}


def _hours(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}" if value >= 1 else f"{value:.3g}"


def finetune_figures(row: dict[str, Any], device: str) -> list[str]:
    """The finetune row's figures: per init its forward and training rates, and its input pipeline's."""
    lines = [f"  fine-tuning on {device}, init {how}" for how in row["hows"]] if row["rate"] else []
    if row["augment"]:
        feed = row["feed"]
        lines.append(f"  input of finetune (full fine-tuning's {row['augment']} + flip on decoded uint8 images, "
                     "DataLoader workers on the CPU): " + (f"{feed.images_per_s:,.1f} samples/s from {feed.how}"
                     if feed else f"not measured (no finetune_{row['augment']}/cpu input figure in the table; the "
                                  "pretraining methods' figures include JPEG decode and colour jitter, so none is "
                                  "reused): training priced at the model's rate"))
    return lines


def render(result: dict[str, Any], device: str, gpus: int) -> str:
    """The plan as a terminal table plus the total and the provenance of every figure."""
    unit = "GPU-h" if device in GPUS else "CPU-h"
    lines = [f"{'stage':<11}{'images':>14}{unit:>11}{f'wall h on {gpus}':>14}  figure (a training row: its bound, "
             f"model or input, first)"]
    for row in result["rows"]:
        images = "?" if row["images"] is None else f"{row['images']:,}"
        finetune = row["stage"] == "finetune"   # its rate already mixes its parts' bounds and sources
        source = row["feed"] if row["bound"] == "input" and not finetune else row["rate"]
        figure = (f"{row['speed']:,.1f} img/s, {'measured' if source.measured else 'EXTRAPOLATED'}"
                  if source else (row.get("note") or ""))
        if finetune and source and row["augment"] and row["feed"] is None:
            figure += " (input not measured)"
        named = ("input" in row or finetune) and row["bound"]
        lines.append(f"{row['stage']:<11}{images:>14}{_hours(row['device_hours']):>11}{_hours(row['wall_hours']):>14}"
                     f"  {row['bound'] + ' ' if named else ''}{figure}")
    lines.append(f"{'total':<11}{'':>14}{_hours(result['device_hours']):>11}{_hours(result['wall_hours']):>14}"
                 + (f"  (not priced: {', '.join(result['unpriced'])})" if result["unpriced"] else ""))
    lines += [f"{row['stage']}: {row['detail']}" for row in result["rows"] if row.get("detail")]
    disk = result["disk_gb"]
    lines.append(f"disk: shards {disk['shards']:,.1f} GB (JPEG at ~{JPEG_BYTES_PER_PIXEL} B/pixel, an estimate), "
                 f"embeddings {disk['embeddings']:,.1f} GB, pool chunks + index {disk['pool_index']:,.1f} GB")
    lines.append("figures:")
    for row in result["rows"]:
        if row["stage"] == "finetune":
            lines += finetune_figures(row, device)
            continue
        if row["rate"]:
            lines.append(f"  {row['stage']}: {row['task']} {row['model']} on {device}: {row['rate'].how}")
        if row["rate"] and "input" in row:
            feed, method = row.get("feed"), row["input"]["method"]
            lines.append(f"  input of {row['stage']} ({method}, {row['feed_path']} path): "
                         + (f"{feed.images_per_s:,.1f} samples/s from {feed.how}" if feed else
                            "no figure in the table (python benchmarks/input_pipeline.py --write): not priced"))
            if row["feed_path"] == "device" and row.get("augment") is None:
                lines.append(f"  device augmentation of {row['stage']}: GPU time not counted (no {method}/device-gpu "
                             f"figure on {device}: bash benchmarks/gpu.sh)")
    lines.append(f"wall time assumes the {gpus} device(s) share every stage evenly (Ray actors, DDP ranks), but "
                 "finetune, which runs on one.")
    return "\n".join(lines)


def split_counts(text: str) -> tuple[int, int]:
    """`TRAIN,TEST` of --finetune-images -> (train, test), both whole numbers, train at least 1."""
    train, _, test = text.partition(",")
    try:
        counts = int(train), int(test)
    except ValueError:
        counts = (-1, -1)
    if counts[0] < 1 or counts[1] < 0:
        raise ConfigError(f"--finetune-images {text!r} must be TRAIN,TEST image counts of one dataset (e.g. "
                          "50000,10000), train at least 1")
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """`pas plan`: print the cost of the current params (with -S overrides) on a hardware profile."""
    from pas.core.stage import command_parser

    parser = command_parser("plan", __doc__)
    parser.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, as dvc exp run -S does (e.g. -S size=1.2M)")
    parser.add_argument("--gpu", default="h100", help=f"hardware profile: {', '.join(DEVICES)}")
    parser.add_argument("--gpus", type=int, default=1, help="devices working in parallel")
    parser.add_argument("--cpus-per-gpu", type=int, default=16,
                        help="CPU cores feeding each device (decode + augmentation, or the device path's CPU work)")
    parser.add_argument("--pool-images", type=int, default=None,
                        help="images in the unlabeled pool to embed (0: a pool of precomputed embeddings)")
    parser.add_argument("--finetune-images", action="append", default=None, metavar="TRAIN,TEST",
                        help="train and test images of one downstream dataset, once per dataset (default: "
                             "sample_data.downstream_train,downstream_test: the offline default's one dataset)")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--table", default=str(DEFAULT_TABLE), help="throughput table (benchmarks/throughput.py)")
    args = parser.parse_args(argv)
    try:
        if args.gpu not in DEVICES:
            raise ConfigError(f"--gpu {args.gpu!r} is not a known profile; use one of {', '.join(DEVICES)}")
        if args.gpus < 1:
            raise ConfigError(f"--gpus {args.gpus} must be at least 1")
        if args.cpus_per_gpu < 1:
            raise ConfigError(f"--cpus-per-gpu {args.cpus_per_gpu} must be at least 1")
        if args.pool_images is not None and args.pool_images < 0:
            raise ConfigError(f"--pool-images {args.pool_images} must be 0 or more")
        downstream = [split_counts(text) for text in args.finetune_images or []]
        params = params_with_overrides(Path(args.params), args.set_param)
        settings = checked(params, f"{args.params} with -S overrides" if args.set_param else args.params)
        pool = args.pool_images
        if pool is None:
            pool = pool_size(settings.pool_index.source)
        result = plan(settings, load_table(Path(args.table)), args.gpu, args.gpus, pool, args.cpus_per_gpu,
                      downstream)
    except PasError as err:
        print(f"pas plan: error: {err}", file=sys.stderr)
        return 2
    print(render(result, args.gpu, args.gpus))
    return 0
