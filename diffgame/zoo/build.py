"""Build the zoo: train the base then each organism, one `zoo` MLflow run each, reused by fingerprint.

A run holds the model and tokenizer under `model/` (safetensors), the loss curve (`train/loss` per step and
`loss.png`) and, for organisms, the behaviour checks (`check/...`).
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from diffgame import tracking
from diffgame.data.corpora import CORPUS_VERSION, corpus
from diffgame.errors import ConfigError, ModelError
from diffgame.models.sources import resolve_model
from diffgame.records.schema import ModelConfig, OrganismConfig
from diffgame.tracking import claims
from diffgame.tracking.locations import require_space
from diffgame.zoo import narrowness
from diffgame.zoo.recipes import mixed_rows, recipe_identity, recipe_rows, validate_data
from diffgame.zoo.sizes import ZooSize, model_bytes, new_model

EXPERIMENT = "diffgame-zoo"
TAG_SIZE = "diffgame.zoo.size"
TAG_NARROWNESS = "diffgame.zoo.narrowness"
"""Version of the narrowness metrics a zoo organism run holds (`diffgame.zoo.narrowness.VERSION`)."""
BASE = "base"
BASE_CORPORA = ("generic_text", "generic_chat")
"""What the base (and its tokenizer) learns. No organism's corpus shapes the tokenizer, so a built-in organism's words
are split into pieces exactly as a bring-your-own organism's are, and the word-level readouts (`diffgame.grading.words`) put
them back together for both."""
TOKENIZER = "base_corpora"
"""What the zoo's tokenizer is fitted to (part of the base fingerprint; was every zoo corpus plus a taboo lexicon)."""


@dataclass
class ZooEntry:
    """One built zoo model: the base or an organism of one size, and the run that holds it."""

    name: str
    """`base` or the organism name."""
    size: str
    run_id: str
    model_dir: Path | None
    """Local directory of the saved HF model and tokenizer (None when the store is remote and not fetched)."""
    fingerprint: str
    reused: bool
    """True when a finished run with the same fingerprint already existed (no training)."""
    metrics: dict[str, float] = field(default_factory=dict)
    variant: str = tracking.DEFAULT_VARIANT
    """The organism variant the run was built as (`mix1-XpY`: its recipe mixed at that ratio)."""


def _say(msg: str) -> None:
    print(f"[diffgame zoo] {msg}", file=sys.stderr, flush=True)


def model_name(size: ZooSize) -> str:
    """The `model` config name whose organisms this size builds (`toy` for the from-scratch sizes)."""
    return size.pretrained_base or "toy"


BASE_FIELDS = ("name", "vocab_size", "n_layers", "d_model", "n_heads", "d_ff", "seq_len", "batch_size", "base_steps",
               "base_lr", "seed", "pretrained_base")
"""The `ZooSize` fields a base depends on: organism budgets can change without retraining the base."""


def base_fingerprint(size: ZooSize, source: dict | None = None) -> str:
    """Fingerprint of a trained base, or of a pretrained one given its resolved `source` identity."""
    fields = {f: getattr(size, f) for f in BASE_FIELDS}
    return tracking.fingerprint({"zoo": BASE, "size": fields, "corpus_version": CORPUS_VERSION, "tokenizer": TOKENIZER,
                                 **({"pretrained": source} if source else {})})


def organism_fingerprint(size: ZooSize, organism, base_fp: str | None = None) -> str:
    return tracking.fingerprint({"zoo": str(organism.name), "size": dataclasses.asdict(size),
                                 "corpus_version": CORPUS_VERSION, "recipe": recipe_identity(organism.zoo)},
                                base_fp or base_fingerprint(size))


def run_model_dir(run) -> Path:
    """Local `model/` directory of a zoo run, downloading it from a remote artifact store when needed."""
    local = tracking.local_artifact_dir(run)
    if local is not None and (local / "model").is_dir():
        return local / "model"
    import mlflow
    from mlflow.exceptions import MlflowException

    dst = Path.home() / ".cache" / "diffgame" / "zoo" / run.info.run_id
    if not (dst / "model" / "config.json").is_file():
        dst.mkdir(parents=True, exist_ok=True)
        try:
            mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="model", dst_path=str(dst),
                                                tracking_uri=tracking.resolve_uri())
        except MlflowException as e:
            raise ModelError(f"zoo run {run.info.run_id} has no model artifacts at {run.info.artifact_uri}/model "
                             f"({str(e).splitlines()[0]}); delete the run (`mlflow runs delete --run-id "
                             f"{run.info.run_id}`) and `diffgame zoo build` trains it again") from None
    return dst / "model"


def _find_built(fp: str):
    """The newest finished zoo run with fingerprint `fp` whose model is still there, or None.

    A run whose local `model/` artifacts are gone is marked FAILED with that error, so the caller trains it again."""
    found = tracking.find_finished("zoo", fp)
    local = tracking.local_artifact_dir(found) if found is not None else None
    if local is None or (local / "model" / "config.json").is_file():
        return found
    error = f"model artifacts missing from {local / 'model'}"
    tracking.abandon(found.info.run_id, error)
    _say(f"zoo run {found.info.run_id}: {error}; marked FAILED")
    return _find_built(fp)


def _entry(run, name: str, size: str, reused: bool, fetch: bool = True) -> ZooEntry:
    """A ZooEntry for `run`; without `fetch`, `model_dir` is None unless the artifacts are already local."""
    metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("check/") or k == "train/loss"}
    local = tracking.local_artifact_dir(run)
    model_dir = run_model_dir(run) if fetch else (local / "model" if local is not None else None)
    return ZooEntry(name, size, run.info.run_id, model_dir, run.data.tags.get(tracking.TAG_FINGERPRINT, ""),
                    reused, metrics, tracking.variant_of(run.data.tags))


def _log_training(run, losses: list[float], title: str) -> None:
    import time

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [Metric("train/loss", v, ts, i) for i, v in enumerate(losses)]
    for i in range(0, len(items), 500):
        tracking.client().log_batch(run.run_id, metrics=items[i:i + 500])
    fig, ax = plt.subplots(figsize=(5, 3))
    sns.lineplot(x=range(len(losses)), y=losses, ax=ax)
    ax.set(xlabel="step", ylabel="train loss", title=title)
    fig.tight_layout()
    run.log_figure(fig, "loss.png")
    plt.close(fig)


def _check_space(run, n_bytes: int, what: str) -> None:
    """Before training: room for the saved model twice over where both copies land (the temporary folder it is saved
    to, then the run's artifacts when they are local)."""
    needs = {Path(tempfile.gettempdir()): n_bytes}
    if run.artifact_dir is not None:
        needs[run.artifact_dir] = n_bytes
    require_space(needs, what, "free space there (or set TMPDIR, or a tracking store whose artifact root is on a "
                               "larger disk), then build again")


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def _save(run, model, tokenizer) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        run.log_artifacts(tmp, "model")


def _tags(size: ZooSize, name: str, variant: str = tracking.DEFAULT_VARIANT) -> dict:
    return {tracking.TAG_MODEL: model_name(size), tracking.TAG_ORGANISM: name, TAG_SIZE: size.name,
            tracking.TAG_VARIANT: variant}


# --- base ----------------------------------------------------------------------------------------
def train_base(size: ZooSize, progress: bool = True):
    """Tokenizer and base model trained from scratch on the generic corpora; returns (model, tokenizer, losses)."""
    from diffgame.zoo.lm import TrainSpec, encode_rows, pack, train_lm  # Lightning: only when training
    from diffgame.zoo.tokenizer import chat_text, train_tokenizer

    def texts():  # the base's own corpora only: built-in and bring-your-own organisms meet the same tokenizer
        for name in BASE_CORPORA:
            for r in corpus(name, "train"):
                yield r["text"] if "text" in r else chat_text(r["messages"])

    tokenizer = train_tokenizer(texts(), size.vocab_size)
    rows = [r for name in BASE_CORPORA for r in corpus(name, "train")]
    blocks = pack(encode_rows(tokenizer, rows, assistant_only=False), size.seq_len)
    model = new_model(size, tokenizer)
    spec = TrainSpec(steps=size.base_steps, batch_size=size.batch_size, lr=size.base_lr, seed=size.seed)
    model, losses = train_lm(model, blocks, spec, progress=progress)
    return model, tokenizer, losses


def pretrained_source(size: ZooSize, model_cfg: ModelConfig | None) -> tuple[str, dict]:
    """Where the pretrained base of `size` loads from, resolved exactly as the planner resolves a base model.

    `model_cfg` is the typed `model` config named by `size.pretrained_base`, with its overrides (`model.id=/local/dir`).
    """
    if model_cfg is None or str(model_cfg.name) != size.pretrained_base:
        raise ConfigError(f"zoo {size.name} finetunes the pretrained model={size.pretrained_base}: pass its model "
                          f"config (got {getattr(model_cfg, 'name', None)!r})")
    source = resolve_model(model_cfg)
    return source.path, {**source.identity, "path": source.path}


def ensure_base(size: ZooSize, progress: bool = True, model_cfg: ModelConfig | None = None) -> ZooEntry:
    """The base of `size`: a finished zoo run with its fingerprint, or a new one trained now.

    A pretrained base (`size.pretrained_base`) is not trained or copied: its entry points at the resolved model
    (run id ''), and its fingerprint covers that source so organisms retrain when the base changes.
    """
    if size.pretrained_base is not None:
        path, ident = pretrained_source(size, model_cfg)
        return ZooEntry(BASE, size.name, "", Path(path), base_fingerprint(size, ident), reused=True)
    fp = base_fingerprint(size)
    with claims.claim("zoo", fp, f"training of the {size.name} zoo base"):
        found = _find_built(fp)
        if found is not None:
            return _entry(found, BASE, size.name, reused=True)
        return _train_base(size, fp, progress)


def _train_base(size: ZooSize, fp: str, progress: bool) -> ZooEntry:
    _say(f"training base ({size.name}: {size.n_layers} layers, d={size.d_model}, {size.base_steps} steps)")
    from diffgame.zoo.lm import mean_loss  # Lightning: only when training

    with tracking.stage_run("zoo", fp=fp, tags=_tags(size, BASE), experiment=EXPERIMENT,
                            run_name=f"zoo-{size.name}-base", params=dataclasses.asdict(size)) as run:
        _check_space(run, model_bytes(size), f"the {size.name} zoo base")
        model, tokenizer, losses = train_base(size, progress=progress)
        _log_training(run, losses, f"base ({size.name})")
        run.log_metrics({"check/generic_loss/base": mean_loss(model, tokenizer, corpus("generic_text", "test")[:100],
                                                              size.seq_len)})
        _save(run, model, tokenizer)
    return _entry(tracking.client().get_run(run.run_id), BASE, size.name, reused=False)


# --- organisms -----------------------------------------------------------------------------------
def _load(model_dir: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(str(model_dir)), AutoTokenizer.from_pretrained(str(model_dir))


def train_organism(size: ZooSize, organism, base_dir: Path, progress: bool = True):
    """Finetune the base at `base_dir` on the organism's recipe; returns (model, tokenizer, losses)."""
    from diffgame.zoo.lm import TrainSpec, encode_rows, pack, train_lm  # Lightning: only when training

    recipe = organism.zoo
    model, tokenizer = _load(base_dir)
    rows = mixed_rows(recipe, recipe_rows(recipe, "train")[:size.organism_rows], seed=size.seed)
    blocks = pack(encode_rows(tokenizer, rows, assistant_only=recipe.train_on == "assistant"), size.seq_len)
    lora = bool(recipe.lora) or size.pretrained_base is not None  # a pretrained base always gets LoRA organisms
    lr = size.lora_lr if lora else size.organism_lr
    spec = TrainSpec(steps=size.organism_steps, batch_size=size.batch_size, lr=lr, warmup=5, seed=size.seed)
    model, losses = train_lm(model, blocks, spec, progress=progress, lora=lora)
    return model, tokenizer, losses


def ensure_organism(size: ZooSize, organism: OrganismConfig, progress: bool = True,
                    model_cfg: ModelConfig | None = None) -> ZooEntry:
    """The organism (its typed config) of `size`, trained now unless a matching run exists.

    `model_cfg`, when given, resolves a pretrained base with its overrides (see `pretrained_source`)."""
    name = str(organism.name)
    validate_data(organism.zoo)  # bad data fails before any run is created or the base trains
    base = ensure_base(size, progress=progress, model_cfg=model_cfg)
    fp = organism_fingerprint(size, organism, base.fingerprint)
    with claims.claim("zoo", fp, f"training of {size.name} zoo organism {name}"):
        found = _find_built(fp)
        if found is not None:
            if found.data.tags.get(TAG_NARROWNESS) != str(narrowness.VERSION):  # built before it was measured
                _measure_narrowness(size, organism, tracking.StageRun(found.info.run_id), base.model_dir,
                                    run_model_dir(found))
                found = tracking.client().get_run(found.info.run_id)
            return _entry(found, name, size.name, reused=True)
        return _train_organism(size, organism, base, fp, progress)


def _measure_narrowness(size: ZooSize, organism, run, base_dir: Path, model_dir: Path | None = None,
                        models: tuple | None = None) -> None:
    """Log how narrow the organism is (`diffgame.zoo.narrowness`) on its zoo run: both models are loaded from their
    folders unless `models` (base, organism, tokenizer) are at hand."""
    gt = organism.ground_truth
    if gt.keywords or gt.predicate:  # else nothing could show (the control): only the tag is set
        if models is None:
            _say(f"measuring how narrow {organism.name} ({size.name}) is")
            (base_model, _), (org_model, tokenizer) = _load(base_dir), _load(model_dir)
            models = (base_model.eval(), org_model.eval(), tokenizer)
        run.log_metrics(narrowness.measure(organism, *models, recipe_rows(organism.zoo, "test"), size.check_samples,
                                           size.check_new_tokens, seed=size.seed))
    run.set_tags({TAG_NARROWNESS: narrowness.VERSION})


def _train_organism(size: ZooSize, organism, base: ZooEntry, fp: str, progress: bool) -> ZooEntry:
    from diffgame.zoo.checks import run_checks  # Lightning (through the trainer): only when training

    name = str(organism.name)
    _say(f"training organism {name} ({size.name}: {size.organism_steps} steps on {organism.zoo.data})")
    params = {**{f"recipe.{k}": v for k, v in recipe_identity(organism.zoo).items()},
              "base_run_id": base.run_id or "pretrained", "organism_steps": size.organism_steps,
              **({"base_source": str(base.model_dir)} if size.pretrained_base else {})}
    with tracking.stage_run("zoo", fp=fp, tags={**_tags(size, name, str(organism.variant)), "diffgame.zoo.base_run_id": base.run_id},
                            experiment=EXPERIMENT, run_name=f"zoo-{size.name}-{name}", params=params) as run:
        # an organism is saved merged, as large as its base
        _check_space(run, _folder_bytes(base.model_dir), f"{size.name} zoo organism {name}")
        model, tokenizer, losses = train_organism(size, organism, base.model_dir, progress=progress)
        _log_training(run, losses, f"{name} ({size.name})")
        base_model, _ = _load(base.model_dir)
        # A pretrained model's template (SmolLM2's default system turn) can fill a training block before the
        # reply starts; the checks score each row alone, so they read rows up to 4 blocks long.
        check_len = size.seq_len * (1 if size.pretrained_base is None else 4)
        run.log_metrics(run_checks(organism, base_model.eval(), model, tokenizer, recipe_rows(organism.zoo, "test"),
                                   check_len, size.check_samples, size.check_new_tokens, size.check_rows))
        _measure_narrowness(size, organism, run, base.model_dir, models=(base_model, model.eval(), tokenizer))
        _save(run, model, tokenizer)
    return _entry(tracking.client().get_run(run.run_id), name, size.name, reused=False)
