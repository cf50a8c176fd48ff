"""The dataset report renders offline: every figure exists, is embedded in the HTML, and the counts add up."""
import base64
import io
import json
import re

import numpy as np
import pytest
from conftest import make_image
from PIL import Image

from pas.core.provenance import collect_provenance
from pas.core.shards import encode_jpeg, write_shard
from pas.curation.decontam import Contamination
from pas.curation.dedup import DedupConfig, curate
from pas.curation.diversity import diversity, mean_cosine_distance, vendi_score
from pas.curation.report import Inputs, ReportConfig, accounting, build_report
from pas.curation.report_balance import group_counts

FIGURES = ["balance.png", "concepts.png", "contaminated.png", "diversity.png", "duplicates.png", "funnel.png",
           "samples.png", "scores.png", "sources.png"]


@pytest.fixture
def inputs(tmp_path):
    """30 candidates over 3 concepts and 2 sources: 4 filtered out, a duplicate pair, 2 contaminated."""
    n = 30
    rng = np.random.default_rng(0)
    images = [make_image(i) for i in range(n)]
    images[7] = images[6]  # an exact copy
    shard = tmp_path / "c-000000.tar"
    write_shard(shard, [(f"k{i:02d}", encode_jpeg(im), {}) for i, im in enumerate(images)])
    emb = rng.standard_normal((n, 16)).astype(np.float32)
    emb[7] = emb[6]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    reasons = ["too_small", "", "", "out_of_domain", "", "", "", "", "near_constant", "", "too_small"] + [""] * 19
    filtered = [{"key": f"k{i:02d}", "shard": str(shard), "source": ("generated", "retrieved")[i % 2],
                 "concept": ("cat", "dog", "cow")[i % 3], "pixel_hash": "", "domain_score": float(rng.uniform(-1, 1)),
                 "concept_score": float(rng.uniform()), "kept": not reasons[i], "reason": reasons[i]} for i in range(n)]
    kept = [i for i in range(n) if filtered[i]["kept"]]
    rows = [filtered[i] for i in kept]
    dirty = Contamination(["toy/test"], np.full(len(rows), -1), np.full(len(rows), -1), [""] * len(rows),
                          np.full(len(rows), 0.2, np.float32), np.full(len(rows), 0.3, np.float32), {}, {})
    for j, signal in ((2, "copy"), (5, "embedding")):
        dirty.set_index[j], dirty.signal[j] = 0, signal
    content = [f"sha{i}" if i != 7 else "sha6" for i in kept]
    result = curate(rows, emb[kept], content, dirty, 12, ["cat", "dog", "cow"], DedupConfig())
    thresholds = {"filter.threshold": -0.5, "filter.concept_threshold": 0.1, "dedup.threshold": 0.95,
                  "dedup.eval_threshold": 0.95, "dedup.copy_threshold": 0.97}
    return Inputs(filtered, result.decisions, result.curated, emb, thresholds)


def test_report_has_every_figure_embedded_and_counts_that_add_up(inputs, tmp_path):
    metrics = build_report(inputs, ReportConfig(samples=4, groups=3), tmp_path / "report.html", tmp_path / "figures")
    assert metrics["figures"] == FIGURES
    for name in FIGURES:
        with Image.open(tmp_path / "figures" / name) as png:
            assert png.format == "PNG" and png.size[0] > 100
    page = (tmp_path / "report.html").read_text()
    embedded = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(embedded) == len(FIGURES)
    assert Image.open(io.BytesIO(base64.b64decode(embedded[0]))).format == "PNG"
    assert "http://" not in page and "https://" not in page and "<script" not in page  # nothing to fetch
    assert metrics["candidates"] == 30 and metrics["filter_rejected"] == {"near_constant": 1, "out_of_domain": 1,
                                                                          "too_small": 2}
    assert metrics["dedup"] == {"curated": 12, "trimmed": 11, "duplicate": 1, "contaminated": 2}
    assert metrics["adds_up"] and metrics["curated"] == 12
    assert "<td>duplicate</td><td>dedup.threshold / equal pixels</td><td>1</td>" in page
    assert "<td>too_small</td><td>filter.min_side</td><td>2</td>" in page and "counts add up: <b>True</b>" in page
    assert sum(v["n"] for k, v in metrics["diversity"]["curated_per_concept"].items()) == 12


def test_accounting_notices_counts_that_do_not_add_up(inputs):
    broken = Inputs(inputs.filtered, inputs.decisions[:-1], inputs.curated, inputs.embeddings, inputs.thresholds)
    assert accounting(inputs)["adds_up"] and not accounting(broken)["adds_up"]


def test_diversity_measures():
    same = np.tile([[1.0, 0.0, 0.0]], (5, 1))
    orthogonal = np.eye(4)
    assert vendi_score(same) == pytest.approx(1.0) and vendi_score(orthogonal) == pytest.approx(4.0)
    assert mean_cosine_distance(same) == pytest.approx(0.0) and mean_cosine_distance(orthogonal) == pytest.approx(1.0)
    x = np.random.default_rng(0).standard_normal((50, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    brute = 1 - (sims.sum() - 50) / (50 * 49)
    eig = np.clip(np.linalg.eigvalsh(sims / 50), 1e-12, None)
    assert mean_cosine_distance(x) == pytest.approx(brute)
    assert vendi_score(x) == pytest.approx(np.exp(-(eig * np.log(eig)).sum()), rel=1e-6)
    table = diversity(x, ["a"] * 20 + ["b"] * 30)
    assert table["a"]["n"] == 20 and table["all"]["n"] == 50


def test_report_opens_with_provenance_and_warns_about_tiny_models(inputs, tmp_path):
    lock = tmp_path / "lock.json"
    lock.write_text(json.dumps({"generator": {"name": "tiny://sd", "revision": "config", "sha256": "ab" * 32},
                                "clip": {"name": "tiny://clip", "revision": "config", "sha256": "cd" * 32}}))
    prov = collect_provenance(tmp_path, {"size": 12, "domain": "animals"}, lock)
    build_report(inputs, ReportConfig(samples=2, groups=1), tmp_path / "report.html", tmp_path / "figures", prov)
    page = (tmp_path / "report.html").read_text()
    header = page[: page.index("<img")]  # before the first figure
    assert "<h2>Provenance</h2>" in header and "class='warning'" in header
    assert "random-weight tiny models (tiny://clip, tiny://sd)" in header and "not a real dataset" in header
    assert f"<td>{prov['params_digest']}</td>" in header and "<td>not a git repository</td>" in header
    assert "tiny://sd (config, sha256 abababababab)" in header and f"<td>{prov['date']}</td>" in header

    lock.write_text(json.dumps({"generator": {"name": "stabilityai/sdxl-turbo", "revision": "71153311"}}))
    prov = collect_provenance(tmp_path, {"size": 12}, lock)
    build_report(inputs, ReportConfig(samples=2, groups=1), tmp_path / "real.html", tmp_path / "figures", prov)
    page = (tmp_path / "real.html").read_text()
    assert "stabilityai/sdxl-turbo (71153311)" in page and "class='warning'" not in page


def test_a_large_bank_plots_its_extremes_not_a_30000_pixel_strip(tmp_path):
    """402 food concepts: the bars show the 20 most and 20 fewest, at a width the report can show."""
    from PIL import Image

    from pas.curation import report_figures as figs

    counts = {f"dish {i:03d}": {"generated": i % 7, "retrieved": i % 3} for i in range(402)}
    png = figs.concept_counts(counts, tmp_path / "concepts.png")
    assert Image.open(png).width <= 100 * (0.45 * figs.MAX_BARS + 2)
    shown, note = figs.extremes(list(counts), {c: sum(v.values()) for c, v in counts.items()})
    assert len(shown) == 40 and note == " (the 20 highest and lowest of 402)"
    total = {c: sum(v.values()) for c, v in counts.items()}
    hidden = [total[c] for c in counts if c not in shown]
    assert min(total[c] for c in shown[:20]) >= max(hidden) and max(total[c] for c in shown[20:]) <= min(hidden)
    table = {variant: {"all": {"vendi": 9.0, "mean_cosine_distance": 0.5},
                       **{c: {"vendi": float(i % 11), "mean_cosine_distance": 0.3} for i, c in enumerate(counts)}}
             for variant in ("candidates", "curated")}
    png = figs.diversity_bars(table, tmp_path / "diversity.png")
    assert Image.open(png).width <= 100 * (0.5 * figs.MAX_BARS * 2 + 2)
    small = {"a": {"generated": 1}, "b": {"retrieved": 2}}
    assert figs.extremes(list(small), {"a": 1, "b": 2}) == (["a", "b"], "")


def test_balance_plot_shows_cluster_sizes_before_and_after_and_names_the_trimming_rule(inputs, tmp_path):
    """balance=clusters on a long tail: the report plots survivors vs curated per cluster, the KL falls, and the
    counts table names the rule behind every outcome."""
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((3, 16))
    emb = np.concatenate([c + 0.05 * rng.standard_normal((n, 16)) for c, n in zip(centres, (40, 12, 6))])
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    n = len(emb)
    rows = [{**inputs.filtered[i % 2], "key": f"t{i:02d}", "concept": "cat", "pixel_hash": "", "kept": True,
             "reason": "", "domain_score": 0.0} for i in range(n)]
    dirty = Contamination(["toy/test"], np.full(n, -1), np.full(n, -1), [""] * n, np.full(n, 0.2, np.float32),
                          np.full(n, 0.3, np.float32), {}, {})
    result = curate(rows, emb, [f"sha{i}" for i in range(n)], dirty, 15, ["cat"],
                    DedupConfig(balance="clusters", clusters=3, threshold=0.9999))
    kind, before, after = group_counts(result.decisions)
    assert kind == "cluster" and sorted(before.values()) == [6, 12, 40] and sorted(after.values()) == [5, 5, 5]
    balanced = Inputs(rows, result.decisions, result.curated, emb, {}, balance="clusters")
    metrics = build_report(balanced, ReportConfig(samples=2, groups=1), tmp_path / "r.html", tmp_path / "figs")
    with Image.open(tmp_path / "figs" / "balance.png") as png:
        assert png.format == "PNG" and png.size[0] > 300
    assert metrics["balance"]["before"]["kl_from_even"] > 0.2 > 1e-9 > metrics["balance"]["after"]["kl_from_even"]
    assert metrics["balance"]["mode"] == "clusters" and metrics["balance"]["count"] == 3
    page = (tmp_path / "r.html").read_text()
    assert "Cluster sizes before and after balancing" in page and "dedup.balance=clusters (size)" in page


def test_without_clusters_the_balance_plot_uses_concepts(inputs):
    kind, before, after = group_counts(inputs.decisions)
    assert kind == "concept" and set(before) <= {"cat", "dog", "cow"}
    assert sum(after.values()) == len(inputs.curated) and all(after[c] <= before[c] for c in before)
