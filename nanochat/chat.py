"""
What the two chat front ends share: a conversation trimmed to the model's context, a reply turned
back into message parts, and UTF-8-safe streaming of a reply as it is generated.

Pipeline position: the last stage. scripts/chat_cli.py (the terminal) and nanochat/web.py (the
browser and the OpenAI-compatible API) both prompt the Engine through these, so a conversation
is trimmed by one rule and a reply streams the same way in both.

The context: a model reads at most config.sequence_len tokens, the length it was trained on
(the rotary table is longer, but positions past the training length were never learned).

Tokens are not characters: a byte-level BPE token can hold half of a UTF-8 character (most emoji
and CJK characters span several tokens). StreamDecoder feeds the tokens' bytes to an incremental
UTF-8 decoder, which holds back an unfinished character until its last byte arrives, so no
streamed piece ever contains half a character.
"""

import codecs

from nanochat.common import UserError

# special tokens that may show up inside a reply (tool use), as readable text. The two stop
# tokens (<|assistant_end|>, <|bos|>) end the reply; any other special token is dropped.
TOOL_TOKEN_TEXT = {
    "<|python_start|>": "[python: ",
    "<|python_end|>": "]",
    "<|output_start|>": " = ",
    "<|output_end|>": "",
}


class PromptTooLong(UserError):
    """The newest message does not fit in the context even with every earlier exchange dropped."""


def context_length(model):
    """The number of positions the model was trained to read (prompt + reply)."""
    return model.config.sequence_len


def fit_prompt(tokenizer, messages, context_len):
    """Prompt ids for the next assistant reply, within the model's context.

    The one trimming rule: when the conversation is too long, the oldest user/assistant exchanges
    are dropped (a system message stays) until the prompt leaves room for at least one new token.
    Returns (ids, number of messages dropped); raises PromptTooLong if the last message alone
    cannot fit."""
    system = [messages[0]] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    dropped = _hopeless_exchanges(tokenizer, turns, context_len)
    turns = turns[dropped:]
    while True:
        ids = tokenizer.render_for_completion({"messages": system + turns})
        if len(ids) < context_len:
            return ids, dropped
        if len(turns) <= 1:
            raise PromptTooLong(f"that message is {len(ids):,} tokens with the prompt around it; "
                                f"this model reads at most {context_len - 1:,}, so shorten it")
        turns = turns[2:]
        dropped += 2


def _hopeless_exchanges(tokenizer, turns, context_len):
    """How many of the oldest turns (an even number) cannot stay whatever else is dropped.

    fit_prompt would drop them one exchange at a time, rendering the whole conversation each
    time: slow for a long history. A message adds at least its own content's tokens to the
    prompt (the first kept one may absorb the system message, so it is not counted), so while
    the messages after turn d hold context_len tokens or more, turn d cannot be kept."""
    if len(turns) <= 2:
        return 0
    owners, texts = [], []  # every piece of text that render_conversation encodes on its own
    for i, m in enumerate(turns):
        for part in ([{"text": m["content"]}] if isinstance(m["content"], str) else m["content"]):
            owners.append(i)
            texts.append(part["text"])
    sizes = [0] * len(turns)
    for i, ids in zip(owners, tokenizer.encode(texts)):
        sizes[i] += len(ids)
    after = sum(sizes[1:])  # the tokens of every message after turn d, for d = 0, 2, 4, ...
    d = 0
    while d + 2 < len(turns) and after >= context_len:
        after -= sizes[d + 1] + sizes[d + 2]
        d += 2
    return d


def reply_parts(tokenizer, reply_ids):
    """A reply's tokens as the content of an assistant message: a string, or a list of parts
    (text, python, python_output) when it called the calculator, as render_conversation takes it."""
    sp = tokenizer.encode_special
    kinds = {sp("<|python_start|>"): "python", sp("<|output_start|>"): "python_output"}
    ends = {sp("<|python_end|>"), sp("<|output_end|>")}
    parts, kind, run = [], "text", []

    def close():
        if run or kind != "text":
            parts.append({"type": kind, "text": tokenizer.decode(run)})
    for token in reply_ids:
        if token in kinds or token in ends:
            close()
            kind, run = kinds.get(token, "text"), []
        elif not tokenizer.is_special(token):
            run.append(token)
    close()
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


class ChatHistory:
    """A conversation in the terminal: its messages, and the prompt for the next reply.

    Replies are kept as message parts (reply_parts), so a calculator call goes back to the model
    as <|python_start|> ... tokens, exactly as render_conversation trained it."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.clear()

    def clear(self):
        self.messages = []

    @property
    def ids(self):
        """The conversation so far as token ids (starting with <|bos|>)."""
        if not self.messages:
            return [self.tokenizer.get_bos_token_id()]
        ids, _ = self.tokenizer.render_conversation({"messages": self.messages}, max_tokens=None)
        return ids

    def prompt_for(self, user_text, context_len=None):
        """Add a user turn and return (ids ending with <|assistant_start|>, the number of earlier
        exchanges dropped to fit context_len). A message that cannot fit even alone raises
        PromptTooLong and leaves the history as it was."""
        messages = self.messages + [{"role": "user", "content": user_text}]
        if context_len is None:
            ids, dropped = self.tokenizer.render_for_completion({"messages": messages}), 0
        else:
            ids, dropped = fit_prompt(self.tokenizer, messages, context_len)
        self.messages = messages[dropped:]
        return ids, dropped // 2

    def add_reply(self, reply_ids):
        """Close the assistant's turn with its tokens (any terminal token already stripped)."""
        self.messages.append({"role": "assistant", "content": reply_parts(self.tokenizer, reply_ids)})


class StreamDecoder:
    """Token ids in, text out, one token at a time, never cutting a UTF-8 character in two.

    Bytes that can never form a character come out as U+FFFD (as tokenizer.decode does); tool
    tokens come out as the readable text of TOOL_TOKEN_TEXT."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._bytes = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._special_text = {tokenizer.encode_special(name): text for name, text in TOOL_TOKEN_TEXT.items()}

    def add(self, token_id):
        """The text that is complete after this token ('' while a character is unfinished)."""
        if self.tokenizer.is_special(token_id):
            # a special token interrupts a half-done character: what is held back is broken
            return self.flush() + self._special_text.get(token_id, "")
        return self._bytes.decode(self.tokenizer.token_to_bytes(token_id))

    def flush(self):
        """Whatever is held back, at the end of the reply (U+FFFD if a character was left unfinished)."""
        text = self._bytes.decode(b"", final=True)
        self._bytes.reset()
        return text
