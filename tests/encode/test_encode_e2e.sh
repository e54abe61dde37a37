#!/usr/bin/env bash
# m3-encode end to end on the bundled knowledge base (examples/kb/) with a
# test model (m3-encode test-model): kb.jsonl into a store that verifies and
# holds 297 records; the same bytes with 1 and 2 threads; a rerun stores
# nothing new; m3-server answers text queries with the chunk that has the
# words (the default words:1024 embeddings, IDF table DIR/idf.bin); a folder of documents with --id-base; long
# lines split into pieces with derived ids, truncated, or refused; a trained FAISS codec; hidden-state
# embeddings; external embeddings.
. "$(dirname "$0")/../lib/m3test.sh" encode-e2e
m3t_need_exec "$bin/m3-encode"
digest() { "$bin/encode_store_digest" "$1"; }
enc() { "$bin/m3-encode" --model "$work/model" "$@"; }

"$bin/m3-encode" test-model --out "$work/model" 2>"$work/tm.log"
kb=$src/examples/kb/kb.jsonl

# 1. kb.jsonl, the default embedder (words:1024), 2 threads
enc --input "$kb" --store "$work/kb" --threads 2 --batch 8 2>"$work/enc.log"
cat "$work/enc.log"
check "summary line" grep -q "297 chunks encoded, 0 already in the store" "$work/enc.log"
check "verify" "$bin/m3" store verify "$work/kb"
"$bin/m3" store info "$work/kb" --json >"$work/info"
check "297 records" test "$(json_get "$work/info" "j['records']")" = 297
check "words:1024 embeddings" test "$(json_get "$work/info" "j['layout']['embedding_dim']")" = 1024
check "manifest: the default embedder" test "$(json_get "$work/kb/encode.json" "j['embed']")" = words:1024
check "IDF table in the store" test -s "$work/kb/idf.bin"
check "codec file in the store" test -s "$work/kb/codec.m3c"
check "manifest" test "$(json_get "$work/kb/encode.json" "j['prefix'] + ' ' + j['tokenizer']")" = "Reference: tokenizer.json"
check "index saved" test -s "$work/kb/index/stamp"
check "explicit ids" test "$(digest "$work/kb" | awk '{print $1}' | sort -n | tr '\n' ' ')" = "$(seq 0 296 | tr '\n' ' ')"

# 2. one thread: the same bytes; a rerun: nothing new
enc --input "$kb" --store "$work/kb1" --threads 1 2>/dev/null
check "threads 1 == threads 2" test "$(digest "$work/kb")" = "$(digest "$work/kb1")"
digest "$work/kb" >"$work/before"
enc --input "$kb" --store "$work/kb" --threads 2 2>"$work/rerun.log"
check "rerun skips" grep -q "0 chunks encoded, 297 already in the store" "$work/rerun.log"
check "rerun unchanged" test "$(digest "$work/kb")" = "$(cat "$work/before")"

# 3. m3-server on the store: text queries find the chunk with the words
m3t_server server "$work/kb"
for q in "Jupiter largest planet" "Saturn bright rings" "Andromeda Galaxy"; do
  "$bin/m3" query --server "127.0.0.1:$port" --text "$q" -k 3 --json >"$work/q.json"
  word=$(echo "$q" | awk '{print $1}')
  check "query '$q'" grep -q "$word" <(json_get "$work/q.json" "j['queries'][0]['results'][0]['text']")
done
check "words store: log names the embedder" grep -q "embedder words:1024" "$work/server.log"
"$bin/m3" stats --server "$addr" --json >"$work/st.json"
check "words store: stats embedder" test "$(json_get "$work/st.json" "j['hello']['embedder']")" = words:1024
check "words store: query embedder" test "$(json_get "$work/q.json" "j['embedder']")" = words:1024
kill -TERM "$srv"; wait "$srv" || true

# 3b. m3 store split keeps each shard's embedder (encode.json and the codec
# and tokenizer beside the records): a server on one shard still embeds text
"$bin/m3" store split "$work/kb" --shards 2 --out "$work/split" >/dev/null
for f in encode.json codec.m3c tokenizer.json idf.bin; do
  check "split: shard-0 has $f" cmp -s "$work/kb/$f" "$work/split/shard-0/$f"
done
m3t_server shard0 "$work/split/shard-0"
check "split shard: log names the embedder" grep -q "embedder words:1024" "$work/shard0.log"
run 0 "$work/sq.json" "$bin/m3" query --server "$addr" --text "Jupiter largest planet" -k 3 --json || true
check "split shard: text query answered" test "$(json_get "$work/sq.json" "len(j['queries'][0]['results']) > 0")" = True
kill -TERM "$srv"; wait "$srv" || true

# 4. a folder of documents, sequential ids from --id-base
mkdir -p "$work/docs/sub"
cp "$src/examples/kb/corpus.txt" "$work/docs/a.txt"
printf '# Notes\n\nVolcanoes erupt lava,\nash and gas.\n\n\nA second paragraph.\n' >"$work/docs/sub/b.md"
echo "ignored" >"$work/docs/c.csv"
enc --input "$work/docs" --store "$work/docs_st" --id-base 1000 --embed hash:64 2>"$work/docs.log"
check "docs verify" "$bin/m3" store verify "$work/docs_st"
n=$(digest "$work/docs_st" | wc -l)
check "docs chunks > 3" test "$n" -gt 3
check "docs ids sequential" test "$(digest "$work/docs_st" | awk '{print $1}' | tr '\n' ' ')" = "$(seq 1000 $((1000 + n - 1)) | tr '\n' ' ')"
"$bin/m3" store get "$work/docs_st" --id $((1000 + n - 2)) --json >"$work/g.json"
check "paragraph joined" test "$(json_get "$work/g.json" "j['text']")" = "Volcanoes erupt lava, ash and gas."
check "docs chunks fit" test "$(json_get "$work/g.json" "j['chunk_len']")" -le 128
# 5. long lines with the usual consecutive ids (a FOLDOC-like KB): each
# is split into pieces within the budget; piece p >= 1 of line id N gets
# 2^63 | N << 16 | p, so no piece takes the next line's id
"$py" -c "
import json
words = open('$src/examples/kb/corpus.txt').read().split()
print(json.dumps({'id': 500, 'text': ' '.join(words[:600])}))
print(json.dumps({'id': 501, 'text': ' '.join(words[600:900])}))
print(json.dumps({'id': 502, 'text': 'short one'}))" >"$work/long.jsonl"
enc --input "$work/long.jsonl" --store "$work/long" --max-tokens 64 --embed hash:32 2>"$work/long.err"
ids=$(digest "$work/long" | awk '{print $1}' | sort -n | tr '\n' ' ')
piece1=$("$py" -c "print((1 << 63) | (500 << 16) | 1)")
check "line ids kept" test "$(echo "$ids" | awk '{print $1, $2, $3}')" = "500 501 502"
check "pieces get derived ids" grep -q " $piece1 " <<<" $ids "
check "summary counts the split texts" grep -q "2 texts over 64 tokens split into" "$work/long.err"
# the same input truncated: one chunk per line, counted; or refused, naming the line
enc --input "$work/long.jsonl" --store "$work/long_t" --max-tokens 64 --embed hash:32 \
  --long-chunks truncate 2>"$work/long_t.err"
check "truncate keeps one chunk a line" test "$(digest "$work/long_t" | awk '{print $1}' | sort -n | tr '\n' ' ')" = "500 501 502 "
check "summary counts truncated" grep -q "0 chunks, 2 truncated" "$work/long_t.err"
set +e
enc --input "$work/long.jsonl" --store "$work/long_f" --max-tokens 64 --embed hash:32 \
  --long-chunks fail 2>"$work/long_f.err"
lf=$?
set -e
check "fail: exit 1" test "$lf" = 1
check "fail: names the line" grep -q "long.jsonl:1: the text is more than" "$work/long_f.err"
# a split line's id must leave room for its pieces' ids: below 2^47
"$py" -c "
import json
words = open('$src/examples/kb/corpus.txt').read().split()
print(json.dumps({'id': 1 << 47, 'text': ' '.join(words[:600])}))" >"$work/bigid.jsonl"
set +e
enc --input "$work/bigid.jsonl" --store "$work/bigid" --max-tokens 64 --embed hash:32 2>"$work/bigid.err"
lr=$?
set -e
check "a split line with a huge id: exit 1" test "$lr" = 1
check "a split line with a huge id: named" grep -q 'bigid.jsonl:1: "id" 140737488355328: the text needs' "$work/bigid.err"
ok=1
for id in $(digest "$work/long" | awk '{print $1}'); do
  "$bin/m3" store dump "$work/long" --id "$id" --json >"$work/d.json" || ok=0
  [ "$(json_get "$work/d.json" "len(j['tokens']) <= 64 and j['n_prefix_tokens'] > 1")" = True ] || ok=0
done
check "split chunks fit and re-tokenize" test "$ok" = 1
# A long line (60,000 words, 400 KB) splits into pieces that together are its
# text, whole: single spaces between words, so the pieces' text bytes are the
# line's less one space per cut. (Each probe of the cut looks at a window
# of the line, not the rest of it: before, this line took minutes.)
"$py" -c "
import json
words = open('$src/examples/kb/corpus.txt').read().split()
text = ' '.join(words[i % len(words)] for i in range(60000))
open('$work/huge.len', 'w').write(str(len(text.encode())))
print(json.dumps({'id': 9, 'text': text}))" >"$work/huge.jsonl"
enc --input "$work/huge.jsonl" --store "$work/huge" --max-tokens 64 --embed hash:32 2>"$work/huge.err"
"$bin/m3" store info "$work/huge" --json >"$work/huge.info"
pieces=$(json_get "$work/huge.info" "j['records']")
check "a long line: many pieces ($pieces)" test "$pieces" -gt 1000
check "a long line: the pieces hold its text" test "$(json_get "$work/huge.info" "j['text_bytes']")" = \
  "$(( $(cat "$work/huge.len") - pieces + 1 ))"
check "a long line: counted" grep -q "1 texts over 64 tokens split into $pieces chunks" "$work/huge.err"

# 6. train a FAISS codec on the KB, encode with it
"$bin/m3-encode" train-codec --model "$work/model" --input "$kb" --out "$work/pq.m3c" --codec PQ4x6 \
  --sample 100 2>"$work/train.log" || { cat "$work/train.log"; false; }
enc --input "$kb" --store "$work/pq" --codec "$work/pq.m3c" --threads 2 2>/dev/null
check "pq verify" "$bin/m3" store verify "$work/pq"
"$bin/m3" store info "$work/pq" --json >"$work/pqinfo"
check "pq code bytes" test "$(json_get "$work/pqinfo" "j['layout']['codec'], j['layout']['code_bytes']")" = "faiss 3"
check "pq dump decodes" "$bin/m3" store dump "$work/pq" --id 7 --json >/dev/null

# 7. hidden-state embeddings (layer 1 of the 2 memory layers)
enc --input "$kb" --store "$work/hid" --embed hidden:1 2>"$work/hid.log"
check "hidden index" grep -q "index IDMap,Flat: 297 vectors" "$work/hid.log"
"$bin/m3" store info "$work/hid" --json >"$work/hinfo"
check "hidden dims" test "$(json_get "$work/hinfo" "j['layout']['embedding_dim']")" = 64
m3t_server hid "$work/hid"
lr=0; "$bin/m3" query --server "$addr" --text "Jupiter" -k 3 >"$work/hq.out" 2>"$work/hq.err" || lr=$?
check "hidden store: text query refused" test "$lr" != 0
check "hidden store: says why" grep -q "embeddings are the model's hidden states (hidden:1, dimension 64).*send vectors with --vector-file" "$work/hq.err"
"$bin/m3" stats --server "$addr" >"$work/hst.txt"
check "hidden store: stats embedder" grep -q "embedder hidden:1" "$work/hst.txt"
kill -TERM "$srv"; wait "$srv" || true

# 8. external embeddings
"$py" -c "
import json
for i, l in enumerate(open('$kb')):
    j = json.loads(l); j['embedding'] = [float((i * 7 + k) % 5) - 2 for k in range(8)]
    print(json.dumps(j))" >"$work/ext.jsonl"
enc --input "$work/ext.jsonl" --store "$work/ext" --embed external 2>"$work/ext.log"
check "external" grep -q "index IDMap,Flat: 297 vectors" "$work/ext.log"
enc --input "$work/ext.jsonl" --store "$work/ext" --embed external 2>"$work/ext2.log"
check "external rerun" grep -q "297 already in the store" "$work/ext2.log"
m3t_server ext "$work/ext"
lr=0; "$bin/m3" query --server "$addr" --text "Jupiter" -k 3 >"$work/eq.out" 2>"$work/eq.err" || lr=$?
check "external store: text query refused" test "$lr" != 0
check "external store: says why" grep -q "this store's embeddings are external (dimension 8): send vectors with --vector-file" "$work/eq.err"
check "external store: no results printed" test ! -s "$work/eq.out"
"$py" -c "print(' '.join(str(float((7 + k) % 5) - 2) for k in range(8)))" >"$work/v1.txt"
"$bin/m3" query --server "$addr" --vector-file "$work/v1.txt" -k 1 --json >"$work/ev.json"
check "external store: query embedder" test "$(json_get "$work/ev.json" "j['embedder']")" = external
check "external store: vector query finds line 2" test "$(json_get "$work/ev.json" "j['queries'][0]['results'][0]['chunk_id']")" = 1
kill -TERM "$srv"; wait "$srv" || true

m3t_done
