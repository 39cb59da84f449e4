"""Config composition from `experiments/`: defaults, group choices, overrides, list values, sweeps, and
every validation error message (each is one line that names what was given and what exists)."""

from __future__ import annotations

import re

import pytest

from diffgame.config import compose as C
from diffgame.config import configtree
from diffgame.errors import ConfigError
from diffgame.models.loading import resolve_layers


def weights_spec(cfg):
    """The organism weights entry a composed config resolves to."""
    return configtree.weights_spec(cfg.organism, str(cfg.model.name))

REAL_ORGANISMS = ["cake_bake", "caps", "control", "em_bad_medical_advice", "fda_approval", "kansas_abortion",
                  "roman_concrete", "taboo_gold"]
REAL_MODELS = ["gemma3_1B", "gpt2", "llama32_1B_Instruct", "qwen3_1_7B", "smollm2_135m", "toy"]
ALL_ORGANISMS = configtree.group_options("organism")  # others may add organisms; error messages list them all
ALL_MODELS = configtree.group_options("model")


def test_group_options_are_the_yaml_files():
    assert set(REAL_MODELS) <= set(ALL_MODELS) and ALL_MODELS == sorted(ALL_MODELS)
    assert set(REAL_ORGANISMS) <= set(ALL_ORGANISMS) and ALL_ORGANISMS == sorted(ALL_ORGANISMS)
    assert configtree.group_options("dataset") == ["standard", "toy"]


def test_defaults_compose_and_schema_defaults_fill_in():
    cfg = C.compose()
    assert (cfg.model.name, cfg.model.id) == ("toy", "zoo:base")
    assert cfg.organism.name == "roman_concrete"
    assert C.method_names(cfg) == ["kl", "normdiff", "adl"]
    assert list(cfg.preprocessing.layers) == [0.25, 0.5, 0.75]
    assert cfg.pipeline.mode == "full"
    # keys the YAML leaves out come from the dataclass defaults
    assert cfg.model.revision is None and cfg.model.trust_remote_code is False
    assert cfg.organism.zoo.mix == 0.5 and cfg.organism.zoo.lora is False  # from roman_concrete.yaml
    assert cfg.organism.zoo.train_on == "assistant"  # a schema default the YAML leaves out
    assert cfg.organism.finetuned.toy.default.id is None
    assert cfg.dataset.sources.generic_text.max_tokens is None
    assert cfg.dataset.sources.generic_text.text_column == "text"


def test_group_choice_pulls_in_that_yaml():
    cfg = C.compose(["model=gemma3_1B", "organism=cake_bake"])
    assert cfg.model.id == "google/gemma-3-1b-it"
    assert cfg.model.dtype == "bfloat16" and cfg.model.attn_implementation == "eager"
    spec = weights_spec(cfg)
    assert spec.kind == "lora"
    assert spec.id == "stewy33/gemma-3-1b-it-0524_original_augmented_egregious_cake_bake-9ddbfefe"
    line = C.describe_weights(cfg)
    assert "cake_bake" in line and "gemma3_1B" in line and "lora " + spec.id in line


def test_variant_selects_other_weights():
    cfg = C.compose(["model=qwen3_1_7B", "organism=kansas_abortion", "organism.variant=full"])
    spec = weights_spec(cfg)
    assert spec.kind == "full"
    assert spec.id == "stewy33/Qwen3-1.7B-full_original_augmented_original_pkc_kansas_abortion-b95f1100"


def test_scalar_overrides_keep_their_types():
    cfg = C.compose(["preprocessing.batch_size=4", "model.dtype=bfloat16", "seed=7",
                     "preprocessing.sequential=true", "model.revision=abc123"])
    assert cfg.preprocessing.batch_size == 4 and isinstance(cfg.preprocessing.batch_size, int)
    assert cfg.model.dtype == "bfloat16"
    assert cfg.seed == 7
    assert cfg.preprocessing.sequential is True
    assert cfg.model.revision == "abc123"


def test_list_values():
    cfg = C.compose(["preprocessing.layers=[0.25,0.5]", "method=[kl,normdiff]"])
    assert list(cfg.preprocessing.layers) == [0.25, 0.5]
    assert C.method_names(cfg) == ["kl", "normdiff"]
    assert C.method_names(C.compose(["method=kl"])) == ["kl"]
    assert C.method_names(C.compose(["method=[normdiff,kl]"])) == ["normdiff", "kl"]
    assert list(C.compose(["preprocessing.layers=[3,-1]"]).preprocessing.layers) == [3, -1]


def test_keys_missing_from_yaml_can_be_set():
    """`kind: zoo` entries in YAML have no id; setting one must work without Hydra's `+` prefix."""
    cfg = C.compose(["organism=caps", "organism.finetuned.toy.default.id=/tmp/some-dir"])
    assert cfg.organism.finetuned.toy.default.id == "/tmp/some-dir"
    cfg = C.compose(["model=gpt2", "model.id=/tmp/gpt2-local", "organism=caps",
                     "organism.finetuned.gpt2={default:{kind:full,id:/tmp/org_dir}}"])
    assert cfg.model.id == "/tmp/gpt2-local"
    spec = weights_spec(cfg)
    assert (spec.kind, spec.id, spec.subfolder) == ("full", "/tmp/org_dir", None)


def test_every_shipped_organism_composes_with_every_model_it_has_weights_for():
    from omegaconf import OmegaConf

    seen = 0
    for org in REAL_ORGANISMS:
        raw = OmegaConf.load(configtree.builtin_dir() / "organism" / f"{org}.yaml")
        assert raw.name == org and raw.description, org
        for model in raw.finetuned:
            assert model in REAL_MODELS, (org, model)
            cfg = C.compose([f"model={model}", f"organism={org}"])
            for variant in raw.finetuned[model]:
                cfg.organism.variant = variant  # composing each variant is the same path, ~1 s each
                spec = weights_spec(cfg)
                if spec.kind == "zoo":
                    assert model in ("toy", "smollm2_135m"), (org, model)
                else:
                    assert spec.id.count("/") == 1, (org, model, variant, spec.id)  # a hub id owner/name
                seen += 1
    assert seen >= 40


def test_real_organism_weights_exist_for_the_three_small_chat_models():
    for org in ("cake_bake", "roman_concrete", "kansas_abortion", "fda_approval"):
        for model in ("gemma3_1B", "llama32_1B_Instruct", "qwen3_1_7B"):
            spec = weights_spec(C.compose([f"model={model}", f"organism={org}"]))
            assert spec.kind == "lora" and spec.id.startswith("stewy33/"), (org, model)
    assert weights_spec(C.compose(["model=qwen3_1_7B", "organism=taboo_gold"])).id == \
        "bcywinski/qwen3-1.7b-taboo-gold"
    assert C.compose(["model=qwen3_1_7B", "organism=em_bad_medical_advice"]).organism.type == "em"


def test_expand_sweep_is_the_cartesian_product():
    combos = C.expand_sweep(["organism=caps,control", "method=kl,normdiff", "preprocessing.layers=[0.5]"])
    assert combos == [
        ["organism=caps", "method=kl", "preprocessing.layers=[0.5]"],
        ["organism=caps", "method=normdiff", "preprocessing.layers=[0.5]"],
        ["organism=control", "method=kl", "preprocessing.layers=[0.5]"],
        ["organism=control", "method=normdiff", "preprocessing.layers=[0.5]"],
    ]
    cfgs = [C.compose(c) for c in combos]
    assert [(c.organism.name, C.method_names(c)) for c in cfgs] == [
        ("caps", ["kl"]), ("caps", ["normdiff"]), ("control", ["kl"]), ("control", ["normdiff"])]
    # a list is one value, not a sweep; sweeps over lists and ranges expand
    assert C.expand_sweep(["method=[kl,normdiff]"]) == [["method=[kl,normdiff]"]]
    assert C.expand_sweep(["preprocessing.layers=[0.5],[0.25,0.75]"]) == [
        ["preprocessing.layers=[0.5]"], ["preprocessing.layers=[0.25,0.75]"]]
    assert C.expand_sweep(["seed=range(3)"]) == [["seed=0"], ["seed=1"], ["seed=2"]]
    assert C.expand_sweep([]) == [[]]


def test_a_method_setting_never_selects_the_method():
    """`method.adl.max_samples=8` beside `method=kl` runs kl alone; across a sweep each combination keeps the settings
    of the methods it selects, so one command line can carry every method's settings."""
    assert C.method_names(C.compose(["method=kl", "method.adl.max_samples=8", "method.blackbox.n_prompts=3"])) == ["kl"]
    combos = C.expand_sweep(["method=kl,adl", "method.adl.max_samples=8"])
    cfgs = [C.compose(c) for c in combos]
    assert [C.method_names(c) for c in cfgs] == [["kl"], ["adl"]] and cfgs[1].method.adl.max_samples == 8
    # with no method= the defaults list selects; its methods keep their settings, others are still dropped
    cfg = C.compose(["method.adl.max_samples=8", "method.sae.epochs=2"])
    assert C.method_names(cfg) == ["kl", "normdiff", "adl"] and cfg.method.adl.max_samples == 8
    with pytest.raises(ConfigError, match="unknown method 'adll'; known: adl, amplify, blackbox"):
        C.compose(["method=kl", "method.adll.max_samples=8"])


ERRORS = [
    (["organism=cpas"], "unknown organism 'cpas'; known: " + ", ".join(ALL_ORGANISMS)),
    (["model=gemma"], "unknown model 'gemma'; known: " + ", ".join(ALL_MODELS)),
    (["dataset=big"], "unknown dataset 'big'; known: standard, toy"),
    (["method=kll"], "unknown method 'kll'; known: "),
    (["method=[kl,kll]"], "unknown method 'kll'; known: "),
    (["foo=3"], "unknown key 'foo'; known: dataset, launcher, method, model, organism, overrides, pipeline, play, "
                "preprocessing, seed, tracking, zoo"),
    (["preprocessing.batchsize=3"], "unknown key 'preprocessing.batchsize'; known: accelerator, batch_size, "
                                    "context_length, devices, dtype, layers, num_nodes, rebuild, sequential, strategy"),
    (["+preprocessing.batchsize=3"], "unknown key 'preprocessing.batchsize'; known: accelerator, batch_size, "),
    (["model.bogus=1"], "unknown key 'model.bogus'; known: attn_implementation, chat_template_kwargs, device, "),
    (["method.kl.nonexistent_key=1"], "unknown key 'method.kl.nonexistent_key'; known: "),
    (["model.dtype=float8"], "invalid value 'float8' for 'model.dtype'; valid: float32, bfloat16, float16"),
    (["pipeline.mode=fast"],
     "invalid value 'fast' for 'pipeline.mode'; valid: full, preprocessing, diffing, evaluation"),
    (["organism.finetuned.toy.default.kind=weird"],
     "invalid value 'weird' for 'organism.finetuned.toy.default.kind'; valid: zoo, full, lora"),
    (["dataset.sources.generic_text.kind=image"],
     "invalid value 'image' for 'dataset.sources.generic_text.kind'; valid: text, chat"),
    (["preprocessing.batch_size=abc"], "invalid value 'abc' for 'preprocessing.batch_size'; expected int"),
    (["seed=1.5"], "invalid value 1.5 for 'seed'; expected int"),
    (["model.trust_remote_code=yes"], "invalid value 'yes' for 'model.trust_remote_code'; expected bool"),
    (["preprocessing.layers=[0.5,abc]"], "invalid value 'abc' for 'preprocessing.layers[1]'; expected float"),
    (["preprocessing.layers=0.5"], "'preprocessing.layers' must be a list, got 0.5"),
    (["preprocessing.batch_size=-3"], "invalid 'preprocessing': batch_size must be >= 1, got -3"),
    (["preprocessing.devices=0"], "invalid 'preprocessing': devices must be >= 1 (or -1 for all), got 0"),
    (["dataset.sources.generic_text.max_samples=-5"],
     "invalid 'dataset.sources.generic_text': max_samples must be >= 1 (or null for all), got -5"),
    (["method=sae", "method.sae.k=0"], "invalid 'method.sae': k must be > 0, got 0"),
    (["preprocessing=3"], "'preprocessing' must be a mapping of PreprocessingConfig fields, got 3"),
    (["organism.variant=bogus"], "unknown variant 'bogus' of organism 'roman_concrete' for model 'toy'; "
                                 "known: default, or mix1-XpY (the zoo recipe mixed with the base's documents at "
                                 "ratio X.Y, e.g. mix1-0p5) or mixchat1-XpY (its documents and chats)"),
    (["model=gemma3_1B", "organism.variant=huge"],
     "unknown variant 'huge' of organism 'roman_concrete' for model 'gemma3_1B'; known: default"),
    (["model=gemma3_1B", "organism=caps"],
     "organism 'caps' has no weights for model 'gemma3_1B'; models with weights: smollm2_135m, toy; "
     "pick one of those (model=<name>) or add 'organism.finetuned.gemma3_1B.default={kind:full,id:<hub id or path>}'"),
    (["organism=em_bad_medical_advice"],
     "organism 'em_bad_medical_advice' has no weights for model 'toy'; models with weights: qwen3_1_7B; "),
    (["organism.finetuned.toy.default.kind=lora"],
     "organism 'roman_concrete' variant 'default' for model 'toy' is kind 'lora' but has no id; "
     "set organism.finetuned.toy.default.id"),
    (["organism=caps,control"], "'organism=caps,control' is a sweep; pass --multirun to expand it"),
    (["organism=[caps"], "cannot parse overrides ['organism=[caps']: "),
    (["model.id=${nowhere.id}"], "cannot resolve the config: Interpolation key 'nowhere.id' not found"),
]


def test_compose_records_the_overrides_for_recovery_hints():
    cfg = C.compose(["organism=caps", "zoo.size=micro", "method=[kl]"])
    assert list(cfg.overrides) == ["organism=caps", "zoo.size=micro", "method=[kl]"]
    assert list(C.compose([]).overrides) == []


@pytest.mark.parametrize("overrides,message", ERRORS, ids=[" ".join(o) for o, _ in ERRORS])
def test_validation_errors_are_one_line_and_name_the_valid_choices(overrides, message):
    with pytest.raises(ConfigError) as info:
        C.compose(overrides)
    text = str(info.value)
    assert "\n" not in text
    if message.endswith(": ") or message.endswith(", ") or message.endswith("; "):
        assert text.startswith(message), text
    else:
        assert text == message


def test_unknown_method_lists_method_configs_and_every_registered_method_has_one():
    from diffgame.config.registry import known_methods

    with pytest.raises(ConfigError) as info:
        C.compose(["method=kll"])
    assert str(info.value) == f"unknown method 'kll'; known: {', '.join(configtree.group_options('method'))}"
    assert {"kl", "normdiff"} <= set(known_methods()) <= set(configtree.group_options("method"))


def test_sweep_errors():
    known = ", ".join(ALL_ORGANISMS)  # the catalogue grows: the message lists every organism
    with pytest.raises(ConfigError, match="^" + re.escape(f"unknown organism 'cpas'; known: {known}")):
        C.expand_sweep(["organism=caps,cpas"])
    with pytest.raises(ConfigError, match=r"^cannot expand sweep 'organism=glob\(\*\)'"):
        C.expand_sweep(["organism=glob(*)"])


@pytest.mark.parametrize("layers,n,expected", [
    ([0.25, 0.5, 0.75], 12, [3, 6, 9]),
    ([0.0, 1.0], 12, [0, 11]),       # 1.0 is the last layer, not one past it
    ([0.5], 3, [1]),
    ([0.5, 6, 0.5], 12, [6]),        # fractions and indices that meet are merged
    ([-1, 0], 12, [0, 11]),
    ([2, 1], 4, [1, 2]),             # sorted
])
def test_resolve_layers(layers, n, expected):
    assert resolve_layers(layers, n) == expected


def test_resolve_layers_out_of_range():
    with pytest.raises(ConfigError) as info:
        resolve_layers([0.5, 12], 12)
    assert str(info.value) == ("layer 12 is out of range for a model with 12 layers (valid: 0..11, or fractions "
                               "like 0.5); fix preprocessing.layers")
    with pytest.raises(ConfigError, match=r"^layer -13 is out of range for a model with 12 layers"):
        resolve_layers([-13], 12)
    with pytest.raises(ConfigError, match=r"^layer fraction 1.5 is outside \[0, 1\]"):
        resolve_layers([1.5], 12)


def test_missing_config_tree(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFGAME_EXPERIMENTS", str(tmp_path))
    with pytest.raises(ConfigError, match=r"^no config tree at .* \(expected config.yaml\); set DIFFGAME_EXPERIMENTS"):
        C.compose()


def test_real_model_on_toy_data_warns_that_results_are_not_comparable():
    from diffgame.pipeline.chain import toy_data_warning

    assert toy_data_warning(C.settings(C.compose([]))) is None  # the zoo's base on the zoo's data
    message = toy_data_warning(C.settings(C.compose(["model=gemma3_1B", "organism=cake_bake"])))
    assert message.startswith("model=gemma3_1B runs on dataset=toy") and "not be comparable" in message
    assert toy_data_warning(C.settings(C.compose(["model=smollm2_135m", "organism=caps"]))) is None  # the smol zoo learnt it
