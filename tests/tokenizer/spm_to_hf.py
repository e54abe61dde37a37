#!/usr/bin/env python3
"""Write a Hugging Face tokenizer.json (Llama layout) from a SentencePiece BPE
model's .vocab file (piece<TAB>score per line, id order), the way
transformers' LlamaConverter / SentencePieceExtractor does: every split (l, r)
of a piece whose halves are both pieces is a merge, merges ordered by the
merged piece's score (best first), ties by the halves' ids.

usage: spm_to_hf.py MODEL.vocab OUT.json [llama|metaspace]
  llama      normalizer Sequence[Prepend("▁"), Replace(" ", "▁")] (Llama-2)
  metaspace  pre_tokenizer Metaspace(prepend_scheme "first", split false)
"""
import json
import sys

SPACE = "\u2581"


def main():
    vocab_path, out_path = sys.argv[1], sys.argv[2]
    style = sys.argv[3] if len(sys.argv) > 3 else "llama"
    pieces = []
    with open(vocab_path, encoding="utf-8") as f:
        for line in f:
            piece, score = line.rstrip("\n").split("\t")
            pieces.append((piece, float(score)))
    vocab = {p: i for i, (p, _) in enumerate(pieces)}
    special = {"<unk>", "<s>", "</s>"}
    normal = {p for p, _ in pieces
              if p not in special and not (len(p) == 6 and p.startswith("<0x"))}
    merges = []
    for piece, score in pieces:
        if piece not in normal or len(piece) < 2:
            continue
        local = []
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in normal and right in normal:
                local.append((left, right, score))
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda x: x[2], reverse=True)  # stable
    added = [{"id": vocab[t], "content": t, "single_word": False,
              "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for t in ("<unk>", "<s>", "</s>") if t in vocab]
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [], "special_tokens": {}},
        "decoder": None,
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True,
                  "byte_fallback": True, "vocab": vocab,
                  "merges": [f"{l} {r}" for l, r, _ in merges]},
    }
    if style == "llama":
        tok["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": SPACE},
            {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]}
    else:
        tok["pre_tokenizer"] = {"type": "Metaspace", "replacement": SPACE,
                                "prepend_scheme": "first", "split": False}
        tok["model"]["merges"] = [[l, r] for l, r, _ in merges]
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
