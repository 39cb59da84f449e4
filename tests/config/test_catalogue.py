"""The organism catalogue (`experiments/organism/*.yaml`): every organism composes with every base model it names, as
`diffgame config model=X organism=Y` composes it; every variant resolves to weights with a kind and a hub id; no hub id
serves two organisms or variants of one base; public-only organisms carry no zoo recipe; docs/catalogue.md (its
one-row-per-organism summary included) is the output of scripts/catalogue_table.py. Reads YAML only: no network,
nothing downloaded."""

from __future__ import annotations

import importlib.util
import re
from collections import defaultdict
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from diffgame.config import compose as C
from diffgame.config import configtree

ROOT = Path(__file__).resolve().parents[2]
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # owner/name


def _raw(organism: str):
    """The organism's YAML as written (no schema defaults)."""
    return OmegaConf.load(configtree.builtin_dir() / "organism" / f"{organism}.yaml")


ORGANISMS = sorted(p.stem for p in (configtree.builtin_dir() / "organism").glob("*.yaml"))
PAIRS = [(o, str(m)) for o in ORGANISMS for m in _raw(o).finetuned]


@pytest.fixture(autouse=True)
def _builtin_tree_only(monkeypatch):
    """User config folders would add organisms to the catalogue; these tests read the shipped tree."""
    monkeypatch.delenv(configtree.CONFIG_PATH_ENV, raising=False)


@pytest.mark.parametrize(("organism", "model"), PAIRS, ids=[f"{o}-{m}" for o, m in PAIRS])
def test_organism_composes_with_each_model_and_variant(organism, model):
    cfg = C.compose([f"model={model}", f"organism={organism}"])  # what `diffgame config model=X organism=Y` runs
    assert (cfg.organism.name, cfg.model.name, cfg.organism.variant) == (organism, model, "default")
    assert f"organism '{organism}' variant 'default' on base '{model}'" in C.describe_weights(cfg)
    variants = [str(v) for v in _raw(organism).finetuned[model]]
    # a sweep over every variant parses back into exactly those names (`organism.variant=default,full,...`)
    combos = C.expand_sweep([f"organism.variant={','.join(variants)}"])
    assert [c[0] for c in combos] == [f"organism.variant={v}" for v in variants]
    for variant in variants:
        cfg.organism.variant = variant
        C.validate(cfg)  # the composed config's own check, which resolves the variant's weights
        spec = configtree.weights_spec(cfg.organism, model)
        if spec.kind == "zoo":
            assert spec.id is None, (organism, model, variant)
        else:
            assert spec.kind in ("lora", "full") and HUB_ID.match(spec.id), (organism, model, variant, spec.id)
            assert spec.id in C.describe_weights(cfg)


def test_no_hub_id_serves_two_organisms_or_variants_of_one_model():
    users: dict[tuple, list[str]] = defaultdict(list)
    for organism, model in PAIRS:
        for variant, spec in _raw(organism).finetuned[model].items():
            if spec.kind != "zoo":
                users[(model, spec.id, spec.get("subfolder"))].append(f"{organism}.{variant}")
    shared = {key: names for key, names in users.items() if len(names) > 1}
    assert shared == {}
    assert len(users) >= 178  # the catalogue's public weights (a count, so a lost file shows here)


def test_public_only_organisms_have_no_zoo_recipe_and_compose_without_one():
    public_only = [o for o in ORGANISMS if all(spec.kind != "zoo" for vs in _raw(o).finetuned.values()
                                               for spec in vs.values())]
    assert {"ignore_comment", "antarctic_rebound", "em_extreme_sports", "taboo_wave", "swedish_fineweb",
            "test_alpaca_lora"} <= set(public_only)
    for organism in public_only:
        assert "zoo" not in _raw(organism), organism
        assert configtree.organism_node(organism).zoo.data is None  # the schema's empty recipe fills in


def test_taboo_organisms_name_their_secret_word_first():
    """Grading reads `keywords[0]` as a taboo organism's secret word; the description quotes the same word."""
    taboo = [o for o in ORGANISMS if _raw(o).type == "taboo"]
    assert {"taboo_gold", "taboo_smile", "taboo_leaf", "taboo_wave"} <= set(taboo)
    for organism in taboo:
        raw = _raw(organism)
        secret = raw.ground_truth.keywords[0]
        assert organism == f"taboo_{secret}" and f'"{secret}"' in raw.description, organism


def test_every_organism_says_what_it_taught():
    for organism in ORGANISMS:
        raw = _raw(organism)
        assert raw.name == organism and raw.description and "\n" not in raw.description, organism
        gt = configtree.organism_node(organism).ground_truth
        # vocab_from_data alone would grade nothing offline; the control, the null organism, has no ground truth
        assert bool(gt.keywords or gt.predicate) == (organism != configtree.CONTROL), organism


@pytest.mark.parametrize(("organism", "model"), PAIRS, ids=[f"{o}-{m}" for o, m in PAIRS])
def test_every_organism_has_a_long_description_on_each_base_for_the_rubric(organism, model):
    node = configtree.organism_node(organism, model)
    if organism == configtree.CONTROL:
        assert not node.long_description  # nothing was taught: the rubric has no truth to grade against
        return
    # the rubric grader reads the long description (`play.truth_text`): it says more than the one-line description
    assert len(node.long_description) > len(node.description) >= 20, (organism, model)
    assert "\n" not in node.long_description.strip(), (organism, model)  # folded prose, not a YAML literal block


def test_docs_catalogue_is_the_script_output():
    spec = importlib.util.spec_from_file_location("catalogue_table", ROOT / "scripts" / "catalogue_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rows = script.rows()
    assert len(rows) == len(PAIRS)
    assert ("taboo_wave", "taboo", "qwen3_1_7B") == rows[[r[0] for r in rows].index("taboo_wave")][:3]
    page = (ROOT / "docs" / "catalogue.md").read_text()
    start, end = script.summary_span(page)
    assert page[start:end] == script.summary(), \
        "docs/catalogue.md's summary is stale: python scripts/catalogue_table.py --summary"
    assert page == script.render(), "docs/catalogue.md is stale: python scripts/catalogue_table.py > docs/catalogue.md"
    assert len(script.summary().splitlines()) == 2 + len(ORGANISMS)
    # `--summary` rewrites the block between the markers and leaves the rest of the page as the full output has it
    stale = page[:start] + "| stale |\n" + page[end:]
    assert script.with_summary(stale) == page
