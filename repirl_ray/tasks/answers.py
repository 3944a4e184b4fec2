"""A final answer read out of a text: the last \\boxed{}. The math task's verifier reads a response's
answer this way, and data/formats.py a MATH solution's, so that both agree on what the answer is."""

from __future__ import annotations

import re

BOX_RE = re.compile(r"\\(?:boxed|fbox)")


def extract_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}) with balanced braces.

    Also reads the brace-less form `\\boxed 5`. None when there is no box, or when the last
    box is not closed (a truncated response): an earlier box would be an intermediate
    result, not the final answer.
    """
    starts = [m.end() for m in BOX_RE.finditer(text)]
    if not starts:
        return None
    i = starts[-1]
    j = i
    while j < len(text) and text[j] == " ":
        j += 1
    if j < len(text) and text[j] == "{":
        depth = 0
        k = j
        while k < len(text):
            c = text[k]
            if c == "\\":  # \{ and \} are literal braces, not grouping
                k += 2
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    return text[j + 1 : k]
            k += 1
        return None
    if j > i:  # `\boxed 5`: the token up to the next space or `$`
        m = re.match(r"[^\s$]+", text[j:])
        return m.group(0) if m else None
    return None
