#!/usr/bin/env python3
"""The reference worker in PyTorch: the same loop as the C decoder
(worker/include/m3/decode.h, `m3-bench decode`), written independently, so
that the two can be checked against each other (tests/worker/test_decode.sh
compares their traces on the bundled example).

A Llama-family model from its safetensors folder (every layer, model.norm,
lm_head), greedy decode of a batch of prompts in lockstep (prompt tokens fed
one per step), and every 64 tokens a retrieval round through the m3store
binding (asynchronously, on a thread): query s = the text of sequence s's
last 64 tokens (the server embeds it) or, for a store encoded with
m3-encode --embed hidden:LAYER, that layer's mean hidden state over
[BOS] + prefix + the window (as m3-encode embeds a chunk), k memories each, decoded to f32 attention buffers. The memory
layers (the first half) attend with ONE softmax over the round's memory
slots of their KV head and the causal context; the context sits at
positions 128 + i (parallel position encoding, docs/CLIENT.md); memory keys
are used as stored; empty slots (position < 0) are masked. Window w + 1
attends to the memories retrieved for window w.

    M3_LIB=build/lib/libm3client.so PYTHONPATH=client/python \\
      python3 examples/worker.py --model DIR --server HOST:PORT \\
      --prompts examples/prompts.txt --batch 4 --new-tokens 100 --trace py.trace

Needs Debian's python3-torch and python3-numpy (scripts/install-deps.sh).
The trace format is m3-decode-trace/1 (docs/WORKER.md).
"""

import argparse
import concurrent.futures
import json
import os
import struct

import numpy as np
import torch

import m3store

WINDOW, SPAN = 64, 128


# ---- the checkpoint ----------------------------------------------------------

def load_safetensors(folder):
    """{name: float32 tensor} from model.safetensors or its index's shards."""
    index = os.path.join(folder, "model.safetensors.index.json")
    files = (sorted(set(json.load(open(index))["weight_map"].values())) if os.path.exists(index)
             else ["model.safetensors"])
    out = {}
    for f in files:
        raw = open(os.path.join(folder, f), "rb").read()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        base = 8 + n
        for name, t in header.items():
            if name == "__metadata__":
                continue
            b, e = t["data_offsets"]
            buf = raw[base + b:base + e]
            if t["dtype"] == "F32":
                a = np.frombuffer(buf, dtype="<f4")
            elif t["dtype"] == "F16":
                a = np.frombuffer(buf, dtype="<f2").astype(np.float32)
            elif t["dtype"] == "BF16":
                a = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
            else:
                raise ValueError("%s: tensor %s has dtype %s" % (f, name, t["dtype"]))
            out[name] = torch.from_numpy(a.copy()).reshape(t["shape"])
    return out


# ---- the tokenizer (tokenizer.json, HF BPE with byte fallback) ---------------

class Tokenizer:
    def __init__(self, folder):
        path = os.path.join(folder, "tokenizer.json")
        if not os.path.exists(path):
            raise ValueError("%s: no tokenizer.json; worker.py reads HF BPE tokenizer.json only "
                             "(not SentencePiece tokenizer.model, which m3-encode also reads)"
                             % folder)
        t = json.load(open(path))
        m = t["model"]
        if m["type"] != "BPE":
            raise ValueError("%s: model type %s; worker.py reads HF BPE tokenizer.json only"
                             % (path, m["type"]))
        self.vocab = m["vocab"]
        self.pieces = {i: p for p, i in self.vocab.items()}
        self.ranks = {tuple(p if isinstance(p, list) else p.split(" ")): r
                      for r, p in enumerate(m["merges"])}
        self.control = {a["id"] for a in t["added_tokens"] if a.get("special")}
        self.unk = self.vocab.get(m.get("unk_token") or "<unk>")
        self.bos = self.vocab.get("<s>")

    def encode(self, text):
        """[BOS] + BPE of "▁" + text with spaces as "▁" (the normalizer)."""
        parts = list("\u2581" + text.replace(" ", "\u2581"))
        while len(parts) > 1:
            best = None
            for j in range(len(parts) - 1):
                r = self.ranks.get((parts[j], parts[j + 1]))
                if r is not None and (best is None or r < best[0]):
                    best = (r, j)
            if best is None:
                break
            j = best[1]
            parts[j:j + 2] = [parts[j] + parts[j + 1]]
        ids = [self.bos]
        for p in parts:
            if p in self.vocab:
                ids.append(self.vocab[p])
            else:  # byte fallback
                ids.extend(self.vocab["<0x%02X>" % b] for b in p.encode())
        return ids

    def decode(self, ids):
        """As m3_tokenizer_decode: control ids give nothing, <0xNN> bytes are
        joined, "▁" is a space except the first piece's leading one."""
        out, run, first = [], bytearray(), True
        for i in ids:
            p = self.pieces[i]
            if len(p) == 6 and p.startswith("<0x") and p.endswith(">"):
                run.append(int(p[3:5], 16))
                first = False
                continue
            if run:
                out.append(run.decode("utf-8", errors="replace"))
                run = bytearray()
            if i in self.control:
                continue
            if i == self.unk:
                out.append(" \u2047 ")
                first = False
                continue
            if first and p.startswith("\u2581"):
                p = p[1:]
            out.append(p.replace("\u2581", " "))
            first = False
        if run:
            out.append(run.decode("utf-8", errors="replace"))
        return "".join(out)


# ---- the model -----------------------------------------------------------------

class Llama:
    def __init__(self, folder, max_pos):
        self.cfg = c = json.load(open(os.path.join(folder, "config.json")))
        self.w = load_safetensors(folder)
        self.E, self.H = c["hidden_size"], c["num_attention_heads"]
        self.K = c.get("num_key_value_heads", self.H)
        self.D = c.get("head_dim", self.E // self.H)
        self.NL = c["num_hidden_layers"]
        self.NM = self.NL // 2
        self.eps = c.get("rms_norm_eps", 1e-6)
        head = self.w.get("lm_head.weight")
        self.head = (self.w["model.embed_tokens.weight"]
                     if head is None or c.get("tie_word_embeddings") else head)
        half = self.D // 2
        inv = float(c.get("rope_theta", 10000.0)) ** (-2.0 * np.arange(half) / self.D)
        ang = np.arange(max_pos)[:, None] * inv[None, :]
        self.cos = torch.from_numpy(np.cos(ang).astype(np.float32))
        self.sin = torch.from_numpy(np.sin(ang).astype(np.float32))

    def layer(self, l, name):
        return self.w["model.layers.%d.%s.weight" % (l, name)]

    def rms(self, x, w):
        x64 = x.double()
        inv = (1.0 / torch.sqrt((x64 * x64).mean(-1, keepdim=True) + self.eps)).float()
        return x * inv * w

    def rope(self, x, p):
        """rotate_half of (..., D) at position p."""
        h = self.D // 2
        a, b = x[..., :h], x[..., h:]
        cs, sn = self.cos[p], self.sin[p]
        return torch.cat([a * cs - b * sn, b * cs + a * sn], dim=-1)

    def step(self, tokens, i, pos_offset, cache, mem):
        """One token per sequence at context index i; cache[l] = (k, v) of
        (B, K, ctx, D); mem None or (kv (B, L, 2, K, S, D), pos (B, L, K, S))."""
        B, H, K, D, G = len(tokens), self.H, self.K, self.D, self.H // self.K
        x = self.w["model.embed_tokens.weight"][torch.tensor(tokens)]
        p = pos_offset + i
        for l in range(self.NL):
            xn = self.rms(x, self.layer(l, "input_layernorm"))
            q = (xn @ self.layer(l, "self_attn.q_proj").T).view(B, H, D)
            k = (xn @ self.layer(l, "self_attn.k_proj").T).view(B, K, D)
            v = (xn @ self.layer(l, "self_attn.v_proj").T).view(B, K, D)
            kc, vc = cache[l]
            kc[:, :, i] = self.rope(k, p)
            vc[:, :, i] = v
            qr = self.rope(q, p)                                     # (B, H, D)
            kk = kc[:, :, :i + 1].repeat_interleave(G, dim=1)         # (B, H, ctx, D)
            vv = vc[:, :, :i + 1].repeat_interleave(G, dim=1)
            s_ctx = torch.einsum("bhd,bhjd->bhj", qr, kk) / D ** 0.5
            if mem is not None and l < self.NM:
                kv, pos = mem
                km = kv[:, l, 0].repeat_interleave(G, dim=1)          # (B, H, S, D)
                vm = kv[:, l, 1].repeat_interleave(G, dim=1)
                mask = (pos[:, l] >= 0).repeat_interleave(G, dim=1)  # (B, H, S)
                s_mem = torch.einsum("bhd,bhsd->bhs", qr, km) / D ** 0.5  # mem_base 0
                s_mem = s_mem.masked_fill(~mask, float("-inf"))
                pr = torch.softmax(torch.cat([s_mem, s_ctx], dim=-1), dim=-1)
                S = km.shape[2]
                att = (torch.einsum("bhs,bhsd->bhd", pr[..., :S], vm) +
                       torch.einsum("bhj,bhjd->bhd", pr[..., S:], vv))
            else:
                pr = torch.softmax(s_ctx, dim=-1)
                att = torch.einsum("bhj,bhjd->bhd", pr, vv)
            x = x + att.reshape(B, H * D) @ self.layer(l, "self_attn.o_proj").T
            xn = self.rms(x, self.layer(l, "post_attention_layernorm"))
            g = xn @ self.layer(l, "mlp.gate_proj").T
            u = xn @ self.layer(l, "mlp.up_proj").T
            x = x + (torch.nn.functional.silu(g) * u) @ self.layer(l, "mlp.down_proj").T
        return self.rms(x, self.w["model.norm.weight"]) @ self.head.T

    def hidden(self, ids, n_prefix, layer):
        """As m3-encode --embed hidden:LAYER stores a chunk's embedding: a
        causal forward of ids (positions 0..n-1, no memories) through layers
        0..layer-1, then the mean of the residual stream entering layer
        `layer` over ids[n_prefix:] (summed in double)."""
        n, H, K, D, G = len(ids), self.H, self.K, self.D, self.H // self.K
        x = self.w["model.embed_tokens.weight"][torch.tensor(ids)]
        p = torch.arange(n)
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        for l in range(layer):
            xn = self.rms(x, self.layer(l, "input_layernorm"))
            q = self.rope((xn @ self.layer(l, "self_attn.q_proj").T).view(n, H, D).transpose(0, 1), p)
            k = self.rope((xn @ self.layer(l, "self_attn.k_proj").T).view(n, K, D).transpose(0, 1), p)
            v = (xn @ self.layer(l, "self_attn.v_proj").T).view(n, K, D).transpose(0, 1)
            k, v = k.repeat_interleave(G, dim=0), v.repeat_interleave(G, dim=0)
            sc = (q @ k.transpose(1, 2)) / D ** 0.5
            pr = torch.softmax(sc.masked_fill(~causal, float("-inf")), dim=-1)
            att = (pr @ v).transpose(0, 1).reshape(n, H * D)
            x = x + att @ self.layer(l, "self_attn.o_proj").T
            xn = self.rms(x, self.layer(l, "post_attention_layernorm"))
            g = xn @ self.layer(l, "mlp.gate_proj").T
            u = xn @ self.layer(l, "mlp.up_proj").T
            x = x + (torch.nn.functional.silu(g) * u) @ self.layer(l, "mlp.down_proj").T
        return x[n_prefix:].double().mean(0).float()


# ---- the loop ----------------------------------------------------------------

def queries(model, tok, hist, i, qmode):
    """The round's queries for the windows ending at i: texts, or (qmode =
    (layer, prefix ids)) hidden-state embeddings (B, E) float32."""
    wins = [h[i + 1 - WINDOW:i + 1] for h in hist]
    if qmode is None:
        return [tok.decode(w) for w in wins]
    layer, prefix = qmode
    return np.stack([model.hidden(prefix + [t for t in w if t != tok.bos], len(prefix), layer)
                     .numpy() for w in wins]).astype(np.float32)


def generate(model, tok, prompts, n_new, client, k, qmode=None):
    """Rounds run on a thread: submitted when the window's last token is
    known (its queries computed first, on the loop's thread, as the C loop
    does), collected at the next window's first step."""
    B = len(prompts)
    T = max(len(p) for p in prompts) + n_new - 1
    cache = [(torch.zeros(B, model.K, T, model.D), torch.zeros(B, model.K, T, model.D))
             for _ in range(model.NL)]
    hist = [[0] * T for _ in range(B)]
    cur = [p[0] for p in prompts]
    gen = [[] for _ in range(B)]
    windows = [[] for _ in range(B)]
    mem, nxt = None, None
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1) if client is not None else None
    for i in range(T):
        for s in range(B):
            if i < len(prompts[s]):
                cur[s] = prompts[s][i]
            hist[s][i] = cur[s]
        if nxt is not None and i % WINDOW == 0:
            w, r = nxt[0], nxt[1].result()  # the stall
            mem, nxt = (torch.from_numpy(r.kv), torch.from_numpy(r.positions)), None
            for s in range(B):
                windows[s].append({"window": w,
                                   "ids": [int(x) for x in r.ids[s] if x != m3store.EMPTY_ID]})
        if client is not None and i % WINDOW == WINDOW - 1 and i + 1 < T:
            q = queries(model, tok, hist, i, qmode)
            nxt = (i // WINDOW, pool.submit(client.retrieve, q, k=k, decoded="f32"))
        logits = model.step(cur, i, SPAN if client is not None else 0, cache, mem)
        for s in range(B):
            if i >= len(prompts[s]) - 1 and len(gen[s]) < n_new:
                cur[s] = int(torch.argmax(logits[s]))  # first maximum: the lowest id
                gen[s].append(cur[s])
    if pool is not None:
        pool.shutdown()
    return gen, windows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--server")
    ap.add_argument("--cluster")
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--trace", required=True)
    ap.add_argument("--query", default="auto",
                    help="auto (hidden when the server's embedder is hidden:LAYER), text, "
                         "hidden[:LAYER]")
    ap.add_argument("--query-prefix", default="Reference:",
                    help="the m3-encode --prefix the store was encoded with")
    a = ap.parse_args()
    torch.set_num_threads(1)
    tok = Tokenizer(a.model)
    lines = [ln.strip() for ln in open(a.prompts) if ln.strip()]
    prompts = [tok.encode(lines[s % len(lines)]) for s in range(a.batch)]
    model = Llama(a.model, SPAN + max(len(p) for p in prompts) + a.new_tokens)
    client = None
    if not a.no_memory:
        client = m3store.Client(server=a.server) if a.server else m3store.Client(cluster=a.cluster)
    qmode = None
    if client is not None:
        q = a.query
        if q == "auto":
            emb = client.info["embedder"]
            q = emb if emb.startswith("hidden:") else "text"
        if q.startswith("hidden"):
            layer = int(q.split(":")[1]) if ":" in q else model.NM - 1
            if not 0 <= layer < model.NM:
                ap.error("--query %s: LAYER must be 0..%d" % (q, model.NM - 1))
            qmode = (layer, tok.encode(a.query_prefix) if a.query_prefix else [tok.bos])
        elif q != "text":
            ap.error("--query %s: expected auto, text or hidden[:LAYER]" % q)
    gen, windows = generate(model, tok, prompts, a.new_tokens, client, a.k, qmode)
    trace = {"format": "m3-decode-trace/1", "memory": client is not None,
             "k": a.k if client is not None else 0, "window": WINDOW,
             "sequences": [{"prompt": p, "tokens": g, "windows": w}
                           for p, g, w in zip(prompts, gen, windows)]}
    with open(a.trace, "w") as f:
        json.dump(trace, f)
        f.write("\n")
    for s, w in enumerate(windows[:4]):
        print("sequence %d: %s" % (s, " ".join("w%d:%s" % (x["window"], x["ids"]) for x in w)))


if __name__ == "__main__":
    main()
