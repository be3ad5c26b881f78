"""An lm-eval LM over an in-process `llama_cpp.Llama`: GGUF files are evaluated exactly as lm-eval's `hf`
backend evaluates HF models (same request splitting, same rolling windows), without a server.

Contexts share the memory-mapped weights: one keeps logits for every position (log-likelihoods;
requests are ordered so those sharing a prefix are adjacent, and the prefix already in the KV cache is
not evaluated again), one decodes several greedy generations at once (generate_until).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from lm_eval import utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from workbench.core.devices import usable_cores
from workbench.eval.fidelity import log_softmax


@dataclass(frozen=True)
class Scoring:
    """One log-likelihood request as lm-eval's hf backend windows it: the tokens fed (`window`), the
    tokens they predict (`full[1:]`) and the first position whose prediction is scored."""

    window: list[int]
    full: list[int]
    scored_from: int

    @classmethod
    def of(cls, context: list[int], continuation: list[int], max_length: int) -> Scoring:
        full = (context + continuation)[-(max_length + 1) :]
        window = full[:-1]
        return cls(window, full, len(window) - len(continuation))

    def shared_with(self, head: Scoring) -> int:
        """Tokens of this request's window taken from the head's KV cells: the context both share, which
        ends where either starts scoring (scored positions need logits from their own decode). 0 when
        the two do not share a whole context."""
        context = min(self.scored_from, head.scored_from)
        common = len(os.path.commonprefix([self.window[:context], head.window[:context]]))
        return context if common == context else 0


@dataclass
class ScoreGroup:
    """Requests scored in one KV pool: their positions in the caller's list, and for each the sequence
    whose context cells it takes (itself when it shares none) and how many."""

    indices: list[int] = field(default_factory=list)
    requests: list[Scoring] = field(default_factory=list)
    head_of: list[int] = field(default_factory=list)
    shared: list[int] = field(default_factory=list)

    def add(self, index: int, request: Scoring, head: int, shared: int) -> None:
        self.indices.append(index)
        self.requests.append(request)
        self.head_of.append(head)
        self.shared.append(shared)


@register_model("llama-cpp-inprocess")
class LlamaCppLM(TemplateLM):
    def __init__(
        self,
        pretrained: str,
        max_length: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
        max_gen_toks: int = 256,
        gen_batch: int = 8,
        score_batch: int = 32,
        add_bos_token: bool | None = None,
        seed: int = 1234,
        lora: str | None = None,  # a GGUF LoRA adapter applied on the file
        **_: Any,
    ):
        super().__init__()
        self.path = pretrained
        self._max_length = int(max_length)
        self.n_threads = int(n_threads) if n_threads else usable_cores()  # llama-cpp-python: half
        self.n_batch = int(n_batch)
        self.max_gen_toks = int(max_gen_toks)
        self.gen_batch = int(gen_batch)
        self.score_batch = int(score_batch)  # sequences per decode when scoring: short ones mostly
        self.add_bos_token = add_bos_token  # None: as the GGUF says (tokenizer.ggml.add_bos_token)
        self.seed = int(seed)
        self.lora = lora
        self._llamas: dict[bool, Any] = {}  # by logits_all
        self._batched: Any = None

    def context(self, logits_all: bool) -> Any:
        if logits_all not in self._llamas:
            import llama_cpp

            self._llamas[logits_all] = llama_cpp.Llama(
                self.path,
                n_ctx=self._max_length,
                n_batch=self.n_batch,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                logits_all=logits_all,
                seed=self.seed,
                verbose=False,
                lora_path=self.lora,
            )
        return self._llamas[logits_all]

    @property
    def llm(self) -> Any:
        return self._llamas.get(True) or self._llamas.get(False) or self.context(False)

    def close(self) -> None:
        if self._batched is not None:
            self._batched.close()  # before the model it uses
            self._batched = None
        for llm in self._llamas.values():
            llm.close()
        self._llamas.clear()

    # tokens ---------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.llm.token_eos()

    @property
    def prefix_token_id(self) -> int:
        bos = self.llm.token_bos()
        return bos if bos >= 0 else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **_: Any) -> list[int]:
        add = self.add_bos_token if add_special_tokens is None else add_special_tokens
        return self.llm.tokenize(string.encode("utf-8"), add_bos=True if add is None else add, special=True)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.llm.detokenize(tokens).decode("utf-8", errors="ignore")

    # scoring ---------------------------------------------------------------------------------
    def logits(self, tokens: list[int]) -> np.ndarray:
        """Logits after each of `tokens` (one row per token); the cached common prefix is reused."""
        llm = self.context(logits_all=True)
        same = len(os.path.commonprefix([llm.input_ids[: llm.n_tokens].tolist(), tokens]))
        if same < len(tokens):
            llm.n_tokens = same  # eval() drops the KV cache from here on
            llm.eval(tokens[same:])
        return llm.scores[: len(tokens)]

    def logits_of(self, sequences: list[list[int]]) -> Iterator[np.ndarray]:
        """Logits after each token of each sequence, in order, several sequences per decode in the
        batched context (the fidelity comparison's variant side)."""
        group: list[list[int]] = []
        for ids in sequences:
            if len(ids) > self._max_length:
                raise ValueError(f"a sequence of {len(ids)} tokens does not fit the context ({self._max_length})")
            if group and (len(group) == self.score_batch or sum(map(len, group)) + len(ids) > self._max_length):
                yield from self._logits_group(group)
                group = []
            group.append(ids)
        if group:
            yield from self._logits_group(group)

    def _logits_group(self, group: list[list[int]]) -> list[np.ndarray]:
        ctx = self.batched_context()
        ctx.kv_cache_clear()
        entries = [(token, pos, seq, True) for seq, ids in enumerate(group) for pos, token in enumerate(ids)]
        rows = np.concatenate([rows for _, rows in self._decoded(ctx, entries)])
        bounds = np.cumsum([0, *map(len, group)])
        return [rows[bounds[i] : bounds[i + 1]] for i in range(len(group))]

    def _loglikelihood_tokens(
        self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False, **_: Any
    ) -> list[tuple[float, bool]]:
        """Several requests per decode in one KV pool (like generation): requests are ordered so those
        with the same context are adjacent; a context is decoded once and shared by its continuations,
        and logits are computed only where a continuation token is scored."""
        scoring = [Scoring.of(context, continuation, self._max_length) for _, context, continuation in requests]
        order = sorted(range(len(requests)), key=lambda i: scoring[i].full)
        results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        progress = tqdm(total=len(requests), disable=disable_tqdm or len(requests) < 2, desc="llama.cpp loglikelihood")
        for group in self._score_groups([scoring[i] for i in order], order):
            for i, result in zip(group.indices, self._score_group(group), strict=True):
                results[i] = result
            progress.update(len(group.indices))
        progress.close()
        return results

    def _score_groups(self, ordered: list[Scoring], indices: list[int]) -> Iterator[ScoreGroup]:
        """Consecutive requests, as many as fit the pool's sequences and cells together, each sharing the
        context of the last request before it in the group that shares nothing (its head)."""
        group = ScoreGroup()
        cells = 0
        for scoring, i in zip(ordered, indices, strict=True):
            head = group.head_of[-1] if group.indices else None
            shared = scoring.shared_with(group.requests[head]) if head is not None else 0
            if group.indices and (
                len(group.indices) == self.score_batch or cells + len(scoring.window) - shared > self._max_length
            ):
                yield group
                group, cells, head, shared = ScoreGroup(), 0, None, 0
            group.add(i, scoring, head if shared and head is not None else len(group.indices), shared)
            cells += len(scoring.window) - shared
        if group.indices:
            yield group

    def _score_group(self, group: ScoreGroup) -> list[tuple[float, bool]]:
        ctx = self.batched_context()
        ctx.kv_cache_clear()
        requests, head_of, shared = group.requests, group.head_of, group.shared
        # each context is decoded once, in its head's sequence, as far as its requests share it, and copied
        heads = sorted(set(head_of))
        reach = {h: max(shared[s] for s in range(len(requests)) if head_of[s] == h) for h in heads}
        self._decode(ctx, [(requests[h].window[p], p, h, False) for h in heads for p in range(reach[h])])
        for seq in range(len(requests)):
            if head_of[seq] != seq:
                ctx.kv_cache_seq_cp(head_of[seq], seq, 0, shared[seq])
        entries = [
            (scoring.window[p], p, seq, p >= scoring.scored_from)
            for seq, scoring in enumerate(requests)
            for p in range(shared[seq] if head_of[seq] != seq else reach[seq], len(scoring.window))
        ]
        totals, greedy = [0.0] * len(requests), [True] * len(requests)
        for chunk, rows in self._decoded(ctx, entries):
            wanted = [(seq, p) for _, p, seq, wants in chunk if wants]
            for (seq, p), row in zip(wanted, log_softmax(rows), strict=True):
                target = requests[seq].full[p + 1]
                totals[seq] += float(row[target])
                greedy[seq] = greedy[seq] and int(row.argmax()) == target
        return list(zip(totals, greedy, strict=True))

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Every document's rolling windows (lm-eval's own windowing) scored together, summed per document."""
        windows: list[tuple[None, list[int], list[int]]] = []
        owners: list[int] = []
        for index, request in enumerate(requests):
            for context, continuation in map(
                utils.make_disjoint_window,
                utils.get_rolling_token_windows(
                    token_list=self.tok_encode(request.args[0]),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self._max_length,
                    context_len=1,
                ),
            ):
                windows.append((None, context, continuation))
                owners.append(index)
        scored = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for owner, (loglikelihood, _) in zip(owners, scored, strict=True):
            totals[owner] += loglikelihood
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # generation ------------------------------------------------------------------------------
    def batched_context(self) -> Any:
        """A context decoding up to `gen_batch` (generating) or `score_batch` (scoring) sequences at once in
        one KV pool of `max_length` cells: on CPU a step of 8 tokens costs little more than a step of 1."""
        if self._batched is None:
            import llama_cpp
            from llama_cpp import _internals

            # the single-sequence context's settings (flash attention among them: a different attention
            # kernel moves log-likelihoods by ~1e-4), with a pool of sequences
            params = llama_cpp.llama_context_params.from_buffer_copy(self.llm.context_params)
            params.n_ctx = self._max_length
            params.n_batch = params.n_ubatch = self.n_batch
            params.n_seq_max = max(self.gen_batch, self.score_batch)
            params.kv_unified = True
            params.n_threads = params.n_threads_batch = self.n_threads
            self._batched = _internals.LlamaContext(model=self.llm._model, params=params, verbose=False)
            adapter = getattr(self.llm, "_lora_adapter", None)
            if adapter is not None:  # the adapter applies per context: this one too
                adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
                scales = (ctypes.c_float * 1)(1.0)
                if llama_cpp.llama_set_adapters_lora(self._batched.ctx, adapters, 1, scales):
                    raise RuntimeError(f"could not apply the adapter {self.lora} to the batched context")
        return self._batched

    def _decode_rows(self, ctx: Any, entries: list[tuple[int, int, int, bool]]) -> np.ndarray:
        """Decode (token, position, sequence, wants_logits) entries (at most n_batch); returns the logits
        of the entries that want them, in order, one row each."""
        from llama_cpp import _internals

        if not entries:
            return np.zeros((0, self.llm.n_vocab()), dtype=np.float32)
        batch = _internals.LlamaBatch(n_tokens=len(entries), embd=0, n_seq_max=1, verbose=False)
        try:
            raw = batch.batch
            for i, (token, pos, seq, wants) in enumerate(entries):
                raw.token[i], raw.pos[i], raw.seq_id[i][0], raw.n_seq_id[i], raw.logits[i] = token, pos, seq, 1, wants
            raw.n_tokens = len(entries)
            ctx.decode(batch)
            wanted = sum(1 for entry in entries if entry[3])
            return np.ctypeslib.as_array(ctx.get_logits(), shape=(wanted, self.llm.n_vocab())).copy()
        finally:
            batch.close()

    def _decoded(
        self, ctx: Any, entries: list[tuple[int, int, int, bool]]
    ) -> Iterator[tuple[list[tuple[int, int, int, bool]], np.ndarray]]:
        """Decode entries in chunks of n_batch, in order: each chunk with its wanted logits."""
        for start in range(0, len(entries), self.n_batch):
            chunk = entries[start : start + self.n_batch]
            yield chunk, self._decode_rows(ctx, chunk)

    def _decode(self, ctx: Any, entries: list[tuple[int, int, int, bool]]) -> dict[int, np.ndarray]:
        """Decode entries; returns the last wanted logits of each sequence."""
        logits: dict[int, np.ndarray] = {}
        for chunk, rows in self._decoded(ctx, entries):
            logits.update(zip([seq for _, _, seq, wants in chunk if wants], rows, strict=True))
        return logits

    def _generate_group(self, prompts: list[list[int]], settings: list[tuple[list[str], int]]) -> list[str]:
        """Greedy generation for a group of prompts that fit the KV pool together."""
        import llama_cpp

        ctx = self.batched_context()
        ctx.kv_cache_clear()
        vocab = self.llm._model.vocab
        # the prefix all prompts share (a system prompt, few-shot examples) is decoded once and copied
        shared = len(os.path.commonprefix(prompts)) if len(prompts) > 1 else 0
        shared = max(0, min(shared, min(len(p) for p in prompts) - 1))  # every prompt keeps a token for logits
        self._decode(ctx, [(tok, pos, 0, False) for pos, tok in enumerate(prompts[0][:shared])])
        for seq in range(1, len(prompts) if shared else 0):
            ctx.kv_cache_seq_cp(0, seq, 0, shared)
        rest = [(tok, pos, seq, pos == len(p) - 1) for seq, p in enumerate(prompts) for pos, tok in enumerate(p)]
        logits = self._decode(ctx, [entry for entry in rest if entry[1] >= shared])
        generated: list[list[int]] = [[] for _ in prompts]
        texts = [""] * len(prompts)
        active = set(range(len(prompts)))
        while active:
            step = []
            for seq in sorted(active):
                token = int(logits[seq].argmax())
                until, limit = settings[seq]
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    active.discard(seq)
                    continue
                generated[seq].append(token)
                texts[seq] = self.tok_decode(generated[seq])
                if any(stop in texts[seq] for stop in until) or len(generated[seq]) >= limit:
                    active.discard(seq)
                    continue
                step.append((token, len(prompts[seq]) + len(generated[seq]) - 1, seq, True))
            if step:
                logits = self._decode(ctx, step)
        for seq, (until, _) in enumerate(settings):
            for stop in until:
                texts[seq] = texts[seq].split(stop)[0]
        return texts

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        jobs = []
        for request in requests:
            context, kwargs = request.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else [stop for stop in until if stop]
            until.append(self.llm.detokenize([self.eot_token_id], special=True).decode("utf-8", "ignore"))  # as hf
            limit = min(int(kwargs.get("max_gen_toks", self.max_gen_toks)), self._max_length - 1)
            prompt = self.tok_encode(context)[-(self._max_length - limit) :] or [self.prefix_token_id]
            jobs.append((prompt, (until, limit)))
        outputs: list[str] = [""] * len(requests)
        group: list[int] = []
        progress = tqdm(total=len(requests), disable=disable_tqdm, desc="llama.cpp generate_until")

        def flush() -> None:
            texts = self._generate_group([jobs[i][0] for i in group], [jobs[i][1] for i in group])
            for i, text in zip(group, texts, strict=True):
                outputs[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
            progress.update(len(group))
            group.clear()

        for i, (prompt, (_, limit)) in enumerate(jobs):
            cells = sum(len(jobs[j][0]) + jobs[j][1][1] for j in group)
            if group and (len(group) == self.gen_batch or cells + len(prompt) + limit > self._max_length):
                flush()
            group.append(i)
        if group:
            flush()
        progress.close()
        return outputs
