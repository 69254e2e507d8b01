"""The organism's synthetic corpus, generated in code (deterministic given a seed).

Every document is a run of sentences drawn from templates, each with its own circuit to find:

* **greater-than** (Hanna et al. 2023): "The war lasted from the year 1732 to the year 1758."
  The end year is drawn uniformly above the start year, so the ideal continuation of
  "... to the year 17" puts all probability on two-digit tokens greater than YY. Years are
  written as a century token plus a two-digit token, as GPT-2 splits them (" 17" + "32").
* **induction**: a random word list, then the same list again ("The code is red fish jam.
  Again: red fish jam.").
* **indirect object** (IOI): "When Mary and John went to the store, John gave a book to Mary."
* **counting**: "Count: 12, 13, 14, 15."
* **filler**: simple subject-verb-object sentences.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

NOUNS_EVENT = [
    "war", "expedition", "dynasty", "reign", "siege", "voyage", "journey", "occupation",
    "crisis", "famine", "drought", "revolution", "pilgrimage", "conflict", "rebellion",
    "campaign", "blockade", "strike", "plague", "empire", "alliance", "treaty", "festival",
    "construction", "exile",
]
CENTURIES = ["11", "12", "13", "14", "15", "16", "17", "18", "19"]
GT_TEMPLATES = [
    "The {noun} lasted from the year {c}{yy} to the year {c}{zz}.",
    "The {noun} started in the year {c}{yy} and ended in the year {c}{zz}.",
]
NAMES = [
    "Mary", "John", "Alice", "Bob", "Tom", "Anna", "James", "Sarah", "Paul", "Laura",
    "David", "Emma", "Mark", "Julia", "Peter", "Kate",
]
PLACES = ["store", "park", "school", "market", "station", "garden", "office", "beach", "house", "library"]
OBJECTS = ["book", "drink", "letter", "gift", "ring", "ball", "key", "flower", "coin", "map"]
WORDS = [
    "red", "blue", "green", "fish", "jam", "stone", "river", "apple", "cloud", "lamp",
    "tree", "bird", "road", "glass", "paper", "salt", "wind", "snow", "iron", "silk",
    "moon", "sun", "star", "leaf", "wolf", "bear", "corn", "rice", "milk", "gold",
]
ADJECTIVES = ["old", "young", "small", "large", "quiet", "happy", "tired", "clever", "brave", "kind"]
SUBJECTS = ["farmer", "king", "child", "teacher", "doctor", "sailor", "baker", "soldier", "artist", "writer"]
VERBS = ["saw", "found", "took", "liked", "painted", "carried", "sold", "kept", "lost", "moved"]

#: Relative frequency of each sentence kind.
MIX = {"greater_than": 0.40, "induction": 0.15, "ioi": 0.15, "counting": 0.10, "filler": 0.20}


#: A labelled piece of a sentence: its text and the role (and value) of the variable it carries.
#: ``role`` is None for template text; see :mod:`tc_circuits.organism.labels`.
Segment = tuple[str, "str | None", "str | int | None"]


def greater_than_segments(rng: random.Random) -> list[Segment]:
    """One greater-than sentence (end year drawn uniformly above the start year), as segments."""
    yy = rng.randint(0, 98)
    zz = rng.randint(yy + 1, 99)
    template = rng.choice(GT_TEMPLATES)
    noun, c = rng.choice(NOUNS_EVENT), rng.choice(CENTURIES)
    values = {
        "noun": (noun, "event_noun", noun),
        "c1": (c, "start_century", int(c)),
        "yy": (f"{yy:02d}", "start_yy", yy),
        "c2": (c, "end_century", int(c)),
        "zz": (f"{zz:02d}", "end_yy", zz),
    }
    # The template has {c} twice: the first is the start century, the second the end century.
    tpl = template.replace("{c}", "{c1}", 1).replace("{c}", "{c2}", 1)
    return _fill(tpl, values)


def _fill(template: str, values: dict[str, Segment]) -> list[Segment]:
    """Split ``template`` at its ``{field}`` slots into template text and labelled values."""
    segments: list[Segment] = []
    rest = template
    while "{" in rest:
        head, tail = rest.split("{", 1)
        name, rest = tail.split("}", 1)
        if head:
            segments.append((head, None, None))
        segments.append(values[name])
    if rest:
        segments.append((rest, None, None))
    return segments


def induction_segments(rng: random.Random) -> list[Segment]:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 6))]
    segs: list[Segment] = [("The code is", None, None)]
    segs += [(" " + w, "list_first", w) for w in words]
    segs += [(". Again:", None, None)]
    segs += [(" " + w, "list_repeat", w) for w in words]
    return segs + [(".", None, None)]


def ioi_segments(rng: random.Random) -> list[Segment]:
    a, b = rng.sample(NAMES, 2)
    place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
    return [
        ("When", None, None), (" " + a, "io_first", a), (" and", None, None),
        (" " + b, "s_first", b), (" went to the", None, None), (" " + place, "place", place),
        (",", None, None), (" " + b, "subject", b), (" gave a", None, None),
        (" " + obj, "object", obj), (" to", None, None), (" " + a, "indirect_object", a),
        (".", None, None),
    ]


def counting_segments(rng: random.Random) -> list[Segment]:
    start = rng.randint(0, 90)
    n = rng.randint(3, 6)
    numbers = [start + i for i in range(min(n, 100 - start))]
    segs: list[Segment] = [("Count:", None, None)]
    for i, v in enumerate(numbers):
        if i:
            segs.append((",", None, None))
        segs.append((" " + str(v), "count_number", v))
    return segs + [(".", None, None)]


def filler_segments(rng: random.Random) -> list[Segment]:
    adj, subj, verb, word = rng.choice(ADJECTIVES), rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(WORDS)
    return [
        ("The", None, None), (" " + adj, "adjective", adj), (" " + subj, "agent", subj),
        (" " + verb, "verb", verb), (" the", None, None), (" " + word, "patient", word),
        (".", None, None),
    ]


def _text(segments: list[Segment]) -> str:
    return "".join(text for text, _, _ in segments)


def greater_than_sentence(rng: random.Random) -> str:
    """One greater-than sentence with end year drawn uniformly above the start year."""
    return _text(greater_than_segments(rng))


def induction_sentence(rng: random.Random) -> str:
    return _text(induction_segments(rng))


def ioi_sentence(rng: random.Random) -> str:
    return _text(ioi_segments(rng))


def counting_sentence(rng: random.Random) -> str:
    return _text(counting_segments(rng))


def filler_sentence(rng: random.Random) -> str:
    return _text(filler_segments(rng))


SENTENCE_SEGMENTS = {
    "greater_than": greater_than_segments,
    "induction": induction_segments,
    "ioi": ioi_segments,
    "counting": counting_segments,
    "filler": filler_segments,
}
SENTENCE_KINDS = {
    "greater_than": greater_than_sentence,
    "induction": induction_sentence,
    "ioi": ioi_sentence,
    "counting": counting_sentence,
    "filler": filler_sentence,
}


def labelled_sentence(rng: random.Random) -> tuple[str, list[Segment]]:
    """The kind and labelled segments of one sentence drawn from :data:`MIX`."""
    kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
    return kind, SENTENCE_SEGMENTS[kind](rng)


def sentence(rng: random.Random) -> str:
    """One sentence of a kind drawn from :data:`MIX`."""
    return _text(labelled_sentence(rng)[1])


def labelled_documents(seed: int, n_sentences: int = 6) -> Iterator[list[tuple[str, list[Segment]]]]:
    """The documents of :func:`documents` (same seed, same text) as ``[(kind, segments)]`` per
    sentence; sentences are joined by one space."""
    rng = random.Random(seed)
    while True:
        yield [labelled_sentence(rng) for _ in range(n_sentences)]


def documents(seed: int, n_sentences: int = 6) -> Iterator[str]:
    """An endless deterministic stream of documents of ``n_sentences`` sentences."""
    for doc in labelled_documents(seed, n_sentences):
        yield " ".join(_text(segs) for _, segs in doc)


def vocabulary_texts() -> list[str]:
    """Texts covering every token the corpus can produce (used to build the vocabulary)."""
    words = (
        NOUNS_EVENT + NAMES + PLACES + OBJECTS + WORDS + ADJECTIVES + SUBJECTS + VERBS
        + [t for tpl in GT_TEMPLATES for t in tpl.replace("{", " ").replace("}", " ").split()]
        + "When and went to the gave a The code is Again Count".split()
    )
    numbers = [str(i) for i in range(100)] + [f"{i:02d}" for i in range(100)]
    pieces = [" ".join(words), " ".join(numbers), ".", ",", ":", ";", ". , : ;"]
    # Every word also at the start of a text (no leading space) and after a space.
    pieces += [w for w in words + numbers] + [" " + w for w in words + numbers]
    return pieces
