"""The original encoder-decoder Transformer (Vaswani et al. 2017) with greedy and beam-search
generation: the encoder runs once, the decoder's self-attention keys and values are cached and the
cross-attention's are projected once."""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import nn, ops, tensor
from .._typing import ArrayIn, ArrayLike, FloatArray, IntArray
from .._args import flag, float_arg, int_arg, is_int
from ._common import (Loss, ModelOutput, as_ids, device_tensor, model_loss, scratch, to_device, token_labels,
                      training_forward)
from .generation import check_generation_args, eos_set

__all__ = ["Transformer"]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


class Transformer(nn.Module):
    """Source and target embeddings (scaled by ``sqrt(d_model)``), sinusoidal positions, a
    ``TransformerEncoder`` and ``TransformerDecoder`` (each with its final norm, as
    ``torch.nn.Transformer``) and the output projection ``generator`` (its weight tied to the target
    embedding with ``tie_embeddings=True``).

    Parameter names: ``src_embed.weight``, ``tgt_embed.weight``, ``encoder.…`` and ``decoder.…`` (those
    of ``torch.nn.Transformer``'s encoder and decoder), ``generator.weight``/``generator.bias``.
    Padding masks are True at padding, as in torch.
    """

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, d_model: int = 512, nhead: int = 8,
                 num_encoder_layers: int = 6, num_decoder_layers: int = 6, dim_feedforward: int = 2048,
                 activation: str | None = "relu", norm_first: bool = False, layer_norm_eps: float = 1e-5,
                 tie_embeddings: bool = False, max_len: int = 1024, bias: bool = True):
        super().__init__()
        self.d_model = int_arg("d_model", d_model)
        self.tie_embeddings = flag("tie_embeddings", tie_embeddings)
        self.src_embed = nn.Embedding(src_vocab_size, d_model)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, d_model)
        for e in (self.src_embed, self.tgt_embed):
            e.weight *= d_model ** -0.5
        self.positions = nn.SinusoidalPositionalEncoding(d_model, max_len)
        self.encoder = nn.TransformerEncoder(num_encoder_layers, d_model, nhead, dim_feedforward, activation,
                                             norm_first, layer_norm_eps, bias=bias)
        self.decoder = nn.TransformerDecoder(num_decoder_layers, d_model, nhead, dim_feedforward, activation,
                                             norm_first, layer_norm_eps, bias=bias)
        self.generator = nn.Linear(d_model, tgt_vocab_size)
        if self.tie_embeddings:
            self.generator.weight = None  # type: ignore[assignment]  # tied: the head reads tgt_embed's

    def _embed(self, table, ids, offset=0):
        x = ops.embedding(ids, table.weight)
        x *= math.sqrt(self.d_model)
        x += self.positions.encodings(offset, offset + ids.shape[1])
        return x

    # ---- on a device: the weights, memory and caches as coreformer.Tensors ----

    def to(self, device: str = "cpu", dtype: str | None = None) -> Transformer:
        """Run on ``device`` (``"cuda"``, ``"cuda:N"``) with the weights there in ``dtype`` (``"float32"`` by
        default, ``"float16"``, ``"bfloat16"``; float32 arithmetic in every kernel): the encoder's output
        stays on the device, the decoder's caches live there, each step brings back the last logits.
        ``"cpu"`` goes back to the CPU path. Returns the model."""
        return to_device(self, device, dtype)

    def _use_tensors(self, device: str, dtype: str):
        """The device path's weights (with ``device="cpu"`` the same path runs on the CPU kernels: how the
        tests check it without a GPU)."""
        def t(a):
            return device_tensor(a, device, dtype)

        def norm(n):
            return (t(n.weight), t(n.bias), n.eps)

        def attn(a):
            return (t(a.in_proj_weight), t(a.in_proj_bias), t(a.out_proj.weight), t(a.out_proj.bias))

        def ffn(layer):
            return (t(layer.linear1.weight), t(layer.linear1.bias), t(layer.linear2.weight), t(layer.linear2.bias))

        scale = math.sqrt(self.d_model)
        d = {"device": device, "dtype": dtype, "src": t(self.src_embed.weight * scale),
             "tgt": t(self.tgt_embed.weight * scale), "pos": t(self.positions.encodings(0, 1)), "enc": [], "dec": [],
             "enc_norm": None if self.encoder.norm is None else norm(self.encoder.norm),
             "dec_norm": None if self.decoder.norm is None else norm(self.decoder.norm),
             "gen_w": t(self.tgt_embed.weight if self.tie_embeddings else self.generator.weight),
             "gen_b": t(self.generator.bias)}
        d["pos_len"] = 0  # the position table is uploaded as long as it must be (below)
        for layer in self.encoder.layers:
            n1, n2 = norm(layer.norm1), norm(layer.norm2)
            d["enc"].append({"heads": layer.self_attn.num_heads, "act": layer.linear1.activation,
                             "norm_first": layer.norm_first, "eps": (n1[2], n2[2]),
                             "w": attn(layer.self_attn) + ffn(layer) + n1[:2] + n2[:2]})
        for layer in self.decoder.layers:
            n1, n2, n3 = norm(layer.norm1), norm(layer.norm2), norm(layer.norm3)
            d["dec"].append({"heads": layer.self_attn.num_heads, "act": layer.linear1.activation,
                             "norm_first": layer.norm_first, "eps": (n1[2], n2[2], n3[2]),
                             "w": attn(layer.self_attn) + attn(layer.multihead_attn) + ffn(layer) + n1[:2] + n2[:2]
                             + n3[:2]})
        object.__setattr__(self, "_device", d)
        return self

    def _embed_device(self, table: str, ids, offset=0):
        d = self.__dict__["_device"]
        b, s = ids.shape
        if offset + s > d["pos_len"]:  # sinusoidal positions on the device, grown (doubling) as needed
            n = max(offset + s, 2 * d["pos_len"], 64)
            d["pos"], d["pos_len"] = tensor(self.positions.encodings(0, n), d["device"], d["dtype"]), n
        e = ops.embedding(tensor(ids, d["device"]), d[table])
        p = ops.embedding(tensor(np.broadcast_to(np.arange(offset, offset + s), (b, s)).copy(), d["device"]),
                          d["pos"])
        _, x = ops.layer_norm(e, residual=p, return_sum=True)  # x = e + p (the norm is not used)
        return x

    def _mask(self, m):
        d = self.__dict__["_device"]
        return None if m is None else tensor(np.asarray(m, bool), d["device"])

    def _encode(self, src, src_padding_mask=None):
        """The encoder's output: a Tensor on the model's device, or an array on the CPU path."""
        d = self.__dict__.get("_device")
        if not d:
            return self.encoder(self._embed(self.src_embed, src), src_key_padding_mask=src_padding_mask)
        x = self._embed_device("src", src)
        kpm = self._mask(src_padding_mask)
        for L in d["enc"]:
            ops.transformer_encoder_layer(x, L["heads"], *L["w"], activation=L["act"], norm_first=L["norm_first"],
                                          eps=L["eps"], key_padding_mask=kpm, out=x)
        return x if d["enc_norm"] is None else ops.layer_norm(x, *d["enc_norm"])

    def _decode_device(self, tgt, memory, memory_padding_mask, tgt_padding_mask, cache, offset):
        d = self.__dict__["_device"]
        if isinstance(memory, np.ndarray):
            memory = tensor(memory, d["device"], d["dtype"])
        x = self._embed_device("tgt", tgt, offset)
        mkp, tkp = self._mask(memory_padding_mask), self._mask(tgt_padding_mask)
        t = tgt.shape[1]
        for i, L in enumerate(d["dec"]):
            kw = {}
            if cache is not None:
                sc, cc = cache[i]
                sc.reserve(t)
                if cc.length == 0:
                    cc.reserve(memory.shape[1])
                kw = {"k_cache": sc.k, "v_cache": sc.v, "cache_length": sc.length, "memory_k": cc.k,
                      "memory_v": cc.v, "memory_length": cc.length}
            ops.transformer_decoder_layer(x, memory if cache is None or cache[i][1].length == 0 else None, L["heads"],
                                          *L["w"], activation=L["act"], norm_first=L["norm_first"], eps=L["eps"],
                                          tgt_is_causal=True, tgt_key_padding_mask=tkp,
                                          memory_key_padding_mask=mkp, out=x, **kw)
            if cache is not None:
                sc, cc = cache[i]
                sc.length += t
                if cc.length == 0:
                    cc.length = memory.shape[1]
        h = x if d["dec_norm"] is None else ops.layer_norm(x, *d["dec_norm"])
        return ops.linear(h, d["gen_w"], d["gen_b"])  # a Tensor on the device

    def _new_cache(self, batch, capacity, memory_len):
        d = self.__dict__.get("_device")
        if not d:
            return self.decoder.new_cache(batch, capacity, memory_len)
        return [(nn.DeviceKVCache(batch, L["heads"], self.d_model // L["heads"], capacity, d["device"], d["dtype"]),
                 nn.DeviceKVCache(batch, L["heads"], self.d_model // L["heads"], memory_len, d["device"], d["dtype"]))
                for L in d["dec"]]

    def _repeat_rows(self, memory, k):
        """Each batch row of memory k times (beam search): on the device, a row gather."""
        if isinstance(memory, np.ndarray):
            return np.repeat(memory, k, axis=0)
        d = self.__dict__["_device"]
        b, s, e = memory.shape
        rows = ops.embedding(tensor(np.repeat(np.arange(b), k), d["device"]), memory.reshape(b, s * e))
        return rows.reshape(b * k, s, e)

    def encode(self, src_ids: ArrayLike, src_padding_mask: ArrayLike | None = None) -> FloatArray:
        """The encoder's output ``(B, S, d_model)`` for source ids ``(B, S)`` (float32, on the host)."""
        src = as_ids(src_ids, "src_ids", vocab=self.src_embed.num_embeddings)
        m = self._encode(src, src_padding_mask)
        return m if isinstance(m, np.ndarray) else m.numpy().astype(np.float32, copy=False)

    def decode(self, tgt_ids: ArrayLike, memory: ArrayIn | None, memory_padding_mask: ArrayLike | None = None,
               tgt_padding_mask: ArrayLike | None = None, cache: list[tuple[nn.KVCache, nn.KVCache]] | None = None,
               offset: int = 0) -> FloatArray:
        """Logits ``(B, T, V)`` of the target positions ``offset .. offset + T - 1`` (causal)."""
        tgt = as_ids(tgt_ids, "tgt_ids", vocab=self.tgt_embed.num_embeddings)
        if self.__dict__.get("_device"):
            logits = self._decode_device(tgt, memory, memory_padding_mask, tgt_padding_mask, cache, offset)
            return logits.numpy().astype(np.float32, copy=False)
        h = self.decoder(self._embed(self.tgt_embed, tgt, offset), memory, tgt_key_padding_mask=tgt_padding_mask,
                         memory_key_padding_mask=memory_padding_mask, tgt_is_causal=True, cache=cache)
        w = self._weight("tied_head_weight") if self.tie_embeddings else self.generator._weight("weight")
        return ops.linear(h, w, self.generator.bias)

    _packable = ("tied_head_weight",)

    @property
    def tied_head_weight(self) -> FloatArray | None:
        """The output projection's weight when it is tied to the target embeddings (else ``None``)."""
        return self.tgt_embed.weight if self.tie_embeddings else None

    def forward(self, src_ids: ArrayLike, tgt_ids: ArrayLike, src_padding_mask: ArrayLike | None = None,
                tgt_padding_mask: ArrayLike | None = None, labels: ArrayLike | None = None) -> ModelOutput:
        """Teacher-forced logits ``(B, T, V)``. ``labels`` (B, T): the target each decoder position predicts
        (tgt_ids are the decoder's inputs, typically the labels shifted right after a BOS; -100 ignored):
        ``.loss``, the mean cross-entropy over the counted positions, with a ``backward()`` after a
        training-mode forward."""
        if self.training:
            with training_forward(self) as generation:
                return self._train_forward(src_ids, tgt_ids, src_padding_mask, tgt_padding_mask, labels, generation)
        memory = self._encode(as_ids(src_ids, "src_ids", vocab=self.src_embed.num_embeddings), src_padding_mask)
        logits = self.decode(tgt_ids, memory, src_padding_mask, tgt_padding_mask)
        if not isinstance(memory, np.ndarray):
            memory = memory.numpy().astype(np.float32, copy=False)
        out = ModelOutput(logits=logits, encoder_last_hidden_state=memory)
        if labels is not None:
            lab = token_labels(labels, logits.shape[:2], logits.shape[-1], "the target vocabulary")
            out.loss = Loss(ops.cross_entropy(logits, lab))
        return out

    def _train_forward(self, src_ids: ArrayLike, tgt_ids: ArrayLike, src_padding_mask: ArrayLike | None,
                       tgt_padding_mask: ArrayLike | None, labels: ArrayLike | None, generation: Any) -> ModelOutput:
        if self.__dict__.get("_device"):
            raise ValueError("Transformer: training runs on the CPU (call .to('cpu'))")
        src = as_ids(src_ids, "src_ids", vocab=self.src_embed.num_embeddings)
        tgt = as_ids(tgt_ids, "tgt_ids", vocab=self.tgt_embed.num_embeddings)
        scale = np.float32(math.sqrt(self.d_model))

        def embed(table: nn.Embedding, ids: np.ndarray) -> np.ndarray:
            x = table(ids)  # training: keeps the ids for its backward
            x *= scale
            x += self.positions.encodings(0, ids.shape[1])
            return x
        memory = self.encoder(embed(self.src_embed, src), src_key_padding_mask=src_padding_mask)
        h = self.decoder(embed(self.tgt_embed, tgt), memory, tgt_key_padding_mask=tgt_padding_mask,
                         memory_key_padding_mask=src_padding_mask, tgt_is_causal=True)
        w = self.tgt_embed.weight if self.tie_embeddings else self.generator.weight
        logits = ops.linear(h, w, self.generator.bias)
        out = ModelOutput(logits=logits, encoder_last_hidden_state=memory)
        if labels is None:
            return out
        lab = token_labels(labels, logits.shape[:2], logits.shape[-1], "the target vocabulary")
        loss, dlogits = ops.cross_entropy(logits, lab, return_grad=True,
                                          grad_out=scratch(self, "dlogits", logits.shape))

        def backward() -> None:
            owner = self.tgt_embed if self.tie_embeddings else self.generator
            dh, dw, db = ops.linear_backward(dlogits, h, w, dweight_out=nn.grad_slot([owner._param("weight")]))
            owner._accumulate("weight", dw)
            if self.generator.bias is not None:
                self.generator._accumulate("bias", db)
            dx_tgt, dmem = self.decoder.backward(dh)
            self.tgt_embed.backward(dx_tgt * scale)
            self.src_embed.backward(self.encoder.backward(dmem) * scale)
        out.loss = model_loss(self, loss, backward, generation)
        return out

    def generate(self, src_ids: ArrayLike, max_new_tokens: int, bos_token_id: int,
                 eos_token_id: int | list[int] | None = None, num_beams: int = 1, length_penalty: float = 1.0,
                 src_padding_mask: ArrayLike | None = None, pad_token_id: int | None = None) -> IntArray:
        """Translate: ``(B, 1 + n)`` target ids starting with ``bos_token_id``, at most
        ``max_new_tokens`` new ones per row, a row ending at ``eos_token_id`` and padded with
        ``pad_token_id`` (default: the EOS) after.

        ``num_beams=1`` is greedy; more keeps that many hypotheses per row and returns the one with
        the best ``sum(log p) / generated_length ** length_penalty`` (transformers' beam search:
        a hypothesis is finished at EOS, and a row stops once ``num_beams`` hypotheses are finished
        and no running one can beat the worst of them).
        """
        check_generation_args(max_new_tokens, 1.0, None, None, 1.0, num_beams)
        length_penalty = float_arg("length_penalty", length_penalty)
        if not np.isfinite(length_penalty):
            raise ValueError(f"length_penalty must be finite, got {length_penalty}")
        src = as_ids(src_ids, "src_ids", vocab=self.src_embed.num_embeddings)
        if src.shape[1] == 0:
            raise ValueError(f"src_ids must hold at least one token per row, got shape {src.shape}")
        if src_padding_mask is not None:
            src_padding_mask = np.asarray(src_padding_mask, bool)
            if src_padding_mask.shape != src.shape:
                raise ValueError(f"src_padding_mask must have the shape of src_ids {src.shape}, got "
                                 f"{src_padding_mask.shape}")
        v = self.tgt_embed.num_embeddings
        if not is_int(bos_token_id):
            raise TypeError(f"bos_token_id must be an int, got {bos_token_id!r}")
        if not 0 <= bos_token_id < v:
            raise IndexError(f"bos_token_id {bos_token_id} is outside the target vocabulary [0, {v})")
        eos = eos_set(eos_token_id, None)
        pad = int_arg("pad_token_id",
                      pad_token_id if pad_token_id is not None else (eos[0] if eos.size else bos_token_id))
        memory = self._encode(src, src_padding_mask)  # stays on the model's device
        if num_beams == 1:
            return self._greedy(memory, src_padding_mask, max_new_tokens, bos_token_id, eos, pad)
        return self._beam(memory, src_padding_mask, max_new_tokens, bos_token_id, eos, pad, num_beams,
                          float(length_penalty))

    def _greedy(self, memory, mpad, max_new, bos, eos, pad):
        b = memory.shape[0]
        cache = self._new_cache(b, max_new + 1, memory.shape[1])
        seqs = np.full((b, max_new + 1), pad, np.int64)
        seqs[:, 0] = bos
        done = np.zeros(b, bool)
        n = 1
        for step in range(max_new):
            # a stopped row reads the BOS (pad need not be a token, e.g. -1); its pick is dropped
            cur = np.where(done, bos, seqs[:, n - 1])[:, None]
            if self.__dict__.get("_device"):  # pick on the device: only the ids come back
                logits = self._decode_device(cur, memory, mpad, None, cache, n - 1)
                best = ops.argmax(logits.reshape(b, -1)).numpy()
            else:
                best = self.decode(cur, memory, mpad, cache=cache, offset=n - 1)[:, -1].argmax(axis=1)
            nxt = np.where(done, pad, best)
            seqs[:, n] = nxt
            n += 1
            done |= np.isin(nxt, eos)
            if done.all():
                break
        return seqs[:, :n].copy()

    def _beam(self, memory, mpad, max_new, bos, eos, pad, k, length_penalty):
        b, s_src = memory.shape[0], memory.shape[1]
        memory = self._repeat_rows(memory, k)
        mpad = None if mpad is None else np.repeat(mpad, k, axis=0)
        cache = self._new_cache(b * k, max_new + 1, s_src)
        seqs = np.full((b * k, max_new + 1), bos, np.int64)
        scores = np.zeros((b, k))
        scores[:, 1:] = -np.inf  # at the start every beam is the same: only the first counts
        finished: list[list[tuple[float, Any]]] = [[] for _ in range(b)]  # (normalised score, tokens)
        row_done = np.zeros(b, bool)
        n = 1
        for step in range(max_new):
            logp = _log_softmax(self.decode(seqs[:, n - 1:n], memory, mpad, cache=cache, offset=n - 1)[:, -1])
            v = logp.shape[1]
            cand = (scores.reshape(b * k, 1) + logp).reshape(b, k * v)
            top = np.argsort(-cand, axis=1, kind="stable")[:, :2 * k]
            new_beam = np.zeros((b, k), np.int64)
            new_tok = np.zeros((b, k), np.int64)
            new_score = np.full((b, k), -np.inf)
            for i in range(b):
                if row_done[i]:  # its beams read the BOS from here on (pad need not be a token)
                    new_beam[i] = np.arange(k)
                    new_tok[i] = bos
                    continue
                filled = 0
                for rank, c in enumerate(top[i]):
                    beam, tok = divmod(int(c), v)
                    sc = cand[i, c]
                    if not np.isfinite(sc):
                        break
                    if tok in eos:
                        if rank < k:
                            hyp = np.append(seqs[i * k + beam, :n], tok)
                            finished[i].append((sc / (n ** length_penalty), hyp))
                        continue
                    new_beam[i, filled], new_tok[i, filled], new_score[i, filled] = beam, tok, sc
                    filled += 1
                    if filled == k:
                        break
                finished[i].sort(key=lambda h: -h[0])
                del finished[i][k:]
                # transformers' heuristic: done when k hypotheses are finished and the best running
                # one, normalised at the current length, cannot beat the worst finished
                if len(finished[i]) == k and new_score[i, 0] / (n ** length_penalty) <= finished[i][-1][0]:
                    row_done[i] = True
            index = (np.arange(b)[:, None] * k + new_beam).reshape(-1)
            seqs[:, :n] = seqs[index, :n]
            seqs[:, n] = new_tok.reshape(-1)
            scores = np.where(row_done[:, None], -np.inf, new_score)
            n += 1
            for self_kv, _ in cache:
                self_kv.reorder(index)
            if row_done.all():
                break
        results = []
        for i in range(b):
            hyps = list(finished[i])
            if not row_done[i]:  # out of steps: the running beams compete too
                for j in range(k):
                    if np.isfinite(scores[i, j]):
                        # (max_new_tokens=0: the BOS alone, length 0, score 0)
                        hyps.append((scores[i, j] / (max(n - 1, 1) ** length_penalty), seqs[i * k + j, :n]))
            hyps.sort(key=lambda h: -h[0])
            results.append(hyps[0][1])
        width = max(len(r) for r in results)
        out = np.full((b, width), pad, np.int64)
        for i, r in enumerate(results):
            out[i, :len(r)] = r
        return out
