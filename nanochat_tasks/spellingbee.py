"""
Spelling tasks, synthetic and offline: the word list ships inside the `english-words` package.

A language model sees tokens, not letters: "strawberry" may be two tokens, so "how many r's are in
strawberry?" is hard for it. These tasks teach the trick: spell the word out (one letter per token),
then count, and check the count with the python tool.

- SimpleSpelling: "Spell the word apple." -> "apple is spelled: a-p-p-l-e"
- SpellingBee: "How many times does the letter r appear in strawberry?" -> spells the word, lists
  where the letter is, checks with 'strawberry'.count('r'), and ends with "#### 3".

Examples are deterministic: example i of a split always draws from a random generator seeded by
(task, split, i). Words are split between train and test by a hash of the word, so no test word is
ever seen in training.
"""

import re
import zlib
import random
import string
from functools import lru_cache

from nanochat_tasks.common import Task, check_split, last_assistant_text
from nanochat_tasks.gsm8k import extract_answer

MIN_WORD_LEN, MAX_WORD_LEN = 3, 12
TEST_FRACTION = 10  # one word in 10 is held out for the test split


def word_split(word):
    """'test' or 'train' for a word, fixed by a hash of its letters (crc32 is the same on every machine)."""
    return "test" if zlib.crc32(word.encode()) % TEST_FRACTION == 0 else "train"


@lru_cache(maxsize=2)
def load_words(split):
    """The sorted words of one split: lower-case, letters only, 3-12 long.

    We keep words that are in both of the package's lists (web2 and GCIDE), which drops most of
    web2's obscure entries and leaves ~70K reasonably common words."""
    assert split in ("train", "test"), f"split must be train or test, got {split!r}"
    from english_words import get_english_words_set
    words = get_english_words_set(["web2"], lower=True, alpha=True) & get_english_words_set(["gcide"], lower=True, alpha=True)
    return [w for w in sorted(words)
            if MIN_WORD_LEN <= len(w) <= MAX_WORD_LEN and w.isascii() and w.isalpha() and word_split(w) == split]


def spell(word):
    """'apple' -> 'a-p-p-l-e': with a separator every letter becomes its own token."""
    return "-".join(word)


SPELLED = re.compile(r"\b[a-z](?:-[a-z])+\b")


def count_answer_text(word, letter):
    """How the assistant counts: where the letter sits in the spelled word, and how many that is."""
    positions = [i + 1 for i, c in enumerate(word) if c == letter]
    if not positions:
        return f"The letter '{letter}' does not appear in it, so I count 0."
    if len(positions) == 1:
        return f"The letter '{letter}' is at position {positions[0]}, so I count 1."
    listed = ", ".join(str(p) for p in positions[:-1]) + f" and {positions[-1]}"
    return f"The letter '{letter}' is at positions {listed}, so I count {len(positions)}."


# {L}: the letter, plain or quoted; {l}: always plain (as in "how many r's"); {W}: the word
COUNT_QUESTIONS = [
    "How many times does the letter {L} appear in the word {W}?",
    "How many {l}'s are in {W}?",
    "How many '{l}'s are there in the word {W}?",
    "Count the letter {L} in {W}.",
    "In the word {W}, how many times does {L} occur?",
    "how many {l} in {W}",
]

SPELL_QUESTIONS = [
    "Spell the word {W}.",
    "How do you spell {W}?",
    "Spell {W} letter by letter.",
    "Can you spell out {W} for me?",
    "spell {W}",
]


def quoted(rng, text):
    """The same word written plainly or in quotes, so the model does not depend on one style."""
    return rng.choice([text, f"'{text}'", f'"{text}"'])


class _WordTask(Task):
    """A generative task with `size` examples, each drawn from the split's own words."""

    def __init__(self, size=1000, split="train", **slice_kwargs):
        super().__init__(**slice_kwargs)
        check_split(type(self).__name__, split, ("train", "test"))
        self.size, self.split = size, split
        self.words = load_words(split)

    @property
    def eval_type(self):
        return "generative"

    def num_examples(self):
        return self.size


class SpellingBee(_WordTask):
    """Count a letter in a word; generative, checked by the number after ####."""

    def get_example(self, index):
        rng = random.Random(f"spellingbee/{self.split}/{index}")
        word = rng.choice(self.words)
        # mostly a letter of the word; sometimes any letter, so that 0 is a possible answer too
        letter = rng.choice(word) if rng.random() < 0.8 else rng.choice(string.ascii_lowercase)
        question = rng.choice(COUNT_QUESTIONS).format(L=quoted(rng, letter), l=letter, W=quoted(rng, word))
        count = word.count(letter)
        content = [
            {"type": "text", "text": f"Let me spell \"{word}\" letter by letter: {spell(word)}.\n"
                                     f"{count_answer_text(word, letter)}\nLet me check with Python: "},
            {"type": "python", "text": f"'{word}'.count('{letter}')"},
            {"type": "python_output", "text": str(count)},
            {"type": "text", "text": f"\nThe answer is {count}.\n\n#### {count}"},
        ]
        return {"messages": [{"role": "user", "content": question},
                             {"role": "assistant", "content": content}],
                "word": word, "letter": letter}

    def evaluate(self, conversation, assistant_response):
        reference = extract_answer(last_assistant_text(conversation))
        return int(extract_answer(assistant_response) == reference)


class SimpleSpelling(_WordTask):
    """Spell a word letter by letter; generative, checked by the last spelled-out sequence in the reply."""

    def get_example(self, index):
        rng = random.Random(f"simplespelling/{self.split}/{index}")
        word = rng.choice(self.words)
        question = rng.choice(SPELL_QUESTIONS).format(W=quoted(rng, word))
        return {"messages": [{"role": "user", "content": question},
                             {"role": "assistant", "content": f"{word} is spelled: {spell(word)}"}],
                "word": word}

    def evaluate(self, conversation, assistant_response):
        spelled = SPELLED.findall(assistant_response.lower())
        return int(bool(spelled) and spelled[-1] == spell(conversation["word"]))
