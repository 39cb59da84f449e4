"""The method registry: built-ins are registered with their aliases; double registration and unknown names raise."""

import pytest

from diffgame.config import registry as methods
from diffgame.config.compose import build_method_config
from diffgame.errors import ConfigError
from diffgame.methods.kl import KLConfig, KLMethod
from diffgame.methods.normdiff import NormDiffConfig, NormDiffMethod


def test_builtins_and_alias():
    assert {"kl", "normdiff"} <= set(methods.known_methods())
    assert methods.get_method("kl") == (KLMethod, KLConfig)
    assert methods.get_method("activation_analysis") == (NormDiffMethod, NormDiffConfig)
    assert methods.canonical_name("activation_analysis") == "normdiff"


def test_double_registration_raises():
    with pytest.raises(ValueError, match=r"^method 'kl' is already registered$"):
        methods.register("kl", KLMethod, KLConfig)
    with pytest.raises(ValueError, match=r"^method 'activation_analysis' is already registered$"):
        methods.register("other", NormDiffMethod, NormDiffConfig, aliases=("activation_analysis",))
    assert "other" not in methods.known_methods()


def test_unknown_name_lists_known():
    known = ", ".join(methods.known_methods())
    with pytest.raises(ConfigError) as err:
        methods.get_method("kll")
    assert str(err.value) == f"unknown method 'kll'; known: {known}"


def test_build_config_checks_keys_and_choices():
    assert build_method_config("kl", {"divergence": "js"}) == KLConfig(divergence="js")
    with pytest.raises(ConfigError, match=r"invalid value 'jsd' for 'method.kl.divergence'; valid: kl, reverse_kl, js"):
        build_method_config("kl", {"divergence": "jsd"})
    with pytest.raises(ConfigError, match=r"unknown key 'method.normdiff.topk'; known: batch_tokens, positions, top_k_examples"):
        build_method_config("normdiff", {"topk": 3})
