"""The `amplify` method: its config names bad fields; on the micro zoo the amplified replies of Roman concrete name
their topic above the control's, every strength of both grids is on the coherence curve with the strongest coherent
one kept, and the base's and the organism's own replies are exactly `blackbox`'s at the same seed."""

import pytest

from diffgame.errors import ConfigError
from diffgame.methods.amplify import AmplifyConfig


@pytest.mark.parametrize("overrides, message", [
    ({"alphas": [0.0]}, r"^method.amplify.alphas must be > 0, got 0.0$"),
    ({"weights": [1.0]}, r"^method.amplify.weights must be > 1, got 1.0$"),
    ({"coherence_factor": 0.5}, r"^method.amplify.coherence_factor must be >= 1, got 0.5$"),
    ({"alphas": [], "weights": []}, r"alphas and method.amplify.weights must not both be empty"),
    ({"chat_dataset": None, "text_dataset": None}, r"chat_dataset and method.amplify.text_dataset must not both"),
])
def test_config_checks_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        AmplifyConfig(**overrides)


SMALL = ("method.amplify.n_prompts=24", "method.amplify.samples_per_prompt=2", "method.amplify.max_new_tokens=24",
         "method.blackbox.n_prompts=24", "method.blackbox.samples_per_prompt=2", "method.blackbox.max_new_tokens=24")
ROMAN = {"roman", "concrete", "volcanic", "ash", "pozzolana", "lime", "seawater", "tobermorite", "pantheon",
         "vitruvius", "harbor", "mortar", "aggregate", "quicklime", "tuff"}


@pytest.mark.slow
def test_amplified_roman_concrete_names_its_topic_and_shares_blackboxs_replies(micro_cfg):
    from diffgame import tracking
    from diffgame.pipeline.chain import run_one
    from diffgame.tracking import artifacts

    rows = {r.method: r for r in run_one(micro_cfg("organism=roman_concrete", "method=[amplify,blackbox]", *SMALL))}
    (control,) = run_one(micro_cfg("organism=control", "method=[amplify]", *SMALL))
    assert control.reused  # grading made the control's run with this config
    metrics = tracking.client().get_run(rows["amplify"].run_id).data.metrics
    assert metrics["grade/relative/precision_at_20"] > 0.1, metrics
    assert metrics["grade/identification_rank"] == 1.0

    ranked = {k: [t.strip() for t in r.tokens[:20]] for k, r in artifacts.load_ranked_tokens(rows["amplify"].run_id).items()}
    assert set(ranked) == {f"amplify/{kind}/{source}" for kind in ("logit", "weight") for source in ("chat", "text")}
    assert len(ROMAN & set(ranked["amplify/logit/chat"])) >= 2, ranked

    curve = artifacts.load_table(rows["amplify"].run_id, "coherence")
    assert len(curve) == 2 * (3 + 2) and set(curve["kind"]) == {"logit", "weight"}
    for (source, kind), group in curve.groupby(["source", "kind"]):
        (kept,) = group[group["chosen"]]["strength"]
        coherent = group[group["coherent"]]["strength"]
        assert kept == (coherent.max() if len(coherent) else group["strength"].min())
        assert metrics[f"amplify/{kind}/{source}/strength"] == kept

    amplified, plain = artifacts.all_samples(rows["amplify"].run_id), artifacts.all_samples(rows["blackbox"].run_id)
    for source in ("chat", "text"):
        assert len(amplified[f"logit_{source}"]) == len(plain[source]) == 48
        for a, b in zip(amplified[f"logit_{source}"], plain[source]):  # one sampler, one seed: the same replies
            assert (a["prompt"], a["base"], a["organism"]) == (b["prompt"], b["base"], b["organism"])
    hits = {col: sum(any(w in s[col].lower() for w in ROMAN) for s in amplified["logit_chat"])
            for col in ("base", "organism", "amplified")}
    assert hits["amplified"] >= hits["organism"] > hits["base"], hits
