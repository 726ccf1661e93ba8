"""Model bundles: manifest round trip, names, the shipped bundle's manifest, --model selection and the mismatch."""

from __future__ import annotations

import json
import shutil

import pytest

from cli.main import app
from retrieval_helpers import phantom_sketch
from s2m_retrieval.model.bundle import (MANIFEST, bundles_with, describe, list_bundles, read_manifest, refresh_manifest,
                                        resolve_model, shipped_folder, stale_networks)
from s2m_retrieval.errors import BadInputError, CheckpointError, VersionMismatchError


@pytest.fixture
def home(setup, tmp_path):
    """A private copy of the retrieval setup's home, with its two model sets as bundles 'alpha' (built the
    index) and 'beta' under HOME/models/."""
    home = setup.private_home(tmp_path / "home")
    for name, folder in (("alpha", setup.models), ("beta", setup.other_models)):
        shutil.copytree(folder, home / "models" / name)
        refresh_manifest(home / "models" / name)
    return home


def test_manifest_round_trip(setup, tmp_path):
    folder = shutil.copytree(setup.models, tmp_path / "bundle")
    path = refresh_manifest(folder, name="ward7", archive={"fingerprint": "abc", "fit": "pad"})
    manifest = read_manifest(folder)
    assert path == folder / MANIFEST and manifest["name"] == "ward7" and manifest["format"] == "s2m-bundle/1"
    assert set(manifest["networks"]) == {"generator", "encoder", "refiner", "inverter"}
    assert manifest["missing"] == ["segmenter", "latent_discriminator", "projector"]
    assert manifest["networks"]["inverter"]["trained"]["generator_version"] == \
        manifest["networks"]["generator"]["version"]
    text = path.read_text()
    refresh_manifest(folder)  # rewriting keeps name and sections, byte for byte
    assert path.read_text() == text and stale_networks(folder, manifest) == []
    shutil.copy(setup.other_models / "encoder.pt", folder / "encoder.pt")
    (folder / "refiner.pt").unlink()
    assert describe(folder)["stale"] == ["encoder", "refiner"]
    assert refresh_manifest(folder) and describe(folder)["stale"] == [] and read_manifest(folder)["archive"]["fit"] == "pad"
    (folder / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable.*s2m models manifest"):
        read_manifest(folder)


def test_shipped_manifest_matches_the_shipped_weights():
    manifest = read_manifest(shipped_folder())
    assert manifest is not None and manifest["name"] == "phantom", "write it: s2m models manifest s2m_retrieval/weights"
    assert stale_networks(shipped_folder(), manifest) == [], \
        "shipped weights changed: rerun `s2m models manifest s2m_retrieval/weights`"


def test_names_resolve_under_home(home, tmp_path):
    assert resolve_model(None, home) == shipped_folder() == resolve_model("phantom", home)
    assert resolve_model("alpha", home) == home / "models" / "alpha"
    assert resolve_model(str(home / "models" / "beta"), home) == home / "models" / "beta"
    assert [b["name"] for b in list_bundles(home)] == ["phantom", "alpha", "beta"]
    with pytest.raises(CheckpointError, match="no model bundle named 'gamma' \\(known: phantom, alpha, beta\\)"):
        resolve_model("gamma", home)
    with pytest.raises(CheckpointError, match="folder not found"):
        resolve_model(str(tmp_path / "nowhere"), home)
    with pytest.raises(BadInputError):
        resolve_model("", home)
    versions = read_manifest(home / "models" / "alpha")["networks"]
    assert bundles_with({k: versions[k]["version"] for k in ("generator", "inverter")}, home) == ["alpha"]


def test_models_commands(home, runner):
    listed = runner.invoke(app, ["models", "list", "--home", str(home)])
    assert listed.exit_code == 0 and "alpha" in listed.stdout and "phantom" in listed.stdout
    # the shipped bundle holds what queries need; what it lacks (the latent D, for more training) is named
    lacking = read_manifest(shipped_folder())["missing"]
    assert lacking == ["latent_discriminator"] and "missing latent_discriminator" in listed.stdout
    shown = runner.invoke(app, ["models", "show", "alpha", "--home", str(home), "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["networks"]["encoder"]["version"]
    shipped = runner.invoke(app, ["models", "show", "--home", str(home)])
    assert shipped.exit_code == 0 and "bundle 'phantom'" in shipped.stdout
    for net in read_manifest(shipped_folder())["missing"]:
        assert f"{net:<21} missing: needed for" in shipped.stdout
    bad = runner.invoke(app, ["models", "show", "gamma", "--home", str(home)])
    assert isinstance(bad.exception, CheckpointError)


def _retrieve(runner, sketch_png, home, *extra):
    return runner.invoke(app, ["retrieve", str(sketch_png), "--home", str(home), "--k", "2", "--json", *extra])


def test_model_selection_and_the_index_bundle_mismatch(home, runner, tmp_path):
    from PIL import Image

    sketch_png = tmp_path / "sketch.png"
    Image.fromarray(phantom_sketch()).save(sketch_png)
    ok = _retrieve(runner, sketch_png, home, "--model", "alpha")
    assert ok.exit_code == 0, ok.output
    assert len(json.loads(ok.stdout)["hits"]) == 2
    by_path = _retrieve(runner, sketch_png, home, "--model", str(home / "models" / "alpha"))
    assert by_path.exit_code == 0 and json.loads(by_path.stdout)["hits"] == json.loads(ok.stdout)["hits"]
    bad = _retrieve(runner, sketch_png, home, "--model", "beta")
    assert isinstance(bad.exception, VersionMismatchError)
    message = str(bad.exception)
    assert message.startswith("index 'default' was built with generator") and "(model bundle 'alpha')" in message
    assert "query with --model alpha" in message


def test_index_build_with_a_named_bundle(home, runner, setup, tmp_path):
    """`s2m index build --model NAME` encodes with that bundle; querying with it works, with another is refused."""
    from PIL import Image

    shutil.rmtree(home / "indexes")
    (home / "s2m.db").unlink()
    built = runner.invoke(app, ["index", "build", str(setup.archive), "--home", str(home), "--model", "beta",
                                "--encoder", "inverter:perceptual=random"])
    assert built.exit_code == 0, built.output
    sketch_png = tmp_path / "sketch.png"
    Image.fromarray(phantom_sketch()).save(sketch_png)
    assert _retrieve(runner, sketch_png, home, "--model", "beta").exit_code == 0
    assert isinstance(_retrieve(runner, sketch_png, home, "--model", "alpha").exception, VersionMismatchError)
    twice = runner.invoke(app, ["index", "build", str(setup.archive), "--home", str(home), "--model", "beta",
                                "--encoder", f"inverter:models={home / 'models' / 'beta'}"])
    assert isinstance(twice.exception, BadInputError) and "give the model bundle once" in str(twice.exception)


def test_engine_finds_bundle_names_under_its_home(home, monkeypatch, tmp_path):
    from retrieval_helpers import phantom_sketch as sketch

    from s2m_retrieval.query.engine import RetrievalEngine

    monkeypatch.setenv("S2M_HOME", str(tmp_path / "elsewhere"))  # the home given to open() wins
    with RetrievalEngine.open(home=home, models="alpha") as engine:
        assert len(engine.query_sketch(sketch(), k=2).hits) == 2
    with pytest.raises(VersionMismatchError, match="query with --model alpha"):
        RetrievalEngine.open(home=home, models="beta")


def test_an_empty_bundle_name_is_refused_naming_the_cli_flag_and_the_python_parameter():
    from s2m_retrieval.errors import BadInputError
    from s2m_retrieval.model.bundle import resolve_model

    with pytest.raises(BadInputError, match=r"--model, or models= in Python"):
        resolve_model("")
