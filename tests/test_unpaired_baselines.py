"""Tests of the unpaired baselines (CycleGAN, UNIT, U-GAT-IT): shapes, tiny runs learn, resume bit-identically,
checkpoints round trip, the CLI commands, and both evaluations (retrieval method, sketch -> image rows)."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch

from s2m_retrieval.errors import BadInputError, CheckpointError
from s2m_retrieval.networks.checkpoint import load_checkpoint, save_checkpoint
from s2m_retrieval.networks.cyclegan import CycleGAN, CycleGANConfig, PatchGAN, PatchGANConfig
from s2m_retrieval.networks.ugatit import (AdaLIN, UGATIT, UGATITConfig, UGATITDiscriminator,
                                           UGATITDiscriminatorConfig, UGATITGenerator, clip_rho)
from s2m_retrieval.networks.unit import UNIT, UNITConfig
from s2m_retrieval.training.pairs import phantom_pairs
from s2m_retrieval.training.state import load_train_state
from s2m_retrieval.training.unpaired import FakePool, unpaired_batches

KINDS = ("cyclegan", "unit", "ugatit")
MODELS = {"cyclegan": CycleGAN, "unit": UNIT, "ugatit": UGATIT}
TINY = {"cyclegan": {"n_res": 2}, "unit": {"n_res": 1}, "ugatit": {"n_res": 2}}   # base 8 at 32 px
TINY_D = {"max_channels": 16}                                                     # base 16 at 32 px
QUIET = dict(sample_every=10_000, snapshot_every=10_000)


def _method(kind):
    return importlib.import_module(f"s2m_retrieval.training.{kind}").METHOD


def _loader(kind):
    return getattr(importlib.import_module(f"s2m_retrieval.networks.{kind}"), f"load_{kind}")


def _configs(kind, res=32):
    method = _method(kind)
    return method.config_for(res, **TINY[kind]), method.d_config_for(res, **TINY_D)


def _as_float(x):
    return x.float() / 127.5 - 1


@pytest.fixture(scope="module")
def pairs():
    return phantom_pairs(8, 32, seed=2, variants=2)


@pytest.mark.parametrize("res", [64, 128])
def test_translators_and_critics_shapes(res):
    sketch, image = torch.rand(2, 1, res, res) * 2 - 1, torch.rand(2, 3, res, res) * 2 - 1
    tiny = dict(img_resolution=res, base_channels=4)
    for model in (CycleGAN(CycleGANConfig(n_res=1, **tiny)), UNIT(UNITConfig(n_res=1, **tiny)),
                  UGATIT(UGATITConfig(n_res=1, **tiny))):
        with torch.no_grad():
            fake, back = model(sketch), model.sketch_of(image)
        assert fake.shape == (2, 3, res, res) and back.shape == (2, 1, res, res)
        assert fake.abs().max() <= 1 and back.abs().max() <= 1
        with pytest.raises(ValueError, match=r"expects \[N, 1"):
            model(image)
    z = UNIT(UNITConfig(n_res=1, **tiny)).encode_sketch(sketch)
    assert z.shape == (2, 16, res // 4, res // 4)                       # the shared code at R / 2^n_down
    d = PatchGAN(PatchGANConfig(img_resolution=res, base_channels=4, layers=2, scales=2, norm="none"))
    assert [tuple(x.shape) for x in d(image)] == [(2, 1, res // 4 - 2, res // 4 - 2),
                                                   (2, 1, res // 8 - 2, res // 8 - 2)]   # two scales
    critics = UGATITDiscriminator(UGATITDiscriminatorConfig(img_resolution=res, base_channels=4, global_downs=3,
                                                            local_downs=2))
    (g_logits, g_cam), (l_logits, l_cam) = critics(image)
    assert g_logits.shape == (2, 1, res // 8 - 2, res // 8 - 2) and l_logits.shape == (2, 1, res // 4 - 2, res // 4 - 2)
    assert g_cam.shape == l_cam.shape == (2, 2)
    for bad in (lambda: CycleGANConfig(img_resolution=48), lambda: UNITConfig(img_resolution=16, n_down=3),
                lambda: PatchGANConfig(img_resolution=32, layers=2, scales=3),
                lambda: UGATITDiscriminatorConfig(img_resolution=64, global_downs=2, local_downs=3)):
        with pytest.raises(BadInputError):
            bad()


def test_ugatit_attention_and_adalin():
    gen = UGATITGenerator(UGATITConfig(img_resolution=32, base_channels=4, n_res=1), 3, 3)
    image, cam_logit, heatmap = gen(torch.rand(2, 3, 32, 32))
    assert image.shape == (2, 3, 32, 32) and cam_logit.shape == (2, 2) and heatmap.shape == (2, 1, 8, 8)
    norm = AdaLIN(4, rho=1.0)                                           # rho 1: pure instance norm
    x = torch.randn(2, 4, 5, 5) * 3 + 1
    ones, zeros = torch.ones(2, 4), torch.zeros(2, 4)
    assert torch.allclose(norm(x, ones, zeros), torch.nn.functional.instance_norm(x, eps=1e-5), atol=1e-5)
    with torch.no_grad():
        for m in gen.modules():
            if isinstance(m, AdaLIN):
                m.rho.fill_(1.7)
    clip_rho(gen)
    assert all(m.rho.max() == 1.0 for m in gen.modules() if isinstance(m, AdaLIN))


def test_unpaired_batches_never_pair_a_sketch_with_its_image(pairs):
    draw = unpaired_batches(pairs, 64, xflip=False)
    sketch, image = draw(torch.Generator().manual_seed(0))
    first, second = _as_float(pairs.sketches[:4]), _as_float(pairs.images[4:])
    assert all(any(torch.equal(s[0], v) for v in first.flatten(0, 1)) for s in sketch)
    assert all(any(torch.equal(i, j) for j in second) for i in image)
    again = draw(torch.Generator().manual_seed(0))
    assert torch.equal(again[0], sketch) and torch.equal(again[1], image)
    with pytest.raises(BadInputError, match="at least 2 images"):
        unpaired_batches(phantom_pairs(1, 32, variants=1), 2, True)


def test_fake_pool_fills_then_mixes_old_and_new():
    pool = FakePool(3, (1, 2, 2))
    first = torch.arange(2 * 4, dtype=torch.float32).view(2, 1, 2, 2)
    assert torch.equal(pool(first), first) and int(pool.count) == 2
    torch.manual_seed(0)
    new = torch.full((8, 1, 2, 2), -1.0)
    out = pool(new)
    assert int(pool.count) == 3 and out.shape == new.shape
    assert 0 < int((out[:, 0, 0, 0] != -1).sum()) < 8                  # some from the history, some fresh
    assert set(pool.state_dict()) == {"images", "count"}               # latest.pt carries the history
    assert torch.equal(FakePool(0, (1, 2, 2))(new), new)


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_run_learns_and_round_trips(kind, pairs, tmp_path):
    cfg, d_cfg = _configs(kind)
    method = _method(kind)
    reports = []
    tc = method.train_config(steps=30, batch=4, lr=2e-3, **{**QUIET, "sample_every": 30})
    path = method.train(pairs, tmp_path, cfg, d_cfg, tc, progress=reports.append)
    cycle = [r.loss for r in reports]
    assert np.mean(cycle[-5:]) < 0.7 * np.mean(cycle[:5]), cycle
    assert {"cycle_sketch", "cycle_image", "adv", "d"} <= set(reports[-1].terms)
    # The first sketches' own images were never trained on: the translation must come closer to them.
    sketch, target = _as_float(pairs.sketches[:4, 0][:, None]), _as_float(pairs.images[:4])
    torch.manual_seed(tc.seed)
    untrained = MODELS[kind](cfg).eval()                                # the run's initial weights
    net = _loader(kind)(path)
    with torch.no_grad():
        before, after = (untrained(sketch) - target).abs().mean(), (net(sketch) - target).abs().mean()
    assert after < 0.8 * before, (before, after)
    assert not net.training and net.config == cfg and not any(p.requires_grad for p in net.parameters())
    payload = load_checkpoint(path, kind=kind)
    assert payload["meta"]["step"] == 30 and payload["meta"]["data"]["unpaired"] == {"sketches_of": [0, 4],
                                                                                     "images_of": [4, 8]}
    assert payload["meta"]["discriminator"]["max_channels"] == 16
    assert (tmp_path / "samples" / f"{kind}0000030.png").is_file()
    with pytest.raises(CheckpointError, match=f"expected a '{kind}'") as info:
        _loader(kind)(payload | {"kind": "pix2pix"})
    assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="does not rebuild"):
        _loader(kind)(payload | {"config": {**payload["config"], "base_channels": 4}})


@pytest.mark.parametrize("kind", KINDS)
def test_resume_is_bit_identical(kind, pairs, tmp_path):
    cfg, d_cfg = _configs(kind)
    method = _method(kind)
    extra = {"pool": 2} if kind == "cyclegan" else {}                  # a full pool by step 2: its draws matter

    def run(out, steps):
        seen = []
        tc = method.train_config(steps=steps, batch=3, **extra, **QUIET)
        path = method.train(pairs, out, cfg, d_cfg, tc, progress=lambda p: seen.append(p.step))
        return load_checkpoint(path)["state_dict"], load_train_state(out / "latest.pt")["networks"], seen

    straight, straight_all, _ = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed, resumed_all, seen = run(tmp_path / "b", 4)
    assert seen == [3, 4]
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    for name, state in straight_all.items():                           # critics and pools too
        assert all(torch.equal(state[k], resumed_all[name][k]) for k in state), name


def test_cli_commands_train_and_resume(tmp_path, runner):
    import typer

    from cli.train_unpaired import UNPAIRED, register

    app = typer.Typer()
    register(app)
    for kind in KINDS:
        assert UNPAIRED[kind][1] == _method(kind).train_config().lr       # --lr shows the config's default
        tiny = json.dumps({kind: {"base_channels": 4, "n_res": 1}, "discriminator": {"base_channels": 4}})
        args = [kind, "phantom:4:1", "--res", "32", "--out", str(tmp_path / kind), "--batch", "2",
                "--pairs-per-image", "1", "--threads", "1", "--config-json", tiny, "--steps"]
        for steps in ((1, 2) if kind == "cyclegan" else (2,)):          # one of them stopped and resumed
            result = runner.invoke(app, args + [str(steps)])
            assert result.exit_code == 0, (result.output, result.exception)
        assert "the sketches of images 0..1, the images 2..3" in result.stdout
        assert ("resuming" in result.stdout) == (kind == "cyclegan")
        assert f"{kind}: {tmp_path / kind / f'{kind}.pt'}" in result.stdout
        payload = load_checkpoint(tmp_path / kind / f"{kind}.pt", kind=kind)
        assert payload["meta"]["step"] == 2 and payload["config"]["base_channels"] == 4
    result = runner.invoke(app, ["unit", "phantom:4", "--out", str(tmp_path / "x"), "--config-json",
                                 json.dumps({"pix2pix": {}})])
    assert isinstance(result.exception, BadInputError) and "parts among" in str(result.exception)
    assert "--pairs-cache" in runner.invoke(app, ["ugatit", "--help"]).stdout


def _random_translators(folder, res):
    """Randomly initialised tiny checkpoints of the three, as `s2m train` writes them (meta with the split)."""
    torch.manual_seed(0)
    paths = {}
    for kind, model in MODELS.items():
        net = model(_method(kind).config_for(res, base_channels=4, n_res=1))
        meta = {"data": {"source": "phantom", "phantom_seed": 0, "start": 0, "n": 8,
                         "unpaired": {"sketches_of": [0, 4], "images_of": [4, 8]}}}
        paths[kind] = save_checkpoint(folder / f"{kind}.pt", kind=kind, config=net.config,
                                      state_dict=net.state_dict(), meta=meta)
    return paths


def test_retrieval_eval_ranks_with_each_translator(runner, setup, tmp_path):
    from cli.main import app

    paths = _random_translators(tmp_path, 32)          # the tiny models' generator (and thumbs) are 32 px
    queries = tmp_path / "queries"
    result = runner.invoke(app, ["eval", "make-queries", str(setup.archive), "--out", str(queries), "--n", "3",
                                 "--seed", "1"])
    assert result.exit_code == 0, result.output
    base = ["eval", str(queries / "manifest.csv"), "--home", str(setup.home), "--model", str(setup.models),
            "--perceptual", "random", "--k", "1,5", "--candidates", "10"]
    result = runner.invoke(app, base + ["--out", str(tmp_path / "report"), "--method", "cyclegan,unit,ugatit",
                                        *(x for kind in KINDS for x in (f"--{kind}", str(paths[kind])))])
    assert result.exit_code == 0, (result.output, result.exception)
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert set(metrics["latency_ms"]) == set(KINDS)
    for kind in KINDS:
        values = metrics["variants"][kind]
        assert values["method"] == kind and values["n_instance"] == 3 and values["list_length"] == 10
        assert 0 <= values["acc@1"] <= values["acc@5"] <= 1
    result = runner.invoke(app, base + ["--out", str(tmp_path / "none"), "--method", "unit",
                                        "--cyclegan", str(paths["cyclegan"])])
    assert "note: --cyclegan given, but --method does not run it (add cyclegan to --method)" in result.stderr
    assert isinstance(result.exception, CheckpointError) and not (tmp_path / "none" / "metrics.json").exists()
    message = str(result.exception)
    assert "no unit weights are shipped" in message and "--unit" in message and "\n" not in message


def test_sketch_quality_rows_of_the_translators(runner, tmp_path):
    from cli.main import app
    from s2m_retrieval.generation.sketch_quality import REFERENCE, held_out_phantoms, load_models, sketch_quality
    from s2m_retrieval.model.perceptual import load_perceptual
    from s2m_retrieval.networks.segmenter import Segmenter, SegmenterConfig
    from s2m_retrieval.networks.stylegan2 import Generator, GeneratorConfig

    g_cfg = GeneratorConfig(z_dim=16, w_dim=16, mapping_layers=2, img_resolution=32, channel_base=256, channel_max=16)
    seg_cfg = SegmenterConfig(base_channels=4, depth=2, img_resolution=32)
    g_path = save_checkpoint(tmp_path / "g.pt", kind="generator", config=g_cfg,
                             state_dict=Generator(g_cfg).state_dict())
    seg_path = save_checkpoint(tmp_path / "seg.pt", kind="segmenter", config=seg_cfg,
                               state_dict=Segmenter(seg_cfg).state_dict())
    paths = _random_translators(tmp_path, 32)
    result = runner.invoke(app, ["eval", "sketch2medi", "--generator", str(g_path), "--segmenter", str(seg_path),
                                 "--metrics", "random", "--n", "4", "--optimise-steps", "0", "--threads", "1",
                                 "--out", str(tmp_path / "report"),
                                 *(x for kind in KINDS for x in (f"--{kind}", str(paths[kind])))])
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads((tmp_path / "report" / "sketch_quality.json").read_text())
    rows = report["sketch_to_image"]
    assert [row["method"] for row in rows] == ["CycleGAN", "UNIT", "U-GAT-IT", REFERENCE]
    assert all(0 <= row["dice"] <= 1 and np.isfinite(row["fd"]) and row["perceptual"]["random"] != 0
               for row in rows[:-1])
    assert "UNIT: trained unpaired, on the sketches of images 0..3 and the images 4..7" in report["notes"]
    table = (tmp_path / "report" / "sketch_quality.md").read_text()
    assert "| U-GAT-IT | " in table and "| CycleGAN | " in table
    models = load_models(g_path, cyclegan=paths["cyclegan"])
    with pytest.raises(BadInputError, match="overlap the cyclegan"):
        sketch_quality(held_out_phantoms(4, 32, seed=0, start=2), models, Segmenter(seg_cfg).eval(),
                       {"random": load_perceptual("random")}, max_steps=1)


def test_s2m_train_lists_the_unpaired_baselines():
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0, result.output
    assert all(name in result.stdout for name in ("cyclegan", "unit", "ugatit"))
    bad = CliRunner().invoke(app, ["train", "cyclegan", "phantom:4", "--out", "x", "--steps", "0"])
    assert bad.exit_code != 0


def _s2m(capsys, *args):
    """`s2m ARGS` through the CLI's error edge: (exit code, stdout, stderr lines)."""
    from cli.main import _run, app

    with pytest.raises(SystemExit) as info:
        _run(app, [str(a) for a in args])
    out = capsys.readouterr()
    return info.value.code, out.out, out.err.strip().splitlines()


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_train_refusals_are_one_line_and_keep_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    tiny = json.dumps({"cyclegan": {"base_channels": 4, "n_res": 1}, "discriminator": {"base_channels": 4}})

    def train(kind="cyclegan", source="phantom:4:1", *extra, out=run, steps=2):
        return _s2m(capsys, "train", kind, source, "--res", 32, "--out", out, "--batch", 2, "--pairs-per-image", 1,
                    "--threads", 1, "--config-json", tiny if kind == "cyclegan" else "{}", "--steps", steps, *extra)

    assert train()[0] == 0
    kept = _files(run)
    cases = [(("cyclegan", "phantom:4:2"), "data source phantom:4:1 -> phantom:4:2"),     # another seed
             (("cyclegan", "phantom:3:1"), "data source phantom:4:1 -> phantom:3:1"),
             (("cyclegan", "phantom:4:1", "--limit", 3), "data limit none -> 3"),
             (("cyclegan", "phantom:4:1", "--lr", "1e-3"), "lr 0.0002 -> 0.001"),
             (("cyclegan", "phantom:4:1", "--cycle", 5), "cycle 10 -> 5"),
             (("cyclegan", "phantom:4:1", "--pairs-per-image", 2), "pairs per image 1 -> 2"),
             (("unit", "phantom:4:1"), "holds another method's run"),
             (("unit", "phantom:4:1", "--fresh"), "holds another method's run")]
    for args, message in cases:
        code, out, err = train(*args, steps=3)
        assert code != 0 and len(err) == 1 and err[0].startswith("error:") and message in err[0], (args, err)
        assert "resuming" not in out and _files(run) == kept, args
        assert ("--fresh" in err[0]) == (args[0] == "cyclegan") and "resume off" not in err[0]
    assert "train unit into a new --out" in err[0]
    # A network config of its own: named, not "another generator".
    other = {"cyclegan": {"base_channels": 4, "n_res": 2}, "discriminator": {"base_channels": 4}}
    code, _, err = _s2m(capsys, "train", "cyclegan", "phantom:4:1", "--res", 32, "--out", run, "--batch", 2,
                        "--pairs-per-image", 1, "--steps", 3, "--config-json", json.dumps(other))
    assert code != 0 and "translator n_res 1 -> 2" in err[0] and "generator" not in err[0]
    assert _files(run) == kept
    code, out, _ = train(steps=1)                                       # at step 2 already: nothing to do
    assert code == 0 and "at step 2 already, past --steps 1" in out and _files(run) == kept
    code, out, _ = train(steps=3)
    assert code == 0 and "resuming" in out and "at step 2 of 3" in out
    assert load_checkpoint(run / "cyclegan.pt")["meta"]["step"] == 3
    code, out, _ = train("cyclegan", "phantom:4:2", "--fresh", steps=1)  # starting over redraws its own pairs.pt
    assert code == 0 and "resuming" not in out
    assert json.loads(torch.load(run / "pairs.pt")["key"])["source"] == "phantom:4:2"
    assert load_train_state(run / "latest.pt")["configs"]["data"]["source"] == "phantom:4:2"


def test_train_options_are_checked_before_anything_is_drawn(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    shared = tmp_path / "shared"
    shared.mkdir()
    base = ["--res", 32, "--batch", 2, "--pairs-per-image", 1, "--steps", 1]
    cases = [(["cyclegan", "phantom:1", "--out", tmp_path / "one"], "needs at least 2 images"),
             (["pix2pix", "phantom:4", "--out", afile], f"--out {afile} is a file; give a folder"),
             (["unit", "phantom:4", "--out", tmp_path / "c", "--pairs-cache", afile], f"{afile} is not a pairs cache"),
             (["unit", "phantom:4", "--out", tmp_path / "c", "--pairs-cache", shared],
              f"pairs cache {shared} is a folder"),
             (["cyclegan", "phantom:4", "--out", tmp_path / "n", "--cycle", "nan"], "cycle nan"),
             (["ugatit", "phantom:4", "--out", tmp_path / "n", "--lr", "nan"], "lr nan"),
             (["pix2pix", "phantom:4", "--out", tmp_path / "n", "--lr", "inf"], "lr inf"),
             (["pix2pix", "phantom:4", "--out", tmp_path / "n", "--l1", "nan"], "l1 nan")]
    cases += [([kind, "phantom:8", "--out", tmp_path / "n", "--limit", limit], "--limit")
              for kind in ("pix2pix", "unit") for limit in (-3, 0)]
    for args, message in cases:
        code, _, err = _s2m(capsys, "train", *args, *base)
        assert code != 0 and len(err) == 1 and err[0].startswith("error:") and message in err[0], (args, err)
    assert afile.read_text() == "mine" and not any(shared.iterdir())
    assert not (tmp_path / "one").exists() and not (tmp_path / "n").exists() and not (tmp_path / "c").exists()


def test_resume_judges_what_an_older_state_recorded(pairs, tmp_path):
    from s2m_retrieval.training.state import atomic_save

    cfg, d_cfg = _configs("unit")
    method = _method("unit")
    method.train(pairs, tmp_path, cfg, d_cfg, method.train_config(steps=1, batch=2, **QUIET))
    state = load_train_state(tmp_path / "latest.pt")
    assert state["configs"]["train"]["lr"] == 1e-4 and state["configs"]["data"]["description"]["n"] == 8
    other = method.train_config(steps=2, batch=2, lr=2e-4, **QUIET)
    with pytest.raises(CheckpointError, match=r"other settings \(lr 0.0001 -> 0.0002\).*--fresh, or resume=False"):
        method.train(pairs, tmp_path, cfg, d_cfg, other)
    with pytest.raises(CheckpointError, match=r"data n 8 -> 6"):
        method.train(phantom_pairs(6, 32, seed=2, variants=2), tmp_path, cfg, d_cfg,
                     method.train_config(steps=2, batch=2, **QUIET))
    # A state written before train options and data were recorded resumes: what it lacks is not judged.
    state["configs"] = {k: v for k, v in state["configs"].items() if k not in ("train", "data")}
    atomic_save(state, tmp_path / "latest.pt")
    assert load_checkpoint(method.train(pairs, tmp_path, cfg, d_cfg, other))["meta"]["step"] == 2


def test_a_diverged_last_step_saves_nothing(pairs, tmp_path, monkeypatch):
    cfg, d_cfg = _configs("unit")
    method = _method("unit")
    adam_step = torch.optim.Adam.step

    def diverging_step(self, *args, **kwargs):                          # the loss before it was finite
        out = adam_step(self, *args, **kwargs)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p.fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", diverging_step)
    with pytest.raises(BadInputError, match="diverged at step 1: G has non-finite weights") as info:
        method.train(pairs, tmp_path, cfg, d_cfg, method.train_config(steps=1, batch=2, **QUIET))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "unit.pt").exists() and not (tmp_path / "latest.pt").exists()


@pytest.mark.parametrize("kind", KINDS + ("pix2pix",))
def test_loaders_refuse_non_finite_weights(kind, tmp_path):
    from s2m_retrieval.networks.pix2pix import UNetGenerator, load_pix2pix
    from s2m_retrieval.training.pix2pix import pix2pix_config_for

    if kind == "pix2pix":
        net, load = UNetGenerator(pix2pix_config_for(32, base_channels=4, max_channels=8)), load_pix2pix
    else:
        net, load = MODELS[kind](_method(kind).config_for(32, base_channels=4, n_res=1)), _loader(kind)
    state = net.state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    path = save_checkpoint(tmp_path / f"{kind}.pt", kind=kind, config=net.config, state_dict=state)
    with pytest.raises(CheckpointError, match=f"non-finite weights \\({name}\\)") as info:
        load(path)
    assert "\n" not in str(info.value)


def test_eval_names_folders_and_training_states_given_as_checkpoints(tmp_path, capsys):
    from s2m_retrieval.evaluation.evaluate import load_unpaired
    from s2m_retrieval.generation.sketch_quality import load_models
    from s2m_retrieval.training.state import STATE_FORMAT
    from s2m_retrieval.networks.stylegan2 import Generator, GeneratorConfig

    afile = tmp_path / "report.md"
    afile.write_text("mine")
    code, _, err = _s2m(capsys, "eval", "sketch2medi", "--out", afile, "--n", 2)   # refused before any model loads
    assert code != 0 and err == [f"error: --out {afile} is a file; give a folder"] and afile.read_text() == "mine"
    run = tmp_path / "run"
    paths = _random_translators(run, 32)
    torch.save({"format": STATE_FORMAT, "kind": "cyclegan", "step": 1}, run / "latest.pt")
    g_cfg = GeneratorConfig(z_dim=16, w_dim=16, mapping_layers=2, img_resolution=32, channel_base=256, channel_max=16)
    g_path = save_checkpoint(tmp_path / "g.pt", kind="generator", config=g_cfg,
                             state_dict=Generator(g_cfg).state_dict())
    for load in (lambda p: load_unpaired("cyclegan", p), lambda p: load_models(g_path, cyclegan=p)):
        with pytest.raises(CheckpointError, match=f"{run} is a folder, not a checkpoint; pass {paths['cyclegan']}"):
            load(run)
        with pytest.raises(CheckpointError, match=f"{tmp_path} is a folder, not a checkpoint$"):
            load(tmp_path)
        with pytest.raises(CheckpointError, match=f"is a training state .*not a checkpoint; pass {paths['cyclegan']}"):
            load(run / "latest.pt")
