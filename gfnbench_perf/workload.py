"""One measured workload: a task, one example, the LoRA policy and a GFlowNetModule, with the two pipelines
(gfnbench's training step and the naive one) that run on it, at one precision (fp32, or a bf16-true base)."""
from __future__ import annotations

import torch

from gfnbench.models import adapters_off
from gfnbench.precision import cast_frozen_base
from gfnbench.sampling import SamplingConfig, masked_log_softmax
from gfnbench.tasks.base import Example


class Workload:
    """A task, one example, the policy (LoRA) and a GFlowNetModule around it, shared by both pipelines. With
    `precision="bf16-true"` the frozen base weights of `lm` are cast to bf16 first (as a bf16-true run does, before
    LoRA is added), so both pipelines run on the same bf16 base with fp32 LoRA."""

    def __init__(self, name: str, lm, samples: int, length: int, lora_rank: int, prompt_tokens: int, seed: int = 0,
                 precision: str = "32-true"):
        from gfnbench.gflownet import GFlowNetConfig, GFlowNetModule
        from gfnbench.tasks import get_task

        cast_frozen_base(lm.model, precision)
        self.name, self.lm, self.samples, self.length, self.precision = name, lm, samples, length, precision
        tok = lm.tokenizer
        task = get_task(name)
        if name == "continuation":
            ex = Example(id="perf", question=self.long_prompt(task, tok, prompt_tokens), answer="")
        else:
            ex = task.examples("train")[20]
        # both pipelines produce exactly `length` actions: the sampler blocks the stop before and forces it there
        task.sampling = lambda *, train=True, temperature=None, **kw: SamplingConfig(
            temperature=temperature or 1.0, min_len=length, max_len=length, **kw)
        self.task, self.ex = task, ex
        cfg = GFlowNetConfig(loss="subtb", lr=1e-5, warmup_steps=1, samples_per_prompt=samples,
                             behaviour_mix=(1.0, 0.0, 0.0), lora_rank=lora_rank, lora_alpha=16,
                             seed_buffer_with_gold=False)
        torch.manual_seed(seed)
        self.module = GFlowNetModule(task, lm, cfg, [ex], seed=seed)
        self.policy = self.module.policy
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        if self.module.log_z is not None:
            self.params += list(self.module.log_z.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=1e-5)
        self.allowed, self.stop_id = self.module.allowed, self.module.stop_id
        self.prompt = task.prompt(ex)
        self.prompt_ids = tok(self.prompt, add_special_tokens=False)["input_ids"]
        if name == "continuation":
            self.reward_ctx, self.suffix = self.prompt, [self.stop_id]
        else:
            self.reward_ctx = task.reward_context(ex)
            self.suffix = tok(task.answer_suffix(ex), add_special_tokens=False)["input_ids"]
        self.reward_ctx_ids = tok(self.reward_ctx, add_special_tokens=False)["input_ids"]
        self.gen = torch.Generator().manual_seed(seed)

    @staticmethod
    def long_prompt(task, tok, n_tokens: int) -> str:
        """Built-in continuation prompts joined until ~n_tokens, cut at a token boundary."""
        text = " ".join(e.question for e in task.examples("train"))
        ids = tok(text, add_special_tokens=False)["input_ids"][:n_tokens]
        return tok.decode(ids).strip()

    # --------------------------------------------------------------------------------- the two pipelines
    def gfnbench_step(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self.module.training_step(torch.tensor([0]), 0)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def naive_step(self) -> float:
        tok, policy, n, L = self.lm.tokenizer, self.policy, self.samples, self.length
        policy.eval()
        ids = torch.tensor([self.prompt_ids])
        bad = (~self.allowed).nonzero().flatten().tolist()
        with torch.no_grad():
            out = policy.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                  num_return_sequences=n, max_new_tokens=L, min_new_tokens=L,
                                  eos_token_id=self.stop_id, pad_token_id=tok.pad_token_id, suppress_tokens=bad,
                                  top_k=0, top_p=1.0, temperature=1.0)
        samples = out[:, ids.shape[1]:]
        # one reward forward (adapters off) over context + sample + suffix: log R of the final state
        ctx = torch.tensor([self.reward_ctx_ids]).expand(n, -1)
        suffix = torch.tensor([self.suffix]).expand(n, -1)
        seq = torch.cat([ctx, samples, suffix], dim=1)
        with torch.no_grad(), adapters_off(policy) as base:
            logp = torch.log_softmax(base(input_ids=seq).logits.float(), -1)
        c = ctx.shape[1]
        log_r = logp[:, c - 1:-1].gather(-1, seq[:, c:, None]).squeeze(-1).sum(-1)
        # one policy forward over prompt + sample (full logits) + backward + AdamW, trajectory balance
        policy.train()
        full = torch.cat([ids.expand(n, -1), samples], dim=1)
        logits = policy(input_ids=full).logits
        lp = masked_log_softmax(logits[:, ids.shape[1] - 1:-1].float(), self.allowed)     # fp32 (bf16 base too)
        log_pf = lp.gather(-1, samples[:, :, None]).squeeze(-1).sum(-1)
        loss = ((log_pf - log_r) ** 2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())
