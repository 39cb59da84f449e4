"""Data loading: chat rendering with per-token roles, text/chat/organism sources, limits, and bad-input errors."""

from __future__ import annotations

import json

import pytest

from diffgame.data.sequences import (ASSISTANT, ROLES, TEMPLATE, TEXT, USER, TokenizedSequence, load_sequences,
                                     render_chat)
from diffgame.config.compose import settings
from diffgame.errors import DataError

from _tiny_models import CHAT_TEMPLATE, chats, make_tokenizer, texts, tiny_cfg, write_data


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(200)


@pytest.fixture
def cfg(tmp_path):
    data = write_data(tmp_path / "data")
    return tiny_cfg(tmp_path / "base", tmp_path / "org", data, tmp_path / "mlflow.db")


def test_roles_constant():
    assert ROLES == ("text", "user", "assistant", "template") and (TEXT, USER, ASSISTANT, TEMPLATE) == (0, 1, 2, 3)


def test_render_chat_roles_follow_message_contents(tok):
    messages = [{"role": "user", "content": "the cat sat on a mat"},
                {"role": "assistant", "content": "hello there how are you"},
                {"role": "user", "content": "i am fine"}]
    ids, roles = render_chat(messages, tok)
    assert ids == tok(tok.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    assert len(roles) == len(ids)

    def text_of(code):  # the decoded tokens of one role, joined
        return tok.decode([i for i, r in zip(ids, roles) if r == code])

    assert text_of(USER) == "the cat sat on a matI am fine".replace("I", "i")
    assert text_of(ASSISTANT) == "hello there how are you"
    assert text_of(TEMPLATE) == "<bos><|user|>\n<|end|>\n<|assistant|>\n<|end|>\n<|user|>\n<|end|>\n"
    assert ids[0] == tok.bos_token_id and roles[0] == TEMPLATE


def test_render_chat_generation_prompt_is_template(tok):
    messages = [{"role": "user", "content": "hello"}]
    ids, roles = render_chat(messages, tok, add_generation_prompt=True)
    plain, _ = render_chat(messages, tok)
    assert ids[:len(plain)] == plain and len(ids) > len(plain)
    assert set(roles[len(plain):]) == {TEMPLATE}
    assert tok.decode(ids[len(plain):]) == "<|assistant|>\n"


def test_render_chat_without_template_is_a_data_error(tok):
    bare = make_tokenizer(200)
    bare.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        render_chat([{"role": "user", "content": "hi"}], bare)


def test_load_sequences_text_chat_and_organism(cfg, tok):
    seqs = load_sequences(settings(cfg), tok)
    assert list(seqs) == ["text", "chat", "organism"]
    rows = [json.loads(x) for x in open(cfg.dataset.sources.text.source)]
    for s in seqs["text"]:
        assert isinstance(s, TokenizedSequence) and s.dataset == "text"
        assert s.input_ids == tok(rows[s.sequence_id]["text"])["input_ids"][:64]
        assert s.roles == [TEXT] * len(s.input_ids)
    assert [s.sequence_id for s in seqs["text"]] == list(range(len(rows)))
    chat_rows = [json.loads(x) for x in open(cfg.dataset.sources.chat.source)]
    for s in seqs["chat"]:
        ids, roles = render_chat(chat_rows[s.sequence_id]["messages"], tok)
        assert s.input_ids == ids[:64] and s.roles == roles[:64]
    # the organism's data has messages, so it is read as chat although its source says kind=text
    org_rows = [json.loads(x) for x in open(cfg.organism.training_data)]
    for s in seqs["organism"]:
        assert (s.input_ids, s.roles) == tuple(x[:64] for x in render_chat(org_rows[s.sequence_id]["messages"], tok))
    assert any(ASSISTANT in s.roles for s in seqs["organism"])
    assert max(len(s.input_ids) for s in seqs["text"]) == 64  # truncated to context_length
    assert load_sequences(settings(cfg), tok)["chat"] == seqs["chat"]  # deterministic


def test_max_samples_and_max_tokens(cfg, tok):
    cfg.dataset.sources.text.max_samples = 3
    cfg.dataset.sources.chat.max_tokens = 100
    seqs = load_sequences(settings(cfg), tok)
    assert [s.sequence_id for s in seqs["text"]] == [0, 1, 2]
    assert sum(len(s.input_ids) for s in seqs["chat"]) == 100


def test_txt_and_parquet_files(cfg, tok, tmp_path):
    import pandas as pd

    lines = texts(5, seed=9)
    (tmp_path / "a.txt").write_text("\n".join(lines) + "\n")
    pd.DataFrame({"body": lines}).to_parquet(tmp_path / "a.parquet")
    cfg.dataset.sources = {"txt": {**cfg.dataset.sources.text, "source": str(tmp_path / "a.txt")},
                           "pq": {**cfg.dataset.sources.text, "source": str(tmp_path / "a.parquet"),
                                  "text_column": "body"}}
    seqs = load_sequences(settings(cfg), tok)
    expected = [tok(t)["input_ids"][:64] for t in lines]
    assert [s.input_ids for s in seqs["txt"]] == expected
    assert [s.input_ids for s in seqs["pq"]] == expected


def test_missing_column(cfg, tok):
    cfg.dataset.sources.text.text_column = "body"
    with pytest.raises(DataError, match="no column 'body'.*columns: text"):
        load_sequences(settings(cfg), tok)


def test_empty_dataset(cfg, tok, tmp_path):
    (tmp_path / "empty.jsonl").write_text(json.dumps({"text": ""}) + "\n")
    cfg.dataset.sources.text.source = str(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="'text'.*yielded no sequences"):
        load_sequences(settings(cfg), tok)


def test_malformed_chat_and_null_text_rows(cfg, tok, tmp_path):
    """A chat row whose messages are not a list of {role, content} is a one-line DataError naming the row; a null
    text is skipped like an empty one."""
    (tmp_path / "bad_chat.jsonl").write_text(json.dumps({"messages": "a string"}) + "\n")
    cfg.dataset.sources.chat.source = str(tmp_path / "bad_chat.jsonl")
    with pytest.raises(DataError, match=r"row 0: 'messages' must be a list of \{role, content\} messages, got 'a str"):
        load_sequences(settings(cfg), tok)
    cfg.dataset.sources.chat.source = str(tmp_path / "nulls.jsonl")
    (tmp_path / "nulls.jsonl").write_text(json.dumps({"messages": None}) + "\n" + json.dumps({"messages": []}) + "\n")
    (tmp_path / "text.jsonl").write_text(json.dumps({"text": None}) + "\n" + json.dumps({"text": "hello there"}) + "\n")
    cfg.dataset.sources.text.source = str(tmp_path / "text.jsonl")
    with pytest.raises(DataError, match="'chat'.*yielded no sequences"):
        load_sequences(settings(cfg), tok)


def test_unreadable_and_missing_files(cfg, tok, tmp_path):
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    cfg.dataset.sources.text.source = str(tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match="cannot read dataset .*bad.jsonl"):
        load_sequences(settings(cfg), tok)
    cfg.dataset.sources.text.source = str(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="nope.jsonl does not exist"):
        load_sequences(settings(cfg), tok)


def test_zoo_corpora(cfg, tok):
    from diffgame import zoo

    cfg.dataset.sources = {"generic_text": {**cfg.dataset.sources.text, "source": "zoo:generic_text", "split": "test",
                                            "max_samples": 5},
                           "generic_chat": {**cfg.dataset.sources.chat, "source": "zoo:generic_chat", "split": "test",
                                            "max_samples": 5}}
    seqs = load_sequences(settings(cfg), tok)
    rows = zoo.corpus("generic_text", "test")
    assert [s.input_ids for s in seqs["generic_text"]] == [tok(r["text"])["input_ids"][:64] for r in rows[:5]]
    assert all(ASSISTANT in s.roles and USER in s.roles for s in seqs["generic_chat"])


def test_chat_template_constant_renders_as_expected(tok):
    assert tok.chat_template == CHAT_TEMPLATE
    assert len(chats(2)) == 2


def test_organism_data_file_resolves_from_any_folder(monkeypatch, tmp_path):
    """A relative organism data path (tea_lover's `experiments/data/tea_chats.jsonl`) reads the same rows from any
    working folder and from a user config folder, as the zoo's recipe finds them."""
    from diffgame.config.configtree import builtin_dir, organism_settings
    from diffgame.data.sequences import read_rows

    expected = [json.loads(line) for line in (builtin_dir() / "data" / "tea_chats.jsonl").read_text().splitlines()
                if line.strip()]
    monkeypatch.chdir(tmp_path)  # not the repository root
    assert read_rows("organism", split="train", organism=organism_settings("tea_lover")) == expected
    user = tmp_path / "my_configs"
    (user / "organism").mkdir(parents=True)
    (user / "data").mkdir()
    (user / "data" / "mine.jsonl").write_text(json.dumps({"text": "a lighthouse beam"}) + "\n")
    (user / "organism" / "mine.yaml").write_text("name: mine\nzoo: {data: data/mine.jsonl, format: documents}\n")
    monkeypatch.setenv("DIFFGAME_CONFIG_PATH", str(user))
    assert read_rows("organism", split="train", organism=organism_settings("mine")) == [{"text": "a lighthouse beam"}]
    missing = organism_settings("mine")
    missing.zoo.data = "elsewhere/none.jsonl"
    with pytest.raises(DataError, match="dataset file elsewhere/none.jsonl does not exist"):
        read_rows("organism", organism=missing)


def test_chats_the_template_refuses_are_skipped_and_counted(tmp_path):
    """A chat template that takes no system turn (Gemma's, for one, refuses roles that do not alternate) skips those
    chats with a count, instead of failing the whole dataset."""
    from diffgame.config.compose import compose

    tok = make_tokenizer(200)
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                         "{{ raise_exception('System role not supported') }}{% endif %}"
                         "<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}")
    rows = chats(5)
    rows[1] = {"messages": [{"role": "system", "content": "be terse"}, *rows[1]["messages"]]}
    rows[3] = {"messages": [{"role": "system", "content": "be kind"}, *rows[3]["messages"]]}
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose([])
    cfg.dataset.sources = {"chat": {"source": str(path), "kind": "chat", "split": "train", "text_column": "text",
                                    "messages_column": "messages", "max_samples": None, "max_tokens": None}}
    skipped: dict[str, int] = {}
    seqs = load_sequences(settings(cfg), tok, skipped)
    assert skipped == {"chat": 2}
    assert [s.sequence_id for s in seqs["chat"]] == [0, 2, 4]  # the rows the template took, in order
    assert seqs["chat"][0].input_ids == render_chat(rows[0]["messages"], tok)[0]



def test_chat_template_kwargs_and_end_of_turn_from_the_model_config(tmp_path):
    """`model.chat_template_kwargs` reach the template (Qwen3's `enable_thinking`), are part of the store's
    fingerprint, and `model.end_of_turn` is a stop token of generation; an unknown end-of-turn token is refused."""
    from diffgame.config.compose import compose
    from diffgame.errors import ConfigError
    from diffgame.models.loading import _load_tokenizer, end_ids
    from diffgame.records.schema import ModelConfig
    from diffgame.pipeline.planner import store_fingerprint

    tok = make_tokenizer(200)
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% if enable_thinking is defined and "
                         "not enable_thinking %}<think></think>\n{% endif %}{% endif %}")
    tok.save_pretrained(tmp_path / "tok")
    chat = [{"role": "user", "content": "hello there"}]

    def load(**model):
        mcfg = ModelConfig(**model)
        return _load_tokenizer(str(tmp_path / "tok"), mcfg)

    plain, quiet = load(), load(chat_template_kwargs={"enable_thinking": False}, end_of_turn="<|end|>")
    thinks = "<think></think>"
    assert thinks not in plain.decode(render_chat(chat, plain, add_generation_prompt=True)[0])
    assert thinks in quiet.decode(render_chat(chat, quiet, add_generation_prompt=True)[0])
    assert end_ids(plain) == [plain.eos_token_id]
    assert end_ids(quiet) == sorted({quiet.eos_token_id, quiet.convert_tokens_to_ids("<|end|>")})
    with pytest.raises(ConfigError, match=r"model.end_of_turn='<\|eot_id\|>' is not a token"):
        load(end_of_turn="<|eot_id|>")

    class Pair:  # what store_fingerprint reads of the pair
        base = organism = type("Source", (), {"identity": {"id": "x"}})()

    cfg = settings(compose([]))
    assert store_fingerprint(cfg, Pair, plain) != store_fingerprint(cfg, Pair, quiet)


def test_local_parquet_and_save_to_disk_sources_stream_deterministically_within_budget(tmp_path, monkeypatch):
    """A dataset preset of a local parquet file and a `save_to_disk` folder reads the same sequences twice and
    respects its limits; a hub id is streamed (never loaded whole) and its sample cached, so an offline rerun reads
    the same rows; offline without a copy, the error names the source and the override to use."""
    import datasets

    from diffgame.config.compose import compose
    from diffgame.data import sequences as data_mod

    monkeypatch.setenv("DIFFGAME_CACHE", str(tmp_path / "cache"))
    datasets.Dataset.from_dict({"text": texts(60, seed=3)}).to_parquet(tmp_path / "pre.parquet")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(chats(12))}).save_to_disk(tmp_path / "chats")
    cfg = compose([])
    common = {"text_column": "text", "messages_column": "messages"}
    cfg.dataset.sources = {
        "pre": {"source": str(tmp_path / "pre.parquet"), "kind": "text", "split": "train", "max_samples": 40,
                "max_tokens": 300, **common},
        "chat": {"source": str(tmp_path / "chats"), "kind": "chat", "split": "train", "max_samples": 10,
                 "max_tokens": None, **common}}
    tok = make_tokenizer(200)
    first, second = load_sequences(settings(cfg), tok), load_sequences(settings(cfg), tok)
    assert {k: [s.input_ids for s in v] for k, v in first.items()} == {k: [s.input_ids for s in v]
                                                                       for k, v in second.items()}
    assert sum(len(s.input_ids) for s in first["pre"]) == 300  # the token budget, cut inside the last sequence
    assert [s.sequence_id for s in first["chat"]] == list(range(10))
    assert first["chat"][0].input_ids == render_chat(chats(12)[0]["messages"], tok)[0]

    calls = []

    def fake_hub(name, subset=None, split=None, streaming=False, **kw):  # the network boundary
        calls.append((name, subset, split, streaming))
        if len(calls) > 1:
            raise ConnectionError("offline")
        return iter({"text": t} for t in texts(500, seed=4))  # a long split: only the first rows may be read

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    rows = data_mod._read_rows("someone/pretraining", "train", limit=5, subset="sample-10BT",
                               override="dataset.sources.pre.source")
    assert rows == [{"text": t} for t in texts(500, seed=4)[:5]] and calls == [
        ("someone/pretraining", "sample-10BT", "train", True)]
    assert data_mod._read_rows("someone/pretraining", "train", limit=5, subset="sample-10BT") == rows  # cached
    with pytest.raises(DataError) as err:
        data_mod._read_rows("someone/other", "train", limit=5, override="dataset.sources.chat.source")
    assert "\n" not in str(err.value) and "cannot read dataset someone/other, split train" in str(err.value)
    assert "dataset.sources.chat.source=/path/to/copy" in str(err.value)
    # the hub met no network once: a further hub read fails at once, without a minute of retries
    n_calls = len(calls)
    with pytest.raises(DataError, match=r"someone/third, split train: the hub was unreachable earlier in this "
                                        r"process; offline or private\? point it at a local copy: x=/path/to/copy"):
        data_mod._read_rows("someone/third", "train", limit=5, override="x")
    assert len(calls) == n_calls
    assert data_mod._read_rows("someone/pretraining", "train", limit=5, subset="sample-10BT") == rows  # cached still


def test_standard_preset_names_the_fields_sources():
    from diffgame.config.compose import compose

    sources = compose(["dataset=standard", "model=qwen3_1_7B", "organism=cake_bake"]).dataset.sources
    assert (sources.pretraining.source, sources.pretraining.subset) == ("HuggingFaceFW/fineweb", "sample-10BT")
    assert (sources.chat.source, sources.chat.kind) == ("allenai/tulu-3-sft-mixture", "chat")
    assert sources.organism.source == "organism" and sources.pretraining.max_tokens == 400000


def test_methods_read_the_dataset_presets_sources_by_reference(tmp_path):
    """`@text` / `@chat` are the preset's first text / chat sources (the zoo's on `dataset=toy`, the local FineWeb copy
    on `dataset=standard`), `@name` any source, read with its own split and columns; an unknown name lists the choices."""
    import datasets

    from diffgame.config.compose import compose
    from diffgame.data.sequences import read_rows
    from diffgame.zoo import corpus

    toy = settings(compose([])).dataset.sources
    assert read_rows("@text", limit=5, sources=toy) == list(corpus("generic_text", "test"))[:5]
    assert read_rows("@chat", limit=3, sources=toy) == list(corpus("generic_chat", "test"))[:3]
    datasets.Dataset.from_dict({"content": texts(20, seed=8)}).to_parquet(tmp_path / "web.parquet")
    standard = settings(compose(["dataset=standard", f"dataset.sources.pretraining.source={tmp_path / 'web.parquet'}",
                                 "dataset.sources.pretraining.text_column=content"])).dataset.sources
    rows = read_rows("@text", "text", split="test", limit=4, sources=standard)  # the source's split (train), not test
    assert rows == [{"text": t} for t in texts(20, seed=8)[:4]]  # its column, keyed `text` like every source's
    assert read_rows("@pretraining", limit=4, sources=standard) == rows
    with pytest.raises(DataError, match=r"'@web' names no source of the dataset preset; choices: @pretraining, "
                                        r"@chat, @organism, @text \(or a zoo corpus"):
        read_rows("@web", limit=4, sources=standard)
