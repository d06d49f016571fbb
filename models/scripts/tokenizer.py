"""Trains the byte-level BPE tokenizer of one model on its training corpus and writes tokenizer.json."""
from __future__ import annotations

import json
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from common import CONFIGS, EOS, SPECIAL_TOKENS, render_example


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    # Digits are single tokens: numbers are copied and added digit by digit instead of as arbitrary BPE chunks.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,  # first, so their ids are 0..4
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def main(name: str) -> None:
    cfg = CONFIGS[name]
    rows = [json.loads(line) for line in (cfg.work_dir / "train.jsonl").open()]
    # answers are in the training text; the special tokens are added tokens, not merged
    texts = [r["prompt"] + " " + r["answer"] for r in rows]
    tok = train_tokenizer(texts, cfg.vocab_size)
    assert tok.get_vocab_size() == cfg.vocab_size, tok.get_vocab_size()
    for i, s in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    sample = render_example("turn on the kitchen lights", "Turning on the kitchen lights.")
    ids = tok.encode(sample, add_special_tokens=False).ids
    assert ids[0] == tok.token_to_id("<|user|>") and ids[-1] == tok.token_to_id(EOS), ids
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(cfg.out_dir / "tokenizer.json"))
    print(f"{name}: tokenizer vocab {tok.get_vocab_size()}, sample {len(ids)} tokens: {ids}")


if __name__ == "__main__":
    main(sys.argv[1])
