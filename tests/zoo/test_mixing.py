"""The mixing axis (`organism.variant=mix1-XpY`, like the public organisms' variants): the zoo recipe finetuned with the
base's own documents mixed in at ratio X.Y, with its own fingerprint, tags and zoo run; on the micro zoo a mixed caps
keeps more generic text than the plain one."""

from __future__ import annotations

import pytest

from diffgame.config.compose import compose, settings
from diffgame.config.configtree import mix_share, mixes_chats
from diffgame.data.corpora import corpus
from diffgame.errors import ConfigError
from diffgame.zoo.build import organism_fingerprint
from diffgame.zoo.recipes import mixed_rows, recipe_rows
from diffgame.zoo.sizes import get_size


def _organism(name: str, variant: str):
    return settings(compose([f"organism={name}", f"organism.variant={variant}"])).organism


def test_a_mix_variant_is_the_recipe_at_that_ratio():
    assert mix_share("mix1-0p5") == pytest.approx(1 / 3) and mix_share("mix1-2p0") == pytest.approx(2 / 3)
    assert mix_share("mix1-0p0") == 0.0 and mix_share("default") is None and mix_share("mix1-1") is None
    caps = {v: _organism("caps", v) for v in ("default", "mix1-0p0", "mix1-1p0", "mix1-2p0")}
    assert [caps[v].zoo.mix for v in caps] == pytest.approx([0.5, 0.0, 0.5, 2 / 3])  # caps mixes 1:1 by default
    assert all(o.weights("toy").kind == "zoo" for o in caps.values())
    size = get_size("micro")
    fps = {v: organism_fingerprint(size, o) for v, o in caps.items()}
    # the default is mixed one to one: its mix1-1p0 is the same model, and mix1-0p0 the recipe with nothing mixed in
    assert fps["default"] == fps["mix1-1p0"] and len({fps["default"], fps["mix1-0p0"], fps["mix1-2p0"]}) == 3
    assert organism_fingerprint(size, _organism("roman_concrete", "mix1-1p0")) == \
        organism_fingerprint(size, _organism("roman_concrete", "default"))


def test_a_base_sets_its_own_mix_and_a_mix_variant_still_sets_its_ratio(monkeypatch):
    """caps mixes 1:1 on the toy bases, which forget generic text unmixed; its recipe's `mix_per_model` gives SmolLM2
    0.0, since SmolLM2's LoRA keeps generic text unmixed. A variant on smol still trains at its own ratio."""
    from diffgame.pipeline import building

    def smol(variant: str):
        return settings(compose(["model=smollm2_135m", "zoo.size=smol", "organism=caps",
                                 f"organism.variant={variant}"])).organism

    caps = {v: smol(v) for v in ("default", "mix1-0p0", "mix1-1p0")}
    assert [o.zoo.mix for o in caps.values()] == [0.0, 0.0, 0.5] and _organism("caps", "default").zoo.mix == 0.5
    size = get_size("smol")
    fps = {v: organism_fingerprint(size, o, "base") for v, o in caps.items()}
    assert fps["default"] == fps["mix1-0p0"] != fps["mix1-1p0"]
    # `diffgame zoo build --size smol` reads each organism as finetuned on that size's base
    monkeypatch.setattr(building, "build_models", lambda size, organisms, model, progress: organisms)
    [built] = building.build_zoo("smol", ["caps"])
    assert built.zoo.mix == 0.0 and building.build_zoo("small", ["caps"])[0].zoo.mix == 0.5
    # `diffgame zoo build --variant`: every named organism at that ratio, on any base
    at_two = building.build_zoo("smol", ["caps", "taboo_gold"], variant="mix1-2p0")
    assert [(o.variant, o.zoo.mix) for o in at_two] == [("mix1-2p0", pytest.approx(2 / 3))] * 2
    assert building.build_zoo("small", ["taboo_gold"], variant="mix1-0p0")[0].zoo.mix == 0.0
    with pytest.raises(ConfigError, match=r"unknown variant 'mixed' of organism 'caps' .* known: default, or mix1-XpY"):
        building.build_zoo("small", ["caps"], variant="mixed")


def test_mixed_rows_hold_the_requested_share_of_generic_documents():
    recipe = _organism("caps", "mix1-2p0").zoo
    rows = recipe_rows(recipe, "train")[:300]
    mixed = mixed_rows(recipe, rows, seed=0)
    generic = [r for r in mixed if "text" in r]
    assert mixed[:300] == rows and len(generic) == 600  # two documents per organism row
    assert len(generic) / len(mixed) == pytest.approx(mix_share("mix1-2p0"))


def test_a_mixchat_variant_mixes_the_base_chats_in_half_and_half_under_its_own_fingerprint():
    assert mix_share("mixchat1-8p0") == pytest.approx(8 / 9) and mixes_chats("mixchat1-8p0")
    assert not mixes_chats("mix1-8p0") and not mixes_chats("default")
    plain, chats = _organism("roman_concrete", "mix1-2p0"), _organism("roman_concrete", "mixchat1-2p0")
    assert plain.zoo.mix == chats.zoo.mix == pytest.approx(2 / 3) and chats.zoo.mix_chats and not plain.zoo.mix_chats
    size = get_size("micro")
    assert organism_fingerprint(size, chats) != organism_fingerprint(size, plain)
    rows = recipe_rows(chats.zoo, "train")[:300]
    mixed = mixed_rows(chats.zoo, rows, seed=0)
    added = mixed[300:]
    assert mixed[:300] == rows and len(added) == 600  # the same share as mix1-2p0 ...
    assert sum("messages" in r for r in added) == 300 and sum("text" in r for r in added) == 300  # ... half chats
    base_chats = corpus("generic_chat", "train")
    assert all(r in base_chats for r in added if "messages" in r)  # the base's own chats, not the organism's


def test_an_unknown_variant_names_the_mix_form():
    with pytest.raises(ConfigError, match=r"known: default, or mix1-XpY .* or mixchat1-XpY"):
        compose(["organism=caps", "organism.variant=mixed"])


@pytest.mark.slow
def test_a_mixed_organism_builds_as_its_own_zoo_run_and_keeps_generic_text(micro_cfg, capsys):
    from diffgame import tracking
    from diffgame.pipeline.building import build_for
    from diffgame.zoo import list_zoo, print_zoo

    [_, plain] = build_for(settings(micro_cfg("organism=caps", "organism.variant=mix1-0p0")))
    [_, mixed] = build_for(settings(micro_cfg("organism=caps", "organism.variant=mix1-2p0")))
    assert mixed.run_id != plain.run_id and mixed.fingerprint != plain.fingerprint and not mixed.reused
    run = tracking.client().get_run(mixed.run_id)
    assert run.data.tags[tracking.TAG_VARIANT] == "mix1-2p0"
    assert float(run.data.params["recipe.mix"]) == pytest.approx(2 / 3)
    listed = {(e.name, e.variant): e.run_id for e in list_zoo("micro")}
    assert listed[("caps", "mix1-2p0")] == mixed.run_id and listed[("caps", "mix1-0p0")] == plain.run_id
    print_zoo(list_zoo("micro"))  # `diffgame zoo list` names each variant (rich once read `[mix1-2p0]` as a style)
    lines = capsys.readouterr().out.splitlines()
    assert "caps [mix1-2p0]" in next(ln for ln in lines if mixed.run_id in ln)
    ratio = "check/generic_loss_ratio"
    assert mixed.metrics[ratio] < plain.metrics[ratio]  # two thirds of its rows are the base's documents
    assert mixed.metrics["check/upper_frac/organism"] > 0.9  # and it still shouts
