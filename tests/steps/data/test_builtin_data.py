"""Tests for the seeded built-in world: corpus, SMS spam set, instruction set and preference set."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from steps.data import builtin_data as bd

SEED = 7
N_TRAIN, N_TEST, N_VAL = 1700, 200, 100
REPO_ROOT = Path(__file__).resolve().parents[3]
KNOWLEDGE_FAMILIES = ("antonym", "plural", "category", "lives", "job", "past_tense")


@pytest.fixture(scope="module")
def timed() -> dict[str, float]:
    return {}


@pytest.fixture(scope="module")
def corpus(timed: dict[str, float]) -> str:
    start = time.perf_counter()
    text = bd.generate_corpus(SEED)
    timed["corpus"] = time.perf_counter() - start
    return text


@pytest.fixture(scope="module")
def sms(timed: dict[str, float]) -> list[tuple[str, str]]:
    start = time.perf_counter()
    messages = bd.generate_sms(SEED)
    timed["sms"] = time.perf_counter() - start
    return messages


@pytest.fixture(scope="module")
def records(timed: dict[str, float]) -> list[dict[str, str]]:
    start = time.perf_counter()
    out = bd.generate_instructions(SEED)
    timed["instructions"] = time.perf_counter() - start
    return out


@pytest.fixture(scope="module")
def examples() -> list:
    return bd._generate_examples(SEED, N_TRAIN, N_TEST, N_VAL)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


# --- word lists -------------------------------------------------------------------------------

def test_each_antonym_word_has_a_single_partner() -> None:
    words = [w for pair in bd.ANTONYMS for w in pair]
    assert len(words) == len(set(words))
    assert len(bd.ANTONYMS) >= 40


def test_each_category_word_has_a_single_category() -> None:
    members = [w for words in bd.CATEGORIES.values() for w in words]
    assert len(members) == len(set(members))
    assert "orange" not in bd.CATEGORIES["color"]


def test_spelling_helpers() -> None:
    assert [bd._plural(w) for w in ("mouse", "box", "city", "key", "knife", "sheep", "church")] == [
        "mice", "boxes", "cities", "keys", "knives", "sheep", "churches"]
    assert not set(bd.IRREGULAR_PLURALS) & set(bd.REGULAR_NOUNS)
    assert [bd._third_person(v) for v in ("go", "carry", "play", "watch", "walk")] == [
        "goes", "carries", "plays", "watches", "walks"]
    assert bd._number_word(1) == "one" and bd._number_word(21) == "twenty-one"
    assert bd._number_word(40) == "forty" and bd._number_word(100) == "one hundred"
    assert bd._article("apple") == "an apple" and bd._article("tea") == "tea"


def test_world_splits_are_disjoint_and_nonempty() -> None:
    world = bd._build_world(SEED)
    for field in ("antonyms", "nouns", "category_words", "people", "verbs", "sequences", "items"):
        train, heldout = getattr(world.train, field), getattr(world.heldout, field)
        assert train and heldout, field
        assert not set(train) & set(heldout), field
    assert len({p.name for p in world.people}) == len(world.people)
    # Every category keeps some words for the test split, so its answers are not all one category.
    assert {world.category_of[w] for w in world.heldout.category_words} == set(bd.CATEGORIES)


# --- determinism ------------------------------------------------------------------------------

def test_same_seed_same_output_different_seed_different_output() -> None:
    assert bd.generate_corpus(3, 50_000) == bd.generate_corpus(3, 50_000)
    assert bd.generate_corpus(3, 50_000) != bd.generate_corpus(4, 50_000)
    assert bd.generate_sms(3, 300) == bd.generate_sms(3, 300)
    assert bd.generate_sms(3, 300) != bd.generate_sms(4, 300)
    assert bd.generate_instructions(3, 90, 20, 10) == bd.generate_instructions(3, 90, 20, 10)
    assert bd.generate_instructions(3, 90, 20, 10) != bd.generate_instructions(4, 90, 20, 10)


_DIGEST_SCRIPT = """
import hashlib, json
from steps.data import builtin_data as bd
payload = json.dumps([bd.generate_corpus(5, 30_000), bd.generate_sms(5, 200),
                      bd.generate_instructions(5, 60, 20, 10)])
print(hashlib.sha256(payload.encode()).hexdigest())
"""


def test_output_does_not_depend_on_hash_randomisation() -> None:
    # Iterating a set of strings would make output vary between processes; pin two different hash seeds.
    expected = hashlib.sha256(json.dumps([bd.generate_corpus(5, 30_000), bd.generate_sms(5, 200),
                                          bd.generate_instructions(5, 60, 20, 10)]).encode()).hexdigest()
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", _DIGEST_SCRIPT], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == expected


# --- corpus -----------------------------------------------------------------------------------

def test_corpus_size_and_layout(corpus: str) -> None:
    assert len(corpus.encode("utf-8")) >= 1_200_000
    assert corpus.isascii()
    assert "\t" not in corpus
    paragraphs = [p for p in corpus.split("\n\n") if p.strip()]
    assert len(paragraphs) > 3000
    assert len(set(paragraphs)) > 0.9 * len(paragraphs)


def test_small_target_is_still_met_and_covers_every_fact() -> None:
    text = bd.generate_corpus(SEED, target_bytes=1_000)
    assert len(text.encode("utf-8")) >= 1_000
    world = bd._build_world(SEED)
    for person in world.people:
        assert f"{person.name} lives in {person.town}." in text


def test_corpus_mentions_every_kind_of_content(corpus: str) -> None:
    for sentence in ("The opposite of hot is cold.", "The opposite of cold is hot.",
                     "The plural of mouse is mice.", "One mouse, two mice.", "An apple is a kind of fruit.",
                     "Tea is a kind of drink.", "Today I go; yesterday I went.", "After Monday comes Tuesday.",
                     "After Sunday comes Monday.", "After December comes January.",
                     "After twenty comes twenty-one."):
        assert sentence in corpus, sentence
    assert "\nA: " in corpus and "Q: " in corpus  # question/answer dialogues
    assert "got a text" in corpus and "coins" in corpus  # messages people got, and prices
    assert "spam" not in _words(corpus) and "ham" not in _words(corpus)  # messages carry no labels


def test_corpus_contains_every_heldout_fact(corpus: str, examples: list) -> None:
    world = bd._build_world(SEED)
    heldout = examples[N_TRAIN:]
    checked = Counter()
    for ex in heldout:
        fact = bd._canonical_fact(world, ex.family, ex.subject)
        if ex.family not in KNOWLEDGE_FAMILIES:
            assert fact is None
            continue
        assert fact in corpus, (ex, fact)
        if ex.family != "past_tense" or " " not in ex.output:
            assert re.search(rf"\b{re.escape(ex.output)}\b", fact), (ex, fact)
        checked[ex.family] += 1
    assert set(checked) == set(KNOWLEDGE_FAMILIES)


def test_reading_notes_are_answered_by_copying_from_the_note() -> None:
    """Who, when and where are drawn afresh for each note, so only the note itself answers its
    questions; most answers start a line of their own, the form an instruction model's answer takes."""
    world, rng = bd._build_world(SEED), __import__("random").Random(3)
    own_line = inline = 0
    for _ in range(300):
        note, *qa = bd._reading_paragraph(rng, world).split("\n")
        assert qa and not note.endswith("?")
        i = 0
        while i < len(qa):
            line = qa[i]
            assert "? " in line or line.endswith("?"), line
            if line.endswith("?"):  # the answer is the next line, alone
                answer, i, own_line = qa[i + 1], i + 2, own_line + 1
                assert not answer.endswith(("?", ".")) and not answer.startswith(" ")
            else:
                answer, i, inline = line.split("? ", 1)[1].removesuffix("."), i + 1, inline + 1
            assert answer in note, (note, answer)
    assert own_line > 2 * inline > 0


def test_word_drills_pair_each_word_with_its_plural_past_tense_or_opposite() -> None:
    world, rng = bd._build_world(SEED), __import__("random").Random(4)
    opposite = {a: b for a, b in bd.ANTONYMS} | {b: a for a, b in bd.ANTONYMS}
    pasts = {v.base: v.past for v in world.verbs}
    seen = set()
    for _ in range(200):
        heading, *lines = bd._drill_paragraph(rng, world).split("\n")
        pairs = [re.split(r": | - ", line) for line in lines] if ":" in lines[0] or " - " in lines[0] \
            else [lines[i:i + 2] for i in range(0, len(lines), 2)]
        assert len(pairs) == 5 and all(len(pair) == 2 and not pair[0].startswith(" ") for pair in pairs)
        kind = {"One and many:": "plural", "Plurals:": "plural", "Now and before:": "past", "Past tenses:": "past",
                "Opposites:": "opposite", "Word and opposite:": "opposite"}[heading]
        seen.add(kind)
        for word, other in pairs:
            expected = {"plural": bd._plural(word), "past": pasts.get(word), "opposite": opposite.get(word)}[kind]
            assert other == expected, (heading, word, other)
    assert seen == {"plural", "past", "opposite"}


def test_the_corpus_holds_reading_notes_and_drills(corpus: str) -> None:
    assert "\nWho found it?" in corpus or "\nWho gave it?" in corpus or "\nWho sold it?" in corpus
    assert "\nPlurals:\n" in corpus or "\nOne and many:\n" in corpus


def test_corpus_stories_agree_with_world(corpus: str) -> None:
    world = bd._build_world(SEED)
    for person in world.people:
        for town in world.towns:
            if town != person.town:
                assert f"{person.name} lives in {town}." not in corpus
        assert f"{person.name} works as {bd._article(person.job)}." in corpus


# --- SMS ----------------------------------------------------------------------------------------

def test_sms_labels_share_and_format(sms: list[tuple[str, str]]) -> None:
    assert len(sms) == 3000
    labels = Counter(label for label, _ in sms)
    assert set(labels) == {"ham", "spam"}
    assert 0.30 <= labels["spam"] / len(sms) <= 0.45
    for _, text in sms:
        assert text and "\t" not in text and "\n" not in text and text == text.strip()
        assert 4 <= len(text.split()) <= 45
    assert sum(len(t) <= 160 for _, t in sms) >= 0.95 * len(sms)
    assert len({t for _, t in sms}) >= 2900
    assert len(set(sms)) >= 2950


def _line_pattern(line: str) -> re.Pattern[str]:
    """A key line's first three words as a pattern (text-speak changes later ones); slots match anything."""
    head = " ".join(line.lower().split()[:3])
    return re.compile(".+?".join(re.escape(part) for part in re.split(r"\{\w+\}", head)))


_LINE_PATTERNS = {line: _line_pattern(line) for line in bd.SPAM_LINES + bd.HAM_LINES}


def _key_line(text: str, lines: tuple[str, ...]) -> str | None:
    """The key line a message carries, if any."""
    low = text.lower()
    return next((line for line in lines if _LINE_PATTERNS[line].search(low)), None)


def test_sms_style_does_not_give_the_label_away(sms: list[tuple[str, str]]) -> None:
    """Casing, links, phone numbers and exclamations come from pools both labels share: each
    trait's share differs by less than 8 points between the labels."""
    traits = {
        "upper": lambda t: t == t.upper() and any(c.isalpha() for c in t),
        "lower": lambda t: t == t.lower(),
        "link": lambda t: "www." in t or "http" in t or "bit.ly" in t or ".co/" in t,
        "phone": lambda t: re.search(r"\b0\d{3,4} \d{3}", t) is not None,
        "exclaim": lambda t: "!" in t,
    }
    by_label = {label: [t for lab, t in sms if lab == label] for label in ("ham", "spam")}
    for name, trait in traits.items():
        shares = [sum(map(trait, texts)) / len(texts) for texts in by_label.values()]
        assert shares[0] > 0.02 and abs(shares[0] - shares[1]) < 0.08, (name, shares)


def test_sms_label_rests_on_key_lines_and_senders(sms: list[tuple[str, str]]) -> None:
    spam_lines = sum(_key_line(t, bd.SPAM_LINES) is not None for label, t in sms if label == "spam")
    ham_lines = sum(_key_line(t, bd.HAM_LINES) is not None for label, t in sms if label == "ham")
    n_spam = sum(label == "spam" for label, _ in sms)
    assert spam_lines >= 0.6 * n_spam and ham_lines >= 0.6 * (len(sms) - n_spam)
    scam_senders = [t for label, t in sms if any(s.lower() in t.lower() for s in bd.SCAM_SENDERS)]
    assert len(scam_senders) >= 50
    # Hard ham: a friend quoting a scam's key line.
    assert sum(label == "ham" and _key_line(t, bd.SPAM_LINES) is not None for label, t in sms) >= 20


def test_few_labels_show_few_key_lines(sms: list[tuple[str, str]]) -> None:
    """The point of the design: 63 labelled messages (the label-efficiency curve's 3 %) show under
    half of the key lines, so a third or more of the test messages carry a line no labelled one had."""
    lines = bd.SPAM_LINES + bd.HAM_LINES
    seen = {_key_line(t, lines) for _, t in sms[:63]} - {None}
    assert len(seen) < 0.5 * len(lines)
    test_lines = [_key_line(t, lines) for _, t in sms[-600:]]
    unseen = sum(line is not None and line not in seen for line in test_lines)
    assert unseen >= 0.33 * len(test_lines)


def test_corpus_teaches_every_key_line_and_sender(corpus: str) -> None:
    """Each key line and each sender name is in the pretraining corpus several times, scam lines
    and scam senders among the scam warnings."""
    world = bd._build_world(SEED)
    low = corpus.lower()
    for line in bd.SPAM_LINES + bd.HAM_LINES:
        assert len(_LINE_PATTERNS[line].findall(low)) >= 3, line
    for name in bd.SCAM_SENDERS + bd.legit_senders(world) + bd.GAINS:
        assert low.count(name.lower()) >= 3, name
    warnings = " ".join(p for p in corpus.split("\n\n") if "scam" in p).lower()
    for line in bd.SPAM_LINES:
        assert _LINE_PATTERNS[line].search(warnings), line
    for name in bd.SCAM_SENDERS + bd.GAINS:
        assert name.lower() in warnings, name


def test_no_labelled_message_is_in_the_corpus_word_for_word(corpus: str, sms: list[tuple[str, str]]) -> None:
    """Pretraining must not have read the labelled messages as messages, in a story beside a verdict
    or in an inbox under its heading (its guides quote bare key lines: that is what they teach).
    Only ambiguous chatter, too few texts to avoid, may recur."""
    shown = [t for _, t in sms if f'text: "{t}"' in corpus or f'buzzed: "{t}"' in corpus or f"\n{t}\n" in corpus]
    assert len(shown) <= 0.005 * len(sms), shown[:5]


def test_sms_has_lexical_variety(sms: list[tuple[str, str]]) -> None:
    vocabulary = set().union(*(_words(t) for _, t in sms))
    assert len(vocabulary) > 800
    abbreviations = {"u", "ur", "2morrow", "lol", "pls"}
    assert len(abbreviations & vocabulary) == len(abbreviations)


def _naive_bayes_accuracy(messages: list[tuple[str, str]]) -> float:
    """Train a word-count naive Bayes on 80% and score it on the rest."""
    cut = int(0.8 * len(messages))
    train, test = messages[:cut], messages[cut:]
    counts: dict[str, Counter] = defaultdict(Counter)
    priors = Counter(label for label, _ in train)
    for label, text in train:
        counts[label].update(re.findall(r"\S+", text.lower()))
    vocab = set(counts["ham"]) | set(counts["spam"])
    totals = {label: sum(c.values()) for label, c in counts.items()}

    def score(label: str, text: str) -> float:
        words = re.findall(r"\S+", text.lower())
        return math.log(priors[label]) + sum(
            math.log((counts[label][w] + 1) / (totals[label] + len(vocab))) for w in words)

    hits = sum(max(("ham", "spam"), key=lambda lab: score(lab, t)) == label for label, t in test)
    return hits / len(test)


def test_sms_is_learnable_but_not_trivial(sms: list[tuple[str, str]]) -> None:
    accuracy = _naive_bayes_accuracy(sms)
    assert 0.85 <= accuracy <= 0.97, accuracy


# --- instructions -----------------------------------------------------------------------------

def test_instruction_records_shape(records: list[dict[str, str]], examples: list) -> None:
    assert len(records) == N_TRAIN + N_TEST + N_VAL
    assert records == [e.record() for e in examples]
    for record in records:
        assert set(record) == {"instruction", "input", "output"}
        assert all(isinstance(v, str) for v in record.values())
        assert record["instruction"].strip() and record["output"].strip()
        assert record["output"] == record["output"].strip()
        assert "\n" not in record["output"]


def test_custom_split_sizes() -> None:
    out = bd.generate_instructions(SEED, n_train=40, n_test=15, n_val=5)
    assert len(out) == 60


def test_no_heldout_prompt_appears_in_train(examples: list) -> None:
    train_keys = {e.key for e in examples[:N_TRAIN]}
    test = examples[N_TRAIN:N_TRAIN + N_TEST]
    val = examples[N_TRAIN + N_TEST:]
    assert not train_keys & {e.key for e in test}
    assert not train_keys & {e.key for e in val}
    assert len({e.key for e in test + val}) == N_TEST + N_VAL


def test_heldout_subjects_never_seen_in_training(examples: list) -> None:
    # Knowledge questions in the test split ask about words and people the train split never asks about.
    train_subjects = {(e.family, e.subject) for e in examples[:N_TRAIN]}
    for ex in examples[N_TRAIN:]:
        if ex.family in ("antonym", "plural", "category", "lives", "job", "past_tense"):
            assert (ex.family, ex.subject) not in train_subjects, ex
    train_antonym_words = {w for e in examples[:N_TRAIN] if e.family == "antonym" for w in (e.subject, e.output)}
    assert not train_antonym_words & {e.output for e in examples[N_TRAIN:] if e.family == "antonym"}


def test_families_present_and_balanced(examples: list) -> None:
    test_families = Counter(e.family for e in examples[N_TRAIN:N_TRAIN + N_TEST])
    assert len(test_families) >= 6
    assert max(test_families.values()) <= 2 * min(test_families.values())
    for part in (examples[:N_TRAIN], examples[N_TRAIN:]):
        outputs: dict[str, list[str]] = defaultdict(list)
        for e in part:
            outputs[e.family].append(e.output)
        for family, answers in outputs.items():
            top_share = Counter(answers).most_common(1)[0][1] / len(answers)
            assert top_share <= (0.7 if family == "spam" else 0.35), (family, top_share)


def test_answers_are_exact_and_checkable(examples: list) -> None:
    world = bd._build_world(SEED)
    for e in examples:
        if e.family == "extraction":
            assert e.output in e.input
        elif e.family == "lives":
            assert e.output in world.towns
        elif e.family == "category":
            assert e.output == world.category_of[e.subject]
        elif e.family == "plural":
            assert e.output == bd._plural(e.subject)
        elif e.family == "spam":
            assert e.output in ("spam", "ham")
        elif e.family == "sequence":
            assert len(e.output.split()) <= 2
    by_family = Counter(e.family for e in examples)
    assert set(by_family) == set(bd._FAMILIES)


# --- preferences ------------------------------------------------------------------------------

P_TRAIN, P_TEST, P_VAL = 850, 100, 50


@pytest.fixture(scope="module")
def preferences(timed: dict[str, float]) -> list[dict[str, str]]:
    start = time.perf_counter()
    out = bd.generate_preferences(SEED, P_TRAIN, P_TEST, P_VAL)
    timed["preferences"] = time.perf_counter() - start
    return out


def test_preference_records_shape_and_determinism(preferences: list[dict[str, str]]) -> None:
    assert len(preferences) == P_TRAIN + P_TEST + P_VAL
    for r in preferences:
        assert set(r) == {"instruction", "input", "chosen", "rejected"}
        assert all(isinstance(v, str) for v in r.values())
        assert r["instruction"].strip() and r["chosen"].strip() and r["rejected"].strip()
        assert r["chosen"] != r["rejected"]
    assert bd.generate_preferences(SEED, P_TRAIN, P_TEST, P_VAL) == preferences
    assert bd.generate_preferences(SEED + 1, P_TRAIN, P_TEST, P_VAL) != preferences


def test_chosen_and_rejected_give_the_same_answer_and_differ_in_courtesy(preferences: list[dict[str, str]]) -> None:
    examples = bd._generate_examples(SEED, P_TRAIN, P_TEST, P_VAL, "preferences")
    bare = 0
    for r, e in zip(preferences, examples, strict=True):
        assert (r["instruction"], r["input"]) == e.key
        answer = bd._as_sentence(e.output)
        assert r["chosen"] in {f"{answer} {c}" for c in bd.COURTEOUS_CLOSINGS}
        assert r["rejected"] in {e.output} | {f"{answer} {d}" for d in bd.DISMISSIVE_REMARKS}
        bare += r["rejected"] == e.output
        assert bd.preference_property(r, r["chosen"])
        assert not bd.preference_property(r, r["rejected"])
    # Both kinds of rejected response are common: the bare answer and the dismissive one.
    assert 0.4 < bare / len(preferences) < 0.6
    assert {c for c in bd.COURTEOUS_CLOSINGS if any(r["chosen"].endswith(c) for r in preferences)} \
        == set(bd.COURTEOUS_CLOSINGS)


def test_preference_test_and_validation_prompts_are_held_out(preferences: list[dict[str, str]]) -> None:
    examples = bd._generate_examples(SEED, P_TRAIN, P_TEST, P_VAL, "preferences")
    train, held_out = examples[:P_TRAIN], examples[P_TRAIN:]
    assert not {e.key for e in train} & {e.key for e in held_out}
    train_subjects = {(e.family, e.subject) for e in train}
    knowledge = [e for e in held_out if e.family in KNOWLEDGE_FAMILIES]
    assert len(knowledge) > 0.5 * len(held_out)
    assert not {(e.family, e.subject) for e in knowledge} & train_subjects
    assert len(Counter(e.family for e in examples[P_TRAIN:P_TRAIN + P_TEST])) == len(bd._FAMILIES)


@pytest.mark.parametrize(("response", "has"), [
    ("cold. Thanks for asking!", True),
    ("cold.  I hope\nthat helps.", True),             # spacing is not the property
    ("Ashford. Happy to help! Happy to", True),        # generation ran on to its token limit
    ("cold", False),                                   # terse
    ("cold. Everyone knows that.", False),             # dismissive
    ("cold. Thanks for asking! Everyone knows that.", False),
    ("Thanks for asking!", False),                     # a closing with no answer before it
    ("cold. thanks for asking", False),
    ("", False),
])
def test_preference_property(response: str, has: bool) -> None:
    record = {"instruction": "What is the opposite of 'hot'?", "input": ""}
    assert bd.preference_property(record, response) is has


# --- speed ------------------------------------------------------------------------------------

def test_generators_are_fast(corpus: str, sms: list, records: list, preferences: list,
                             timed: dict[str, float]) -> None:
    for name in ("corpus", "sms", "instructions", "preferences"):
        assert timed[name] < 3.0, (name, timed[name])


def test_instruction_families_name_every_generated_record() -> None:
    records = bd.generate_instructions(5, n_train=300, n_test=60, n_val=30)
    families = bd.instruction_families(5, n_train=300, n_test=60, n_val=30)
    assert len(families) == len(records)  # (instruction, input) tells every record apart
    assert {families[r["instruction"], r["input"]] for r in records} == {
        "antonym", "plural", "category", "lives", "job", "extraction", "sequence", "past_tense", "spam"}
