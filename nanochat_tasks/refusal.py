"""
Refusal: requests the model cannot carry out, and the polite "no" that names what it cannot do.

A chat model that only ever learned to answer will answer anything: asked to send an email it
writes something that looks like a reply, as if the email had gone. Here the user asks for
something a text-only model with no internet, no clock and no hands cannot do (browse, see a
picture, send a message, set an alarm, play music, tell the time), and the assistant says so:

    "Send an email to Mia about the party." ->
    "Sorry, I can't send messages. I can only write text in this chat; I can't reach anyone outside it."

SFT trains this family and midtraining does not (nanochat_tasks/mixtures.py), so chat_eval's
Refusal row shows what SFT added. The check is strict enough to mean something: the reply must
start with "Sorry, I can't" followed by the right capability, so the model has to recognise
which kind of request it got, not just say sorry to everything.

Example i of a split is drawn from a generator seeded by (split, i); which split a request belongs
to is fixed by a hash of its text (a draw that lands in the other split is redrawn), so the test
requests are never seen in training.
"""

import random
import zlib

from nanochat_tasks.common import Task, check_split

TEST_FRACTION = 10  # one request in 10 belongs to the test split

NAMES = ["Sam", "Mia", "Leo", "Ava", "Noah", "Zoe", "Omar", "Lena", "Ravi", "Ines"]
TOPICS = ["the football results", "cheap flights to Rome", "the weather in Paris", "the price of gold",
          "new science fiction books", "the opening hours of the museum", "today's headlines",
          "the best pizza nearby", "the train times to London", "the latest phone reviews"]
THINGS = ["my dog", "a sunset", "my garden", "a red car", "my new shoes", "a birthday cake",
          "the beach", "a mountain", "my cat", "an old castle"]
TIMES = ["7 am", "6:30", "noon", "half past eight", "9 pm", "tomorrow morning", "10:15"]
SONGS = ["something by the Beatles", "a jazz song", "my favourite playlist", "some relaxing music",
         "the radio", "a song by Queen"]

# capability -> (request templates, the reason given after "Sorry, I can't <capability>.")
CAPABILITIES = {
    "browse the internet": (
        ["Search the web for {topic}.", "Look up {topic} online.", "Can you google {topic} for me?",
         "Check a website for {topic}.", "Find {topic} on the internet."],
        "I have no internet access, so I only know what was in my training text."),
    "see pictures": (
        ["What is in this photo of {thing}?", "Look at my picture of {thing}.",
         "Describe the image of {thing} I just sent.", "Here is a photo of {thing}. What do you see?"],
        "I only read text; an image never reaches me."),
    "send messages": (
        ["Send an email to {name} about {topic}.", "Text {name} that I'm running late.",
         "Call {name} and tell them I said hello.", "Message {name} about {topic}."],
        "I can only write text in this chat; I can't reach anyone outside it."),
    "set alarms": (
        ["Set an alarm for {time}.", "Remind me to call {name} at {time}.", "Wake me up at {time}.",
         "Set a timer until {time}."],
        "I have no clock, and nothing I do continues after my reply ends."),
    "play music": (
        ["Play {song}.", "Put on {song} for me.", "Can you play {song}?", "Start playing {song}."],
        "I can only write text; I have no speakers and no music."),
    "tell the time": (
        ["What time is it now?", "What's today's date?", "What day of the week is it today?",
         "How long until {time} from now?", "Is it {time} yet?"],
        "I have no clock or calendar, so I don't know when now is."),
}
PREFIX = "Sorry, I can't "


def request_split(request):
    return "test" if zlib.crc32(request.encode()) % TEST_FRACTION == 0 else "train"


def expected_start(capability):
    """How a correct reply begins: the apology and the capability, which the evaluation checks."""
    return f"{PREFIX}{capability}."


class Refusal(Task):
    """Requests the model cannot carry out; generative, checked by the start of the reply."""

    def __init__(self, size=1000, split="train", **slice_kwargs):
        super().__init__(**slice_kwargs)
        check_split("Refusal", split, ("train", "test"))
        self.size, self.split = size, split

    @property
    def eval_type(self):
        return "generative"

    def num_examples(self):
        return self.size

    def get_example(self, index):
        rng = random.Random(f"refusal/{self.split}/{index}")
        while True:  # redraw until the request belongs to this split
            capability = rng.choice(sorted(CAPABILITIES))
            templates, reason = CAPABILITIES[capability]
            request = rng.choice(templates).format(name=rng.choice(NAMES), topic=rng.choice(TOPICS),
                                                   thing=rng.choice(THINGS), time=rng.choice(TIMES),
                                                   song=rng.choice(SONGS))
            if request_split(request) == self.split:
                break
        return {"messages": [{"role": "user", "content": request},
                             {"role": "assistant", "content": f"{expected_start(capability)} {reason}"}],
                "capability": capability}

    def evaluate(self, conversation, assistant_response):
        return int(assistant_response.strip().startswith(expected_start(conversation["capability"])))
