"""Model loading through the config (`model.id=<dir>`, organism `finetuned` entries) for every supported
architecture, the uniform accessors (decoder layers, final norm, unembedding: the logit lens must reproduce the
model's own logits), a LoRA adapter made locally with peft, and the errors for mismatched tokenizers, missing
paths and uncached hub ids. Models are random-initialised tiny configs saved locally; nothing is downloaded."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from diffgame.config.compose import compose, settings
from diffgame.errors import ModelError
from diffgame.models import loading as models
from diffgame.models.loading import check_compatible, decoder_layers, final_norm, logits_from_residual, unembedding
from diffgame.zoo.pairs import resolve_base, resolve_pair

V, D, N_LAYERS = 64, 32, 3


def load_base(cfg):
    cfg = settings(cfg)
    return models.load_handle(resolve_base(cfg), cfg.model)


def load_organism(cfg):
    return models.load_organism(resolve_pair(settings(cfg)))


def load_pair(cfg):
    return models.load_pair(resolve_pair(settings(cfg)))


def organism_identity(cfg):
    return resolve_pair(settings(cfg)).organism.identity
IDS = torch.tensor([[5, 9, 13, 2, 40, 63, 7, 1], [3, 3, 21, 30, 50, 11, 6, 4]])


def _configs():
    from transformers import (Gemma2Config, Gemma3TextConfig, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config,
                              Qwen3Config)

    common = dict(vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=N_LAYERS,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  bos_token_id=1, eos_token_id=1, pad_token_id=0, initializer_range=0.2)
    return {
        "llama": LlamaConfig(**common),
        # final_logit_softcapping well below the raw logits' scale, so a lens that skips it would fail
        "gemma3": Gemma3TextConfig(**common, head_dim=8, final_logit_softcapping=1.0, sliding_window=16),
        "gemma2": Gemma2Config(**common, head_dim=8, final_logit_softcapping=1.0),
        "qwen2": Qwen2Config(**common),
        "qwen3": Qwen3Config(**common, head_dim=8),
        "mistral": MistralConfig(**common),
        "gpt2": GPT2Config(vocab_size=V, n_embd=D, n_layer=N_LAYERS, n_head=4, n_positions=64, bos_token_id=1,
                           eos_token_id=1, initializer_range=0.2),
    }


ARCHS = ["llama", "gemma3", "gemma2", "qwen2", "qwen3", "mistral", "gpt2"]
CLASSES = {"llama": "LlamaForCausalLM", "gemma3": "Gemma3ForCausalLM", "gemma2": "Gemma2ForCausalLM",
           "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "mistral": "MistralForCausalLM",
           "gpt2": "GPT2LMHeadModel"}


def make_tokenizer(words: list[str]):
    """A word-level fast tokenizer over `words` (ids 0..2 are pad, eos, unk), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def _logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def zoo_dirs(tmp_path_factory):
    """Per architecture: a base and a full organism (another seed), saved with a shared tokenizer; the
    organisms' reference logits computed before saving."""
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("tiny_models")
    tok = make_tokenizer([f"w{i}" for i in range(V - 3)])
    out = {"root": root, "tokenizer": tok}
    for arch, cfg in _configs().items():
        for role, seed in (("base", 0), ("org", 1)):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(cfg).eval()
            path = root / f"{arch}_{role}"
            model.save_pretrained(path)
            tok.save_pretrained(path)
            out[(arch, role)] = (path, _logits(model))
    return out


def _cfg(arch: str, base_dir, finetuned: str, *extra: str):
    name = f"tiny_{arch}"
    return compose(["model=toy", f"model.name={name}", f"model.id={base_dir}", "model.device=cpu",
                    "model.dtype=float32", "organism=caps", f"organism.finetuned.{name}={finetuned}", *extra])


@pytest.mark.parametrize("arch", ARCHS)
def test_load_pair_and_accessors_reproduce_logits(zoo_dirs, arch):
    base_dir, base_ref = zoo_dirs[(arch, "base")]
    org_dir, org_ref = zoo_dirs[(arch, "org")]
    cfg = _cfg(arch, base_dir, f"{{default:{{kind:full,id:{org_dir}}}}}")
    base, org = load_pair(cfg)

    assert type(base.model).__name__ == CLASSES[arch]
    assert (base.role, base.name, base.identity) == ("base", f"tiny_{arch}", {"source": str(base_dir), "revision": None})
    assert (org.role, org.name) == ("organism", "caps")
    assert org.identity["kind"] == "full" and org.identity["id"] == str(org_dir)
    assert base.n_layers == N_LAYERS and len(decoder_layers(org.model)) == N_LAYERS
    assert unembedding(base.model).weight.shape == (V, D)
    assert type(final_norm(base.model)).__name__ == ("LayerNorm" if arch == "gpt2" else f"{CLASSES[arch][:-len('ForCausalLM')]}RMSNorm")
    assert base.device == torch.device("cpu") and not base.model.training

    # the loaded weights are the saved ones: same logits as before saving
    torch.testing.assert_close(_logits(base.model), base_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(_logits(org.model), org_ref, rtol=0, atol=1e-5)
    assert (base_ref - org_ref).abs().max() > 1e-2

    # logit lens on the last block's output (the residual stream) equals the model's own logits
    for handle in (base, org):
        captured = {}
        hook = decoder_layers(handle.model)[-1].register_forward_hook(
            lambda mod, args, out: captured.__setitem__("h", out[0] if isinstance(out, tuple) else out))
        try:
            logits = _logits(handle.model)
        finally:
            hook.remove()
        h = captured["h"]  # [B, T, D]
        assert h.shape == (*IDS.shape, D)
        with torch.no_grad():
            lens = logits_from_residual(handle.model, h)
            uncapped = unembedding(handle.model)(final_norm(handle.model)(h))
        torch.testing.assert_close(lens, logits, rtol=0, atol=1e-5)
        if arch.startswith("gemma"):  # soft-capping is part of the lens, and it matters here
            assert logits.abs().max() < 1.0 and (uncapped - logits).abs().max() > 1e-2


def test_dtype_and_remote_code_follow_the_config(zoo_dirs):
    base_dir, ref = zoo_dirs[("llama", "base")]
    cfg = _cfg("llama", base_dir, "{default:{kind:full,id:x}}", "model.dtype=bfloat16")
    handle = load_base(cfg)
    assert {p.dtype for p in handle.model.parameters()} == {torch.bfloat16}
    torch.testing.assert_close(_logits(handle.model).float(), ref, rtol=0, atol=0.1)
    assert handle.tokenizer.pad_token == "<pad>" and handle.tokenizer("w0 w1")["input_ids"] == [3, 4]
    from diffgame.models.loading import _load_kwargs

    assert _load_kwargs(cfg.model)["trust_remote_code"] is False
    assert _load_kwargs(compose(["model.trust_remote_code=true"]).model)["trust_remote_code"] is True


def test_lora_adapter_made_with_peft_reloads_through_the_config(zoo_dirs, tmp_path):
    """An adapter with random (non-zero) B matrices changes the outputs; `kind: lora` reproduces them."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base_dir, base_ref = zoo_dirs[("llama", "base")]
    torch.manual_seed(3)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir).eval(),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    adapter_ref = _logits(peft_model.eval())
    assert (adapter_ref - base_ref).abs().max() > 1e-2
    peft_model.save_pretrained(tmp_path / "repo" / "adapters" / "caps")   # with a subfolder
    peft_model.save_pretrained(tmp_path / "flat")                          # without

    cfg = _cfg("llama", base_dir, f"{{default:{{kind:lora,id:{tmp_path / 'repo'},subfolder:adapters/caps}},"
                                  f"flat:{{kind:lora,id:{tmp_path / 'flat'}}}}}")
    assert organism_identity(cfg) == {"organism": "caps", "variant": "default", "kind": "lora",
                                      "id": str(tmp_path / "repo"), "subfolder": "adapters/caps", "revision": None}
    base, org = load_pair(cfg)
    torch.testing.assert_close(_logits(base.model), base_ref, rtol=0, atol=1e-5)  # the base copy stays clean
    torch.testing.assert_close(_logits(org.model), adapter_ref, rtol=0, atol=1e-4)
    assert not hasattr(org.model, "peft_config")  # merged into a plain model: accessors see no wrapper
    assert org.n_layers == N_LAYERS

    cfg.organism.variant = "flat"
    torch.testing.assert_close(_logits(load_organism(cfg).model), adapter_ref, rtol=0, atol=1e-4)

    gpt2_dir, _ = zoo_dirs[("gpt2", "base")]
    with pytest.raises(ModelError) as info:  # a Llama adapter over a GPT-2 base
        load_organism(_cfg("gpt2", gpt2_dir, f"{{default:{{kind:lora,id:{tmp_path / 'flat'}}}}}"))
    assert str(info.value).startswith(f"LoRA adapter {tmp_path / 'flat'} does not fit base model {gpt2_dir} "
                                      "(tiny_gpt2): ")
    assert str(info.value).endswith("; pick the adapter trained on this base") and "\n" not in str(info.value)


def test_tokenizer_mismatch_is_refused(zoo_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    base_dir, _ = zoo_dirs[("llama", "base")]
    org_dir, _ = zoo_dirs[("llama", "org")]
    other = tmp_path / "other_vocab"
    AutoModelForCausalLM.from_pretrained(org_dir).save_pretrained(other)
    make_tokenizer([f"w{i}" for i in range(V - 13)] + [f"x{i}" for i in range(10)]).save_pretrained(other)
    cfg = _cfg("llama", base_dir, f"{{default:{{kind:full,id:{other}}}}}")
    with pytest.raises(ModelError) as info:
        load_pair(cfg)
    assert str(info.value) == ("tokenizers differ between base 'tiny_llama' (64 tokens) and organism 'caps' "
                               "(64 tokens; 10 only in base, 10 only in organism); "
                               "pick an organism finetuned from this base model")


def test_fewer_output_rows_are_refused_and_more_are_compared_on_the_shared_rows(zoo_dirs, tmp_path):
    from transformers import AutoModelForCausalLM

    base_dir, _ = zoo_dirs[("llama", "base")]
    base = load_base(_cfg("llama", base_dir, "{default:{kind:full,id:x}}"))
    orgs = {}
    for name, rows in (("bigger", V + 8), ("smaller", V - 8)):
        conf = _configs()["llama"]
        conf.vocab_size = rows
        AutoModelForCausalLM.from_config(conf).save_pretrained(tmp_path / name)
        zoo_dirs["tokenizer"].save_pretrained(tmp_path / name)
        orgs[name] = load_organism(_cfg("llama", base_dir, f"{{default:{{kind:full,id:{tmp_path / name}}}}}"))
    check_compatible(base, orgs["bigger"])  # extra rows: compared on the base's (tests/models/test_shared_vocab.py)
    with pytest.raises(ModelError) as info:
        check_compatible(base, orgs["smaller"])
    assert str(info.value) == ("the organism 'caps' has fewer output rows (56) than base 'tiny_llama' (64); "
                               "pick an organism finetuned from this base model")


def test_missing_local_path_says_so(zoo_dirs):
    cfg = _cfg("llama", "/nonexistent/tiny_llama", "{default:{kind:full,id:x}}")
    with pytest.raises(ModelError) as info:
        load_base(cfg)
    assert str(info.value).startswith("model path '/nonexistent/tiny_llama' does not exist; set model.id")


@pytest.mark.slow  # a fresh interpreter: the offline flag is read when huggingface_hub is imported
def test_uncached_hub_id_offline_says_how_to_use_a_local_path(tmp_path):
    """Offline (HF_HUB_OFFLINE=1, empty cache) a hub id fails with one line naming model.id=/path."""
    code = ("from diffgame.config.compose import compose, settings\nfrom diffgame.models.loading import load_handle\n"
            "from diffgame.zoo.pairs import resolve_base\nfrom diffgame.errors import ModelError\n"
            "cfg = settings(compose(['model.id=some/missing-repo', 'model.device=cpu']))\n"
            "try:\n    load_handle(resolve_base(cfg), cfg.model)\n"
            "except ModelError as e:\n    print('ERR', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in out.stdout.splitlines() if line.startswith("ERR")]
    assert lines == ["ERR 'some/missing-repo' is not in the local Hugging Face cache and the hub is unreachable "
                     "(offline); download it where there is network (`hf download some/missing-repo`) and copy the "
                     "cache (HF_HOME), or point model.id at a local folder"], out.stderr[-2000:]
