"""Prompt text -> token ids, the same way for sampling (rollout workers) and for supervised
training on demos, so that a model is trained on exactly the prompts it is later given."""

from __future__ import annotations

from repirl_ray.errors import DataError


class PromptEncoder:
    """Prompt text -> token ids, with the chat template when asked; too long is an error."""

    def __init__(self, tokenizer, chat_template: bool, max_prompt_tokens: int):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.max_prompt_tokens = max_prompt_tokens

    def render(self, text: str) -> str:
        """The prompt as text, as the model sees it (the chat template applied when asked)."""
        if not self.chat_template:
            return text
        return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                  tokenize=False)

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


def encode_response(tokenizer, text: str) -> list[int]:
    """A response text (an expert demo) as the policy would emit it: its tokens, then EOS."""
    return tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def boundary_split(encode: PromptEncoder, prompt: str, response: str) -> str | None:
    """Where the tokenizer merges the end of the prompt with the start of the response, a demo's
    tokens (prompt ids + response ids, encoded apart as rollouts and the learners do) differ from
    the tokens of the text the model reads; returns what differs, or None when the boundary holds.
    A prompt that ends in a space is the usual cause (" 7" is one token in most BPE vocabularies)."""
    tok = encode.tokenizer
    prompt_ids = encode(prompt)
    response_ids = tok(response, add_special_tokens=False).input_ids
    rendered = encode.render(prompt)
    joint = tok(rendered + response, add_special_tokens=not encode.chat_template).input_ids
    if joint[: len(prompt_ids)] == prompt_ids and joint[len(prompt_ids):] == response_ids:
        return None
    n = next((i for i, (a, b) in enumerate(zip(joint, prompt_ids + response_ids)) if a != b), min(len(joint), len(prompt_ids)))
    return (f"the prompt ends {rendered[-12:]!r} and the response starts {response[:12]!r}: together they are "
            f"tokenised as {tok.convert_ids_to_tokens(joint[max(0, n - 1):n + 2])} but apart as "
            f"{tok.convert_ids_to_tokens((prompt_ids + response_ids)[max(0, n - 1):n + 2])}")
