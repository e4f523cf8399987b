"""Sampling from the policy and scoring what was sampled, one concept per module:

  config       SamplingConfig, the Tool hook, PromptTooLong (a leaf: what a task declares)
  tokens       token-level helpers (encoding, the context check, the masked policy distribution)
  decoders     the sampler's decode step: HF's forward or the lean Llama decoder
  sampler      `sample`: lock-step, KV-cached, tool-aware batched sampling
  model_parts  the (body, output layer) split and LoRA-merged weights the fast passes use
  head         log-probs through the output layer in blocks (no [positions, vocabulary] logits at once)
  scoring      teacher-forced log-probs: policy_log_probs, likelihoods, continuations
  rewards      log p(prefix, suffix | context) for every prefix: the CoT/infill reward

The names below are the package's public surface; callers import them from `gfnbench.sampling`. The tuning
constants (HEAD_BLOCK, COPIES_PER_ROW, DROP_FINISHED_AT, ROWS_PER_PASS, PASS_COST) live in, and are read from,
their own modules: patch them there.
"""
from gfnbench.sampling.config import PromptTooLong, SamplingConfig, Tool
from gfnbench.sampling.decoders import prefill
from gfnbench.sampling.rewards import context_suffix_log_reward, every_prefix_log_reward
from gfnbench.sampling.sampler import draw_index, inverse_cdf, sample
from gfnbench.sampling.scoring import (
    continuation_log_probs,
    length_passes,
    policy_log_probs,
    sequence_log_likelihoods,
    state_token_log_probs,
)
from gfnbench.sampling.tokens import (
    check_context,
    column_mask_bias,
    encode,
    few_allowed,
    masked_log_softmax,
    positions_from_mask,
)

__all__ = [
    "PromptTooLong", "SamplingConfig", "Tool", "check_context", "column_mask_bias", "context_suffix_log_reward",
    "continuation_log_probs", "draw_index", "encode", "every_prefix_log_reward", "few_allowed", "inverse_cdf",
    "length_passes", "masked_log_softmax", "policy_log_probs", "positions_from_mask", "prefill", "sample",
    "sequence_log_likelihoods", "state_token_log_probs",
]
