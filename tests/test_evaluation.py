"""Retrieval evaluation: metric functions against hand-computed cases, manifests, and the CLI end to end."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s2m_retrieval.errors import BadInputError
from s2m_retrieval.evaluation import metrics as m
from s2m_retrieval.evaluation.archive_view import ArchiveView
from s2m_retrieval.evaluation.manifest import Query, make_queries, read_manifest
from s2m_retrieval.evaluation.runner import Relevance, variant_metrics


def test_instance_metrics_by_hand():
    ranks = [m.hit_rank(["a", "b", "c"], "a"), m.hit_rank(["b", "c", "a"], "a"), m.hit_rank(["b"], "a")]
    assert ranks == [1, 3, None]
    assert m.accuracy_at(ranks, 1) == pytest.approx(1 / 3)
    assert m.accuracy_at(ranks, 3) == pytest.approx(2 / 3)
    assert m.mean_reciprocal_rank(ranks) == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert m.mean_reciprocal_rank(ranks, cutoff=2) == pytest.approx(1 / 3)
    assert math.isnan(m.accuracy_at([], 5))


def test_precision_counts_a_short_list_as_misses():
    assert m.precision_at([True, False, True], 2) == 0.5
    assert m.precision_at([True, True], 4) == 0.5          # two results for k=4: the gaps are misses
    with pytest.raises(ValueError):
        m.precision_at([True], 0)


def test_average_precision_by_hand():
    # relevant at ranks 1 and 3 of 4, 2 relevant in the archive: (1/1 + 2/3) / 2
    assert m.average_precision_at([True, False, True, False], 4, 2) == pytest.approx((1 + 2 / 3) / 2)
    # 5 relevant in the archive but k=2: normalised by min(k, n_relevant) = 2
    assert m.average_precision_at([False, True], 2, 5) == pytest.approx(0.5 / 2)
    assert m.average_precision_at([True, True, True], 3, 3) == 1.0
    assert m.average_precision_at([False, False], 2, 0) == 0.0
    # a list shorter than k: the missing positions add nothing
    assert m.average_precision_at([True], 10, 4) == pytest.approx(1 / 4)


def test_recall_overlap_and_percentiles():
    assert m.recall_overlap([[1, 2, 3], [4, 5, 9]], [[1, 2, 3], [4, 5, 6]], 3) == pytest.approx((1 + 2 / 3) / 2)
    assert m.percentile_ms([10.0, 20.0, 30.0], 50) == 20.0


def _view(labels: dict[str, int]) -> ArchiveView:
    ids = list(labels)
    return ArchiveView(archive_ids=ids, image_ids=np.arange(1, len(ids) + 1), thumbs=np.zeros((len(ids), 4, 4, 3),
                       np.uint8), labels=[{"grade": g} for g in labels.values()])


def test_variant_metrics_with_ties_in_labels_and_short_lists():
    view = _view({"a": 1, "b": 1, "c": 2, "d": 2, "e": 3})
    queries = [Query(sketch=None, target_id="a", labels={"grade": 1}),
               Query(sketch=None, target_id="c", labels={"grade": 2}),
               Query(sketch=None, target_id=None, labels={"grade": 4})]  # held out, no grade-4 image indexed
    lists = [["b", "a", "c"], ["c"], ["e", "a"]]
    relevance = Relevance.of(queries, view, ("grade",))
    assert relevance.n_relevant == [2, 2, 0]
    out = variant_metrics(lists, queries, ks=(1, 2), relevance=relevance)
    assert out["acc@1"] == 0.5 and out["acc@2"] == 1.0 and out["n_instance"] == 2
    assert out["mrr"] == pytest.approx((1 / 2 + 1) / 2)
    assert out["P@1"] == 1.0                                   # b (grade 1) and c (grade 2) are both relevant
    assert out["P@2"] == pytest.approx((1.0 + 0.5) / 2)        # the second list has one result for k=2
    assert out["mAP@2"] == pytest.approx((1.0 + 1 / 2) / 2)
    assert out["n_category"] == 2 and out["no_relevant"] == 1


def _write_manifest(path, rows, header=("sketch", "target_id", "grade")):
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_manifest_errors_are_one_line(tmp_path):
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "s.png")
    cases = {
        "missing column(s) target_id": _write_manifest(tmp_path / "a.csv", [["s.png"]], header=("sketch",)),
        "sketch file not found": _write_manifest(tmp_path / "b.csv", [["nope.png", "x", 1]]),
        "has no queries": _write_manifest(tmp_path / "c.csv", []),
        "no value in relevance column 'grade'": _write_manifest(tmp_path / "d.csv", [["s.png", "x", ""]]),
        "query manifest not found": tmp_path / "none.csv",
    }
    for message, path in cases.items():
        with pytest.raises(BadInputError, match=re.escape(message)) as info:
            read_manifest(path, relevance=("grade",))
        assert "\n" not in str(info.value)
    queries = read_manifest(_write_manifest(tmp_path / "ok.csv", [["s.png", "", 3]]), ("grade",))
    assert queries[0].target_id is None and queries[0].labels == {"grade": 3}


def test_make_queries_draws_unseen_style_sketches(phantom_archive, tmp_path):
    path = make_queries(phantom_archive, tmp_path / "q", n=5, seed=3)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 5 and {"tonsil_grade", "mallampati"} <= set(rows[0])
    assert len({r["target_id"] for r in rows}) == 5
    sketch = np.array(Image.open(path.parent / rows[0]["sketch"]))
    assert sketch.shape == (256, 256) and (sketch < 128).any()
    again = make_queries(phantom_archive, tmp_path / "q2", n=5, seed=3)
    assert again.read_text() == path.read_text()                 # seeded: same picks, same files
    held = make_queries(phantom_archive, tmp_path / "held", n=2, seed=3, in_index=False)
    assert all(r["target_id"] == "" for r in csv.DictReader(held.open()))
    with pytest.raises(BadInputError, match="already exists"):
        make_queries(phantom_archive, tmp_path / "q", n=5)
    with pytest.raises(BadInputError, match="unknown sketch style"):
        make_queries(phantom_archive, tmp_path / "q3", n=5, style="charcoal")


def test_traced_style_draws_the_images_own_edges(phantom_archive, tmp_path):
    from s2m_retrieval.data.archive import read_image, read_mask, scan_archive
    from s2m_retrieval.evaluation.manifest import QUERY_STYLES, draw_query

    path = make_queries(phantom_archive, tmp_path / "t", n=3, seed=1, style="traced")
    rows = list(csv.DictReader(path.open()))
    entry = {e.stem: e for e in scan_archive(phantom_archive)}[rows[0]["target_id"]]
    sketch = np.array(Image.open(path.parent / rows[0]["sketch"]))
    assert sketch.shape == (256, 256) and 0.005 < (sketch < 128).mean() < 0.2
    assert np.array_equal(sketch, draw_query(None, QUERY_STYLES["traced"], 0, image=read_image(entry.path)))
    mask_style = draw_query(read_mask(entry.mask_path), QUERY_STYLES["unseen"], 0)
    assert not np.array_equal(sketch < 128, mask_style < 128)     # another model of drawing than the outlines
    with pytest.raises(BadInputError, match="draws from the image"):
        draw_query(read_mask(entry.mask_path), QUERY_STYLES["traced"], 0)


def _tiny_baselines(folder, resolution):
    from s2m_retrieval.networks.checkpoint import save_checkpoint
    from s2m_retrieval.networks.embedding import EmbeddingConfig, SketchImageEmbedding
    from s2m_retrieval.networks.pix2pix import UNetGenerator
    from s2m_retrieval.training.pix2pix import pix2pix_config_for

    p_cfg = pix2pix_config_for(resolution, base_channels=4, max_channels=8)
    e_cfg = EmbeddingConfig(img_resolution=resolution, widths=(4, 8), dim=8)
    p = save_checkpoint(folder / "pix2pix.pt", kind="pix2pix", config=p_cfg,
                        state_dict=UNetGenerator(p_cfg).state_dict())
    e = save_checkpoint(folder / "embedding.pt", kind="embedding", config=e_cfg,
                        state_dict=SketchImageEmbedding(e_cfg).state_dict())
    return p, e


def test_eval_end_to_end_through_the_cli(runner, setup, tmp_path):
    from cli.main import app

    pix2pix, embedding = _tiny_baselines(tmp_path, 32)  # the tiny models' generator (and thumbs) are 32 px
    queries = tmp_path / "queries"
    result = runner.invoke(app, ["eval", "make-queries", str(setup.archive), "--out", str(queries), "--n", "4",
                                 "--seed", "1"])
    assert result.exit_code == 0, result.output
    report = tmp_path / "report"
    result = runner.invoke(app, ["eval", str(queries / "manifest.csv"), "--home", str(setup.home), "--out",
                                 str(report), "--model", str(setup.models), "--perceptual", "random",
                                 "--method", "sketch2medi,edge,pix2pix,embedding", "--pix2pix", str(pix2pix),
                                 "--embedding", str(embedding), "--relevance", "tonsil_grade", "--k", "1,5",
                                 "--steps", "0,1", "--candidates", "5,10"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((report / "metrics.json").read_text())
    variants = metrics["variants"]
    assert {"edge", "pix2pix", "embedding", "fused T=0 N=10", "latent T=1 N=10", "perceptual T=0 N=10",
            "fused T=1 N=5"} <= set(variants)
    for values in variants.values():
        assert 0 <= values["acc@1"] <= values["acc@5"] <= 1 and values["n_instance"] == 4
        assert 0 <= values["P@5"] <= 1 and values["list_length"] in (5, 10)
    assert set(metrics["latency_ms"]) == {"sketch2medi", "edge", "pix2pix", "embedding"}
    assert metrics["latency_ms"]["edge"]["p50"] > 0
    assert "| edge |" in (report / "report.md").read_text()
    for name in ("precision_at_k.png", "examples.png"):
        assert Image.open(report / name).size[0] > 100
    assert "| method / variant |" in result.stdout


def _s2m(*args):
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], capture_output=True, text=True)


def test_eval_refuses_targets_outside_the_index(setup, tmp_path):
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(tmp_path / "s.png")
    manifest = _write_manifest(tmp_path / "m.csv", [["s.png", "not_an_archive_image", 1]])
    proc = _s2m("eval", manifest, "--home", setup.home, "--out", tmp_path / "r", "--model", setup.models,
                "--perceptual", "random", "--threads", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not in index 'default'" in proc.stderr and not (tmp_path / "r").exists()
    proc = _s2m("eval", manifest, "--out", tmp_path / "r", "--method", "sift")
    assert proc.returncode == 2 and "unknown --method sift" in proc.stderr
    proc = _s2m("eval", manifest, "--out", tmp_path / "r", "--limit", "0")
    assert proc.returncode == 2 and "--limit must be >= 1" in proc.stderr


def test_sketch2medi_method_ranks_as_the_engine_queries(setup):
    from retrieval_helpers import phantom_sketch
    from s2m_retrieval.evaluation.archive_view import read_archive_view
    from s2m_retrieval.evaluation.methods import Sketch2MediMethod
    from s2m_retrieval.query.engine import RetrievalEngine

    with RetrievalEngine.open(home=setup.home, models=setup.models, perceptual="random") as engine:
        view = read_archive_view(engine)
        method = Sketch2MediMethod(engine, view, steps=(), candidates=(20,))
        ranked = method.rank(phantom_sketch())
        result = engine.query_sketch(phantom_sketch(), k=10, n_candidates=20)
    assert ranked.lists[method.timed][:10] == [Path(h.path).stem for h in result.hits]


def test_report_notes_name_the_relevance_or_its_absence():
    from s2m_retrieval.evaluation.report import markdown_table

    report = {"variants": {"edge": {"method": "edge", "acc@1": 0.5}}, "ks": [1, 10], "n_queries": 2,
              "manifest": "m.csv", "index": "eval", "index_size": 9, "factory": "Flat", "perceptual": "seg",
              "relevance": [], "latency_ms": {}}
    plain = markdown_table(report)
    assert "no category metrics (give --relevance" in plain and "same" not in plain
    graded = markdown_table(report | {"relevance": ["tonsil_grade"]})
    assert "relevant = same tonsil_grade as the query" in graded
