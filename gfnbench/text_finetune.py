"""A copy of a causal LM fully fine-tuned on plain texts: the paper's infilling reward model (GPT-2 Large
fine-tuned on the train stories, docs/paper.md#infilling-reward) and anything else that wants a domain-adapted scorer.

The copy is made from the network with every LoRA adapter removed (not merged), so the policy being trained
is never touched and the tuned scorer starts from the plain base weights.
"""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from gfnbench.devices import model_device
from gfnbench.trajectories import right_pad


@dataclass(frozen=True)
class TextFinetuneConfig:
    epochs: int = 5              # the paper: 50 epochs on 900 stories with a GPU
    lr: float = 1e-4             # the paper's
    batch_size: int = 8
    max_length: int = 128        # tokens per text (the paper's max sequence length)
    seed: int = 0


def plain_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy without adapters: peft's `unload` drops the LoRA layers of the copy and keeps base weights."""
    clone = copy.deepcopy(model)
    return clone.unload() if hasattr(clone, "peft_config") else clone


def text_batch(tokenizer, texts: list[str], max_length: int, device: torch.device | str = "cpu"
               ) -> dict[str, torch.Tensor]:
    """Right-padded ids, mask and labels (-100 on padding, so it is not a target), on `device`."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_length] for t in texts]
    input_ids = right_pad(ids, tokenizer.pad_token_id, device=device)
    mask = right_pad([[1] * len(i) for i in ids], 0, device=device)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": input_ids.masked_fill(mask == 0, -100)}


@torch.no_grad()
def mean_token_nll(model: torch.nn.Module, tokenizer, texts: list[str], max_length: int = 128) -> float:
    """Mean next-token NLL over all tokens of `texts` (what fine-tuning lowers)."""
    batch = text_batch(tokenizer, texts, max_length, model_device(model))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    return float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100))


def finetune_on_texts(model: torch.nn.Module, tokenizer, texts: list[str],
                      cfg: TextFinetuneConfig = TextFinetuneConfig()) -> tuple[torch.nn.Module, list[float]]:
    """(a fully fine-tuned plain copy of `model`, frozen and in eval mode; its loss per optimizer step)."""
    if not texts:
        raise ValueError("fine-tuning the reward LM needs at least one training text")
    tuned = plain_copy(model).train()
    for p in tuned.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(tuned.parameters(), lr=cfg.lr)
    order, rng, curve = list(range(len(texts))), random.Random(cfg.seed), []
    n_batches = -(-len(texts) // cfg.batch_size)
    with torch.enable_grad():
        for _ in tqdm(range(cfg.epochs), desc="fine-tuning the reward LM", leave=False):
            rng.shuffle(order)
            for b in range(n_batches):
                batch = text_batch(tokenizer, [texts[i] for i in order[b * cfg.batch_size:(b + 1) * cfg.batch_size]],
                                   cfg.max_length, model_device(tuned))
                loss = tuned(**batch).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
                curve.append(float(loss.detach()))
    tuned.eval()
    for p in tuned.parameters():
        p.requires_grad_(False)
    return tuned, curve
