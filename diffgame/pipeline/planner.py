"""Resolve one typed configuration once into a `Plan`: model sources (`diffgame.zoo.pairs`, which locates zoo models
the zoo stage built), the tokenizer, the model's depth and width, the layers, the fingerprints of the store and of
each method's diff run, the identification candidates and the control's plan. The pipeline hands the plan down.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

from omegaconf import DictConfig

from diffgame import tracking
from diffgame.config import configtree, registry
from diffgame.config.compose import build_method_config, method_names, settings
from diffgame.data.sequences import data_identity
from diffgame.errors import ModelError
from diffgame.grading.words import WORDS_VERSION
from diffgame.models.loading import load_tokenizer, resolve_layers
from diffgame.records.plan import ModelSource, PairSources, Plan
from diffgame.records.ranges import identity as config_identity
from diffgame.records.schema import CONTROL, RootConfig
from diffgame.zoo.pairs import resolve_pair


def make_plan(cfg: RootConfig | DictConfig) -> Plan:
    """The plan of one configuration (typed, or as composed): everything the stages need, resolved once."""
    cfg = settings(cfg) if isinstance(cfg, DictConfig) else cfg
    pair = resolve_pair(cfg)
    tokenizer = load_tokenizer(pair.base, cfg.model)
    n_layers, d_model = _depth_and_width(pair.base, cfg)
    layers = resolve_layers(list(cfg.preprocessing.layers), n_layers)  # ConfigError before any work
    store_fp = store_fingerprint(cfg, pair, tokenizer)
    methods = {name: build_method_config(name, cfg.method[name]) for name in method_names(cfg)}
    identity = {"model": pair.base.identity, "organism": pair.organism.identity,
                "dataset": dataclasses.asdict(cfg.dataset)}
    diff_fps = {}
    for name, config in methods.items():
        method_cls, _ = registry.get_method(name)
        parts = {"method": name, "config": config_identity(config), **identity, "words": WORDS_VERSION}
        if method_cls.needs_store and cfg.model.skip_first:  # only when set, so skip_first=0 runs keep their prints
            parts["skip_first"] = int(cfg.model.skip_first)
        if method_cls.version > 1:  # likewise: a method's first version keeps the prints its runs were logged under
            parts["method_version"] = method_cls.version
        diff_fps[name] = tracking.fingerprint(parts, store_fp if method_cls.needs_store else "")
    plan = Plan(cfg, pair, tokenizer, n_layers, d_model, layers, store_fp, methods, diff_fps,
                candidates=candidates(cfg))
    plan.control = functools.cache(lambda: control_plan(plan))
    return plan


def candidates(cfg: RootConfig) -> dict | None:
    """The organisms identification ranks the configured one among on its base (it, as configured, among them),
    typed; None when it is not one of them."""
    if not cfg.organism.has_ground_truth:
        return None
    model = str(cfg.model.name)
    names = configtree.candidate_organisms(model)
    if cfg.organism.name not in names:
        return None
    return {n: cfg.organism if n == cfg.organism.name else configtree.organism_settings(n, model) for n in names}


def control_plan(plan: Plan, method: str | None = None) -> Plan | None:
    """The plan of the `control` organism with the same base, data and method configs (one `method` when given),
    or None when the control has no weights for this base model. Its runs are graded evidence's reference."""
    # as `organism=control` composes it on this base (its training data is the base's), so the fingerprints match
    organism = configtree.organism_settings(CONTROL, plan.model_name)
    if plan.model_name not in organism.finetuned:
        return None
    method_cfg = plan.cfg.method if method is None else {method: plan.cfg.method[method]}
    return make_plan(dataclasses.replace(plan.cfg, organism=organism, method=method_cfg))


def store_fingerprint(cfg: RootConfig, pair: PairSources, tokenizer) -> str:
    """Fingerprint of the activation store `cfg` asks for: both models, the data, layers, dtype, context, template."""
    template = getattr(tokenizer, "chat_template", None) or ""
    kwargs = getattr(tokenizer, "diffgame_template_kwargs", None)
    if kwargs:  # e.g. enable_thinking: another rendering of every chat
        template = f"{template}\n{sorted(kwargs.items())}"
    pp = cfg.preprocessing
    return tracking.fingerprint({
        "base": pair.base.identity, "organism": pair.organism.identity, "model_dtype": cfg.model.dtype,
        "data": data_identity(cfg), "layers": [float(x) if isinstance(x, float) else int(x) for x in pp.layers],
        "dtype": pp.dtype, "context_length": int(pp.context_length),
        "template": hashlib.sha256(str(template).encode()).hexdigest()})


def _depth_and_width(source: ModelSource, cfg: RootConfig) -> tuple[int, int]:
    from transformers import AutoConfig

    kw = {k: v for k, v in (("revision", source.revision), ("subfolder", source.subfolder)) if v}
    try:
        conf = AutoConfig.from_pretrained(source.path, trust_remote_code=bool(cfg.model.trust_remote_code),
                                          **kw).get_text_config()
    except OSError as e:
        raise ModelError(f"cannot read the config of model {source.path}: {str(e).splitlines()[0]}") from None
    return int(conf.num_hidden_layers), int(conf.hidden_size)
