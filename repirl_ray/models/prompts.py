"""Prompt text -> token ids, the same way for sampling (rollout workers) and for supervised
training on demos, so that a model is trained on exactly the prompts it is later given."""

from __future__ import annotations

from repirl_ray.tasks.base import DataError


class PromptEncoder:
    """Prompt text -> token ids, with the chat template when asked; too long is an error."""

    def __init__(self, tokenizer, chat_template: bool, max_prompt_tokens: int):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.max_prompt_tokens = max_prompt_tokens

    def __call__(self, text: str, problem_id: str = "?") -> list[int]:
        if self.chat_template:
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
            )
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
        else:
            ids = self.tokenizer(text).input_ids
        if len(ids) > self.max_prompt_tokens:
            raise DataError(
                f"problem {problem_id}: prompt is {len(ids)} tokens, over data.max_prompt_tokens="
                f"{self.max_prompt_tokens}; raise it (and rollout.max_model_len) or shorten the prompt"
            )
        return list(ids)
