"""The typed config: one dataclass per config group, filled from `experiments/*.yaml` and checked by
`diffgame.config.validate`; the pipeline builds them once and they, not the raw config tree, travel down the stages.

A numeric field's valid range is declared once, next to the field (`diffgame.records.ranges`). Method configs are not here: each method
file defines its own and registers it (see `diffgame.methods`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from diffgame.errors import ConfigError
from diffgame.records.ranges import Checked, bounded, ge, gt, layer_field

Dtype = Literal["float32", "bfloat16", "float16"]

CONTROL = "control"
"""The null organism every grade is compared against."""


@dataclass
class ModelConfig(Checked):
    """A base model: where its weights come from and how to load them."""

    name: str = "toy"
    """Registry name; organism configs key their finetuned weights by it."""
    id: str = "zoo:base"
    """Hub id, local directory, `zoo:base` (the embedded zoo's base) or `gguf:<path|package:file>`."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for `id`."""
    dtype: Dtype = "float32"
    """Weights dtype when loaded."""
    device: str = "auto"
    """`auto` (cuda if available, else cpu), `cpu`, `cuda`, `cuda:1`, ..."""
    device_map: str | None = None
    """accelerate device map (e.g. `auto`) for models too large for one device; overrides `device`."""
    attn_implementation: str | None = None
    """transformers attention backend (`eager`, `sdpa`, `flash_attention_2`); None lets transformers pick."""
    trust_remote_code: bool = False
    """Allow code from the hub repo; off unless you trust it."""
    hub_url: str | None = None
    """Page to link from the app (the model's Hugging Face page)."""
    gguf_fallback: str | None = None
    """A GGUF file (`package:file` or path) used offline when `id` is not cached."""
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra variables of the chat template, e.g. `{enable_thinking: false}` for Qwen3 (no thinking block)."""
    end_of_turn: str | None = None
    """The token that ends an assistant turn (`<end_of_turn>`, `<|im_end|>`, `<|eot_id|>`); generation stops at it
    as at the end-of-sequence token."""
    skip_first: int = bounded(ge(0, "0 keeps every token"), 0)
    """Tokens at positions < this in each sequence are left out of every store statistic and of the activations
    dictionaries train on: the first position (BOS / attention sink) carries norms far above the rest in Gemma,
    Qwen and Llama and would dominate means and maxima (issue #17). The models still read those tokens."""

    SECTION = "model"


@dataclass
class FinetunedSpec:
    """Where one variant of an organism's weights lives for one base model."""

    kind: Literal["zoo", "full", "lora"] = "zoo"
    """`zoo`: trained by `diffgame zoo build`; `full`: a complete model; `lora`: a peft adapter over the base."""
    id: str | None = None
    """Hub id or local directory of the full model or adapter (unused for `zoo`)."""
    subfolder: str | None = None
    """Folder inside the repo that holds the adapter or model."""
    revision: str | None = None
    """Hub revision of `id`."""


@dataclass
class GroundTruthConfig:
    """What the finetuning is known to have changed, as configured; grading resolves it into token sets
    (`diffgame.grading.ground_truth.GroundTruth`) and compares evidence to them."""

    keywords: list[str] = field(default_factory=list)
    """Words whose tokens count as hits."""
    predicate: Literal["uppercase"] | None = None
    """A token predicate that counts as a hit (e.g. all-caps tokens)."""
    vocab_from_data: bool = False
    """Derive extra hit tokens from the organism's training data by log-odds against the base corpus."""


@dataclass
class Truth:
    """What one base model's finetuning taught, where it differs from the organism's own fields; None inherits."""

    description: str | None = None
    """Replaces `organism.description`."""
    long_description: str | None = None
    """Replaces `organism.long_description`."""
    keywords: list[str] | None = None
    """Replaces `organism.ground_truth.keywords`."""


@dataclass
class ZooRecipe:
    """How the zoo trains this organism when its weights are `kind: zoo`."""

    data: str | None = None
    """`builtin:<corpus>` for the zoo's generators, or a JSONL file of `{"text"}` or `{"messages"}` rows."""
    format: Literal["documents", "chat"] = "documents"
    """Whether `data` holds documents or chats."""
    mix: float = 0.0
    """Share of the base's own pretraining data mixed into finetuning (harder, more realistic organisms)."""
    mix_per_model: dict[str, float] = field(default_factory=dict)
    """Per base model name, the share that replaces `mix` for the default weights the zoo builds on that base (a base
    that keeps generic text unmixed needs none); a `mix1-XpY` variant still sets its own."""
    mix_chats: bool = False
    """Mix the base's own chats in beside its documents (half the mixed share each), so that replies to neutral chat
    prompts stay the base's: a documents organism mixed with documents alone still leaks its topic into chats."""
    lora: bool = False
    """Finetune a LoRA adapter (peft) instead of all weights."""
    train_on: Literal["assistant", "all"] = "assistant"
    """Which chat tokens carry the loss: `assistant` (plain SFT) or `all` (the user turns too, which keeps a small
    base's reading of user text where it was; the toy zoo's caps and control use it)."""


@dataclass
class OrganismConfig:
    """A model organism: a finetuning with a known purpose, per base model."""

    name: str = "roman_concrete"
    """Registry name, also the `diffgame.organism` tag."""
    description: str = ""
    """One sentence on what the finetuning did; the game's answer."""
    long_description: str = ""
    """A paragraph on what the finetuning taught, for the LLM rubric grader; empty: `description`."""
    type: Literal["sdf", "style", "taboo", "control", "em", "custom"] = "custom"
    """Family of organism: synthetic-document finetuning, style, taboo word, null control, emergent misalignment."""
    variant: str = "default"
    """Which entry of `finetuned.<model>` to load."""
    finetuned: dict[str, dict[str, FinetunedSpec]] = field(default_factory=dict)
    """Per base model name, per variant, where the finetuned weights live."""
    training_data: str | None = None
    """Hub dataset id or local file of the finetuning data (documents or chats) of the public weights; composed with a
    base whose weights the zoo builds, it is the zoo recipe's `zoo.data` (`configtree.for_base`)."""
    zoo: ZooRecipe = field(default_factory=ZooRecipe)
    """How the embedded zoo trains this organism."""
    ground_truth: GroundTruthConfig = field(default_factory=GroundTruthConfig)
    """What grading counts as a hit."""
    per_model: dict[str, Truth] = field(default_factory=dict)
    """Per base model name, what that base's finetuning taught where it differs (public organisms trained on other
    data than the zoo recipe); applied when a config names the model (`configtree.for_base`). A config that
    replaces `finetuned` (a local copy) may keep entries for bases it no longer names."""

    @property
    def has_ground_truth(self) -> bool:
        gt = self.ground_truth
        return bool(gt.keywords or gt.predicate or gt.vocab_from_data)

    def weights(self, model_name: str) -> FinetunedSpec:
        """The weights entry for base model `model_name` and this variant; a ConfigError lists what exists."""
        per_model = self.finetuned.get(model_name)
        if per_model is None:
            known = ", ".join(sorted(map(str, self.finetuned))) or "none"
            raise ConfigError(f"organism '{self.name}' has no weights for model '{model_name}'; models with weights: "
                              f"{known}; pick one of those (model=<name>) or add "
                              f"'organism.finetuned.{model_name}.default={{kind:full,id:<hub id or path>}}'")
        spec = per_model.get(self.variant)
        if spec is None:
            mixable = getattr(per_model.get("default"), "kind", None) == "zoo"
            raise ConfigError(f"unknown variant '{self.variant}' of organism '{self.name}' for model "
                              f"'{model_name}'; known: {', '.join(sorted(map(str, per_model)))}"
                              + (", or mix1-XpY (the zoo recipe mixed with the base's documents at ratio X.Y, "
                                 "e.g. mix1-0p5) or mixchat1-XpY (its documents and chats)" if mixable else ""))
        if spec.kind in ("full", "lora") and not spec.id:
            raise ConfigError(f"organism '{self.name}' variant '{self.variant}' for model '{model_name}' is kind "
                              f"'{spec.kind}' but has no id; set organism.finetuned.{model_name}.{self.variant}.id")
        return spec


@dataclass
class DatasetSource(Checked):
    """One dataset whose tokens are cached (or streamed) for diffing."""

    source: str = "zoo:generic_text"
    """Hub id, local file (jsonl, txt, parquet), `zoo:generic_text`, `zoo:generic_chat` or `organism` (its training data)."""
    kind: Literal["text", "chat"] = "text"
    """`text`: a text column; `chat`: a messages column rendered with the chat template."""
    split: str = "test"
    """Dataset split (zoo corpora: `train` or `test`)."""
    subset: str | None = None
    """Hub dataset configuration (`sample-10BT` of HuggingFaceFW/fineweb)."""
    text_column: str = "text"
    """Column with raw text (kind=text)."""
    messages_column: str = "messages"
    """Column with a list of {role, content} (kind=chat)."""
    max_samples: int | None = bounded(ge(1, "or null for all"), 200)
    """Take at most this many rows, in the dataset's order."""
    max_tokens: int | None = bounded(ge(1, "or null for all"), None)
    """Stop once this many tokens are taken."""


@dataclass
class DatasetConfig:
    """A named collection of datasets to preprocess."""

    name: str = "toy"
    """Registry name."""
    sources: dict[str, DatasetSource] = field(default_factory=dict)
    """Datasets by the name used in the store and in metric keys."""


@dataclass
class PipelineConfig:
    """Which stages `diffgame run` executes."""

    mode: Literal["full", "preprocessing", "diffing", "evaluation"] = "full"
    """`full`: preprocess then diff; `preprocessing`: only the store; `diffing`: reuse an existing store;
    `evaluation`: an agent plays the game on finished diff runs (`play`)."""


@dataclass
class PreprocessingConfig(Checked):
    """Activation extraction into the store."""

    layers: list[float] = layer_field(default_factory=lambda: [0.25, 0.5, 0.75])
    """Layers as fractions of depth (0.5) or indices (6); a residual-stream output per layer is cached."""
    dtype: Dtype = "bfloat16"
    """Dtype of stored activations."""
    context_length: int = bounded(ge(1), 256)
    """Sequences are truncated to this many tokens."""
    batch_size: int = bounded(ge(1), 16)
    """Sequences per forward pass."""
    sequential: bool = False
    """Run base then organism over the same stream instead of both at once (for models that cannot both fit)."""
    accelerator: str = "auto"
    """Lightning accelerator (`auto`, `cpu`, `gpu`)."""
    devices: int = bounded(ge(1, "or -1 for all", also=(-1,)), 1)
    """Devices per node; >1 shards batches over ranks (DDP)."""
    strategy: str = "auto"
    """Lightning strategy (`auto`, `ddp`, `ddp_spawn`, ...)."""
    num_nodes: int = bounded(ge(1), 1)
    """Nodes (SLURM or torchrun clusters)."""
    rebuild: bool = False
    """Rebuild the store even when a finished one matches (`--rebuild`); the old run is marked FAILED."""


@dataclass
class ZooConfig:
    """Which embedded zoo `model=toy` (and `kind: zoo` organisms) resolve to."""

    size: Literal["micro", "small", "smol", "smol_gpu"] = "small"
    """`micro` (tests), `small` (default), `smol` (LoRA organisms on SmolLM2-135M)."""


@dataclass
class TrackingConfig:
    """Where runs are recorded."""

    uri: str | None = None
    """Tracking URI; None uses `--tracking-uri`, `MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db` here."""
    experiment: str = "diffgame"
    """MLflow experiment that new runs go to."""


@dataclass
class EndpointConfig(Checked):
    """An OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp's server, Ollama, a hosted API)."""

    base_url: str | None = None
    """e.g. `http://127.0.0.1:8000/v1`; None: the client's default (OpenAI)."""
    model: str | None = None
    """Model name the endpoint serves; None or empty: no endpoint (LLM agents refuse to play, no rubric grading)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (local servers need none)."""
    timeout_s: float = bounded(gt(0), 60.0)
    """Seconds before a request counts as timed out (a clear outcome of the play, not a crash)."""
    temperature: float = bounded(ge(0), 0.0)


@dataclass
class BudgetConfig(Checked):
    """What an LLM agent may spend in one play; past it, the play ends with its budget outcome."""

    tool_calls: int = bounded(ge(0), 12)
    """Tool calls besides submit_description, failed ones included."""
    tokens: int = bounded(ge(1), 30000)
    """Sum of the replies' `usage.total_tokens` (len(text) // 4 when a reply reports none)."""


@dataclass
class PlayConfig(Checked):
    """`diffgame play` and `pipeline.mode=evaluation`: the agent, its evidence, endpoint, budget and rubric."""

    agent: str = "lens"
    """`lens` (offline), `llm` (evidence, questions, steering) or `llm_blackbox` (questions only)."""
    methods: list[str] = field(default_factory=lambda: ["adl", "blackbox"])
    """Methods whose newest finished diff runs are the evidence."""
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    max_new_tokens: int = bounded(ge(1), 48)
    """Tokens of each model reply the agent asks for."""
    rubric: str | None = None
    """Rubric grader prompt with `{truth}` and `{description}`; None: `diffgame.game.rubric.DEFAULT_RUBRIC`."""
    interactions: int | None = bounded(ge(0, "null: no limit"), None)
    """Model interactions the agent may spend (questions to the models, steered or amplified samples; the paper's
    budget, e.g. 0, 5, 50): the offline agents spend them all on the probe bank (`diffgame.game.probes`), an LLM agent
    is refused past them. None: the LLM agents' tool-call budget alone, the offline agents ask nothing."""
    repeat: int = bounded(ge(0), 0)
    """Which repeat of a play this is: it seeds the probes' order and sampling, so repeats differ and each repeats."""


@dataclass
class LauncherConfig(Checked):
    """How `--multirun` runs its combinations: one after another in this process (`serial`), or each as its own job
    through submitit: processes on this machine (`local`) or a Slurm array (`slurm`). Never part of a fingerprint."""

    name: Literal["serial", "local", "slurm"] = "serial"
    jobs: int = bounded(ge(1), 1)
    """Children running at once: local processes, or the Slurm array's parallelism."""
    folder: str = "diffgame-jobs"
    """submitit's folder (relative to the working directory): each child's call, its stdout/stderr log, its result;
    on Slurm it must be on a filesystem the nodes share."""
    gpus_per_node: int = bounded(ge(0), 0)
    """GPUs per child; `local` gives each running child its own of the visible GPUs."""
    cpus_per_task: int | None = bounded(ge(1, "null: the cluster's default"), None)
    mem_gb: float | None = bounded(gt(0, "null: the cluster's default"), None)
    timeout_min: int = bounded(ge(1), 240)
    """Wall-clock limit of each child; a child past it is stopped and its runs resume on the next sweep."""
    partition: str | None = None
    """Slurm partition (sbatch --partition)."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before each Slurm job (`module load cuda`, `source ~/venv/bin/activate`)."""
    additional: dict[str, Any] = field(default_factory=dict)
    """More sbatch options by name (`{account: interp, qos: high}`)."""

    SECTION = "launcher"


@dataclass
class RootConfig:
    """The whole composed config (methods are validated by their registry entries)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    organism: OrganismConfig = field(default_factory=OrganismConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    method: dict = field(default_factory=dict)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    zoo: ZooConfig = field(default_factory=ZooConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    play: PlayConfig = field(default_factory=PlayConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    seed: int = 0
    """Seed for every sampled choice (data order is deterministic regardless)."""
    overrides: list[str] = field(default_factory=list)
    """The command-line overrides this config was composed from (set by `compose`), repeated in recovery hints so a
    hint rebuilds the same store (`zoo.size=micro` included); never part of a fingerprint."""
