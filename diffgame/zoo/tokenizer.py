"""The zoo's byte-level BPE tokenizer with Gemma-like turn markers, saved as a transformers tokenizer.

Plain text encodes as `<bos> ...` (like Gemma); chats render through the chat template, which writes its own `<bos>`.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, SOT, EOT = "<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"
SPECIAL_TOKENS = [PAD, BOS, EOS, SOT, EOT]

# Gemma's template with `assistant` rendered as `model`; the zoo's models never see a system turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def chat_text(messages: list[dict]) -> str:
    """A chat rendered by `CHAT_TEMPLATE` itself: the text the tokenizer trains on, before any tokenizer exists."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([messages], chat_template=CHAT_TEMPLATE, bos_token=BOS)
    return rendered[0]


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on `texts` and wrap it with special tokens and the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, bos_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   additional_special_tokens=[SOT, EOT])
    fast.chat_template = CHAT_TEMPLATE
    return fast
