#!/usr/bin/env bash
# Tokenizer parity with SentencePiece's own tools: spm_train builds models from
# the bundled corpus (examples/kb/corpus.txt), then m3 (tok_tool) and
# spm_encode --output_format=id encode the same lines and every line must give
# the same ids. The lines: tests/tokenizer/texts.txt (non-ASCII, CJK, emoji,
# digits, whitespace runs, characters the corpus lacks) and the corpus itself.
# A tokenizer.json converted from a Llama-style BPE model (spm_to_hf.py) must
# encode like that model.
# Skips (77) when spm_train, spm_encode or python3 is missing.
. "$(dirname "$0")/../lib/m3test.sh" tok-parity
TOOL=$bin/tok_tool
for t in spm_train spm_encode python3; do
  command -v "$t" >/dev/null || m3t_skip "$t not installed (apt-get install sentencepiece python3)"
done
[[ -x $TOOL ]] || fail "$TOOL not built"

corpus=$src/examples/kb/corpus.txt
cat "$src/tests/tokenizer/texts.txt" "$corpus" > "$work/lines.txt"
nlines=$(wc -l < "$work/lines.txt")

# compare NAME MODEL_FOR_M3 SPM_MODEL LINES
compare() {
  local name=$1 m3model=$2 spmmodel=$3 lines=$4
  spm_encode --model="$spmmodel" --output_format=id < "$lines" > "$work/$name.ref"
  "$TOOL" encode "$m3model" "$lines" > "$work/$name.got"
  local total same
  total=$(wc -l < "$work/$name.ref")
  same=$(paste -d '\t' "$work/$name.ref" "$work/$name.got" | awk -F'\t' '$1 == $2' | wc -l)
  echo "parity $name: $same/$total lines match"
  if [[ $same -ne $total ]]; then
    fails=$((fails + 1))
    paste -d '\n' "$lines" "$work/$name.ref" "$work/$name.got" | awk '
      NR % 3 == 1 { t = $0 } NR % 3 == 2 { r = $0 }
      NR % 3 == 0 && r != $0 { printf "  text: %s\n  spm:  %s\n  m3:   %s\n", t, r, $0; if (++k == 5) exit }'
  else
    pass=$((pass + 1))
  fi
}

# train NAME spm_train-args...
train() {
  local name=$1
  shift
  spm_train --input="$corpus" --model_prefix="$work/$name" --vocab_size=600 \
    --minloglevel=2 "$@" > "$work/$name.log" 2>&1 || {
      cat "$work/$name.log"; fail "spm_train $name"; }
}

train bpe-identity --model_type=bpe --byte_fallback=true --normalization_rule_name=identity
train bpe-nfkc --model_type=bpe --byte_fallback=true
train unigram-identity --model_type=unigram --byte_fallback=true --normalization_rule_name=identity
train unigram-nfkc --model_type=unigram --byte_fallback=true
train bpe-unk --model_type=bpe --byte_fallback=false --vocab_size=300
train unigram-unk --model_type=unigram --byte_fallback=false --vocab_size=300
train bpe-user --model_type=bpe --byte_fallback=true --user_defined_symbols='Sun,Moon,<sep>,kilometres'
train unigram-user --model_type=unigram --byte_fallback=true --user_defined_symbols='Sun,Moon,<sep>,kilometres'
# Llama-2's settings: BPE, byte fallback, identity, whitespace kept as is
train llama --model_type=bpe --byte_fallback=true --normalization_rule_name=identity \
  --remove_extra_whitespaces=false --split_digits=true --add_dummy_prefix=true
train nfkc-cf --model_type=unigram --byte_fallback=true --normalization_rule_name=nmt_nfkc_cf \
  --add_dummy_prefix=false --remove_extra_whitespaces=false

printf 'the <sep> Sun and Moon, 5 kilometres <sep><sep>\n' >> "$work/lines.txt"
for m in bpe-identity bpe-nfkc unigram-identity unigram-nfkc bpe-unk unigram-unk \
         bpe-user unigram-user llama nfkc-cf; do
  compare "$m" "$work/$m.model" "$work/$m.model" "$work/lines.txt"
done

# tokenizer.json converted from the Llama-style model
python3 "$src/tests/tokenizer/spm_to_hf.py" "$work/llama.vocab" "$work/llama.json" llama
compare hf-llama "$work/llama.json" "$work/llama.model" "$work/lines.txt"
# Metaspace(prepend_scheme=first, split=false) prepends ▁ only when the text
# does not already start with one: compare on lines that do not
python3 "$src/tests/tokenizer/spm_to_hf.py" "$work/llama.vocab" "$work/llama-ms.json" metaspace
grep -v -e '^ ' -e '^▁' "$work/lines.txt" > "$work/lines-ms.txt" || true
compare hf-metaspace "$work/llama-ms.json" "$work/llama.model" "$work/lines-ms.txt"

# round trip: decode(encode(x)) == x on the llama model for lines without ▁
grep -v '▁' "$work/lines.txt" > "$work/lines-rt.txt" || true
"$TOOL" roundtrip "$work/llama.model" "$work/lines-rt.txt" > "$work/rt.txt"
echo "roundtrip llama: $(wc -l < "$work/rt.txt") lines"
check "roundtrip llama" cmp -s "$work/lines-rt.txt" "$work/rt.txt"
diff "$work/lines-rt.txt" "$work/rt.txt" | head || true

echo "lines per model: $nlines (+1 user-symbol line)"
m3t_done
