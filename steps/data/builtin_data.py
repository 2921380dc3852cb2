"""Seeded generator of one small fictional world's pretraining corpus, SMS spam set and instruction set.

The SMS set is built so that pretraining can pay when labels are few: a message's label rests on
one key line (many per label, each a paraphrase in its own words, some with a slot: a prize word,
a food, an item) or, in sender-only messages, on who sends it; greetings, links, numbers, sign-offs
and texting style come from pools both labels share. A few dozen labelled messages show under half
of the key lines, while the corpus shows every one of them many times with what people made of it
(stories with a verdict, inboxes under a heading, scam warnings that list lines, prizes and fake
sender names). The corpus never shows a labelled message's text as a message. Details: the comment
above SPAM_LINES.

The instruction set's test prompts ask about words and people its training records never mention;
the corpus holds their facts. A fifth of its filler paragraphs are reading notes (an arbitrary event,
then questions answered by copying from it) and word drills, one pair a line: they teach the model to
copy from its context and show words in the line-initial form an answer takes. Details: the comment
above _READING_EVENTS.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

# ---------------------------------------------------------------------------
# Word lists. They are fixed data; the seed only decides how the world combines them.
# ---------------------------------------------------------------------------

TOWN_NAMES: tuple[str, ...] = (
    "Ashford", "Brookvale", "Cedarby", "Dunmore", "Elmstead", "Fernhill", "Glenrock", "Hollowmere",
    "Larkspur", "Millbrook", "Northwick", "Oakhaven", "Pinecrest", "Queensmoor", "Ravenholt",
    "Stonebridge", "Thornbury", "Umberlee", "Westmarch", "Willowby", "Yarrowdale", "Copperfield",
    "Marshgate", "Kestrelby",
)

FIRST_NAMES: tuple[str, ...] = (
    "Ada", "Alan", "Alice", "Amir", "Anna", "Ben", "Bella", "Carl", "Cara", "Dan", "Dev", "Ella",
    "Emil", "Eva", "Finn", "Flora", "Gus", "Greta", "Hana", "Hugo", "Ida", "Ivan", "Jack", "Jade",
    "Jon", "Kai", "Kira", "Leo", "Lena", "Liam", "Luca", "Maya", "Max", "Mira", "Nell", "Nico",
    "Nina", "Noah", "Omar", "Olga", "Otto", "Pia", "Raj", "Rosa", "Ruth", "Sam", "Sara", "Theo",
    "Tess", "Tom", "Uma", "Vera", "Vik", "Wes", "Yara", "Zoe", "Zane", "Abe", "Bea", "Cleo",
    "Dora", "Eli", "Fay", "Gil", "Hal", "Joy", "Kate", "Lars", "Mae", "Ned", "Opal", "Pete",
    "Quinn", "Rex", "Rita", "Seth", "Tara", "Ugo", "Val", "Walt", "Yuri", "Zara", "Milo", "Nadia",
    "Oscar", "Priya", "Ravi", "Sofia", "Tariq", "Ulla", "Vince", "Willa", "Ahmed", "Bruno",
    "Chloe", "Esme", "Femi", "Gita",
)

JOBS: tuple[str, ...] = (
    "baker", "farmer", "teacher", "nurse", "doctor", "carpenter", "fisher", "tailor", "potter",
    "painter", "librarian", "miller", "blacksmith", "gardener", "builder", "cook", "driver",
    "postman", "butcher", "beekeeper", "musician", "plumber", "mechanic", "pharmacist", "vet",
    "dentist", "engineer", "firefighter", "florist", "barber", "clockmaker", "weaver", "shepherd",
    "sailor", "jeweller", "shopkeeper",
)

PET_KINDS: tuple[str, ...] = (
    "dog", "cat", "rabbit", "parrot", "hamster", "goldfish", "tortoise", "ferret", "canary",
    "pony", "guinea pig", "goat",
)

PET_NAMES: tuple[str, ...] = (
    "Pip", "Biscuit", "Pepper", "Mochi", "Rusty", "Clover", "Bramble", "Nugget", "Pickle", "Juno",
    "Ziggy", "Whiskers", "Patch", "Socks", "Toffee", "Sprout", "Muffin", "Bean", "Fudge",
    "Noodle", "Pebble", "Scout", "Hazel", "Comet", "Dot", "Ginger", "Tiger", "Smudge", "Barley",
    "Waffle",
)

STREETS: tuple[str, ...] = (
    "Mill Street", "Baker Lane", "Church Road", "High Street", "Station Road", "Bridge Street",
    "Orchard Way", "Castle Hill", "River Walk", "Park Avenue", "Well Lane", "Kings Road",
    "Quarry Lane", "Chapel Row", "Harbour Road", "Green Lane", "School Lane", "Canal Street",
    "Forge Lane", "Meadow Close",
)

SHOP_KINDS: tuple[str, ...] = (
    "Bakery", "Bookshop", "Hardware Store", "Grocery", "Flower Shop", "Toy Shop", "Cafe",
    "Corner Shop", "Tea Room", "General Store", "Market Stall", "Gift Shop",
)

PLACES: tuple[str, ...] = (
    "market", "library", "park", "harbour", "station", "school", "post office", "river", "square",
    "town hall", "museum", "garden", "pond", "bridge", "mill", "chapel", "farm", "cinema",
    "swimming pool", "bus stop",
)

# Shop goods: all countable nouns with regular plurals, so stories can say "the lamps".
ITEMS: tuple[str, ...] = (
    "lamp", "basket", "cup", "kettle", "teapot", "candle", "blanket", "pillow", "umbrella",
    "bucket", "ladder", "rope", "bowl", "plate", "spoon", "fork", "jug", "mirror", "clock", "vase",
    "broom", "notebook", "pencil", "backpack", "wallet", "kite", "ball", "puzzle", "doll", "radio",
    "lantern", "bottle", "rug", "towel", "apron", "map", "bell", "ribbon", "mug", "pan", "tray",
    "thimble", "needle", "saucer", "whistle", "comb", "stool", "cushion",
)

COLORS: tuple[str, ...] = (
    "red", "blue", "green", "yellow", "purple", "pink", "brown", "grey", "white", "black",
    "golden", "silver", "striped", "spotted", "tiny", "little", "new", "shiny",
)

FOODS: tuple[str, ...] = (
    "bread", "cheese", "soup", "rice", "pasta", "pizza", "honey", "jam", "butter", "apples",
    "pears", "carrots", "potatoes", "biscuits", "pancakes", "noodles", "stew", "curry", "salad",
    "chips", "buns", "pies", "eggs", "porridge", "cake", "plums", "beans", "fish pie",
)

WEATHER: tuple[str, ...] = (
    "sunny", "rainy", "windy", "cloudy", "foggy", "snowy", "stormy", "frosty", "warm", "chilly",
    "bright", "grey", "misty", "humid", "breezy", "drizzly",
)

DAYS: tuple[str, ...] = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

MONTHS: tuple[str, ...] = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)

_UNITS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TEENS = ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
          "eighteen", "nineteen")
_TENS = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")

# Every word occurs in exactly one pair, so "the opposite of X" always has a single right answer.
ANTONYMS: tuple[tuple[str, str], ...] = (
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("heavy", "light"),
    ("up", "down"), ("early", "late"), ("full", "empty"), ("young", "old"), ("wet", "dry"),
    ("hard", "soft"), ("easy", "difficult"), ("tall", "short"), ("wide", "narrow"),
    ("thick", "thin"), ("rich", "poor"), ("clean", "dirty"), ("loud", "quiet"),
    ("strong", "weak"), ("near", "far"), ("high", "low"), ("first", "last"), ("push", "pull"),
    ("buy", "sell"), ("win", "lose"), ("give", "take"), ("come", "go"), ("inside", "outside"),
    ("above", "below"), ("before", "after"), ("always", "never"), ("true", "false"),
    ("good", "bad"), ("left", "right"), ("begin", "end"), ("open", "shut"), ("day", "night"),
    ("black", "white"), ("north", "south"), ("east", "west"), ("question", "answer"),
    ("laugh", "cry"), ("love", "hate"), ("friend", "enemy"), ("cheap", "expensive"),
    ("sweet", "sour"), ("smooth", "rough"), ("deep", "shallow"), ("brave", "cowardly"),
    ("asleep", "awake"), ("arrive", "depart"), ("accept", "refuse"), ("remember", "forget"),
    ("borrow", "lend"), ("increase", "decrease"), ("entrance", "exit"), ("polite", "rude"),
    ("tight", "loose"), ("sharp", "blunt"), ("safe", "dangerous"), ("alive", "dead"),
    ("present", "absent"), ("victory", "defeat"), ("public", "private"),
    ("maximum", "minimum"), ("positive", "negative"), ("ancient", "modern"), ("tidy", "messy"),
    ("future", "past"), ("floor", "ceiling"), ("top", "bottom"), ("front", "back"),
    ("whisper", "shout"), ("plus", "minus"), ("many", "few"), ("inner", "outer"),
    ("odd", "even"), ("fresh", "stale"), ("wild", "tame"), ("raw", "cooked"),
    ("solid", "liquid"), ("success", "failure"), ("catch", "throw"), ("pass", "fail"),
    ("start", "finish"), ("sunrise", "sunset"),
)

# Nouns whose plural the simple spelling rules in _plural() would get wrong.
IRREGULAR_PLURALS: dict[str, str] = {
    "mouse": "mice", "goose": "geese", "child": "children", "man": "men", "woman": "women",
    "tooth": "teeth", "foot": "feet", "person": "people", "ox": "oxen", "sheep": "sheep",
    "deer": "deer", "moose": "moose", "cactus": "cacti", "knife": "knives", "wife": "wives",
    "leaf": "leaves", "wolf": "wolves", "loaf": "loaves", "half": "halves", "shelf": "shelves",
    "calf": "calves", "thief": "thieves", "life": "lives", "potato": "potatoes",
    "tomato": "tomatoes", "hero": "heroes", "echo": "echoes", "fungus": "fungi",
    "crisis": "crises", "louse": "lice", "scarf": "scarves", "elf": "elves", "hoof": "hooves",
    "volcano": "volcanoes", "mosquito": "mosquitoes", "radius": "radii", "nucleus": "nuclei",
    "aircraft": "aircraft", "salmon": "salmon", "trout": "trout", "domino": "dominoes",
}

# Countable nouns that follow the spelling rules (-s, -es, consonant+y -> -ies).
REGULAR_NOUNS: tuple[str, ...] = (
    "box", "bus", "fox", "dish", "church", "watch", "brush", "glass", "bench", "wish", "match",
    "dress", "city", "baby", "berry", "lady", "puppy", "party", "story", "cherry", "butterfly",
    "family", "library", "country", "penny", "key", "toy", "boy", "monkey", "donkey", "valley",
    "apple", "lamp", "basket", "cup", "kettle", "candle", "blanket", "pillow", "umbrella",
    "bucket", "ladder", "bowl", "plate", "spoon", "jug", "mirror", "clock", "vase", "pencil",
    "kite", "doll", "radio", "lantern", "bottle", "towel", "book", "map", "bell", "bird", "tree",
    "horse", "river", "bridge", "garden", "house", "window", "door", "road", "shoe", "piano",
    "photo", "roof", "chief", "zoo", "tray", "hat", "coin", "star",
)

# Members are disjoint across categories, so each word has one category.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "fruit": ("apple", "banana", "cherry", "grape", "lemon", "mango", "pear", "peach", "plum", "orange"),
    "vegetable": ("carrot", "potato", "onion", "cabbage", "turnip", "leek", "lettuce", "spinach",
                  "radish", "beetroot"),
    "color": ("red", "blue", "green", "yellow", "purple", "pink", "brown", "grey", "white", "black"),
    "tool": ("hammer", "saw", "wrench", "chisel", "shovel", "rake", "drill", "screwdriver", "axe",
             "spanner"),
    "vehicle": ("car", "bus", "truck", "bicycle", "train", "tram", "van", "tractor", "scooter",
                "taxi"),
    "drink": ("tea", "coffee", "milk", "juice", "water", "cocoa", "lemonade", "cider"),
    "furniture": ("chair", "table", "sofa", "bed", "desk", "wardrobe", "bench", "stool", "shelf",
                  "cupboard"),
    "instrument": ("piano", "violin", "guitar", "drum", "flute", "trumpet", "harp", "cello",
                   "clarinet", "banjo"),
    "clothing": ("shirt", "coat", "scarf", "hat", "sock", "boot", "skirt", "jacket", "glove",
                 "sweater"),
    "bird": ("robin", "sparrow", "crow", "owl", "eagle", "swan", "pigeon", "parrot", "duck", "goose"),
    "fish": ("salmon", "trout", "cod", "herring", "carp", "pike", "tuna", "mackerel", "perch"),
    "insect": ("ant", "bee", "beetle", "moth", "wasp", "fly", "ladybird", "grasshopper",
               "butterfly", "dragonfly"),
    "flower": ("rose", "tulip", "daisy", "lily", "daffodil", "poppy", "sunflower", "orchid",
               "marigold", "bluebell"),
    "tree": ("oak", "pine", "birch", "maple", "willow", "elm", "beech", "cedar", "spruce", "poplar"),
    "metal": ("iron", "copper", "silver", "gold", "tin", "zinc", "steel", "brass", "nickel"),
    "mammal": ("dog", "cat", "horse", "cow", "sheep", "goat", "pig", "rabbit", "mouse", "fox",
               "deer", "bear"),
    "body part": ("hand", "foot", "knee", "elbow", "ear", "nose", "shoulder", "ankle", "wrist",
                  "chin"),
}

# Mass nouns and colour words take no article ("Tea is a kind of drink.", not "A tea ...").
_NO_ARTICLE: frozenset[str] = frozenset(
    CATEGORIES["drink"] + CATEGORIES["metal"] + CATEGORIES["color"] + ("spinach", "clothing", "furniture")
)

# Each complement kind lists what may follow a verb, so rewritten sentences stay sensible.
COMPLEMENTS: dict[str, tuple[str, ...]] = {
    "place": ("to the {place}", "to {town}", "home from the {place}", "to the {place} after lunch"),
    "food": ("some {food}", "the {food}", "{food} for lunch", "{food} for dinner"),
    "item": ("the {color} {item}", "an old {item}", "a new {item}", "the {item} from the market"),
    "person": ("{name}", "{name} at the {place}", "{name} in {town}", "{name} after work"),
    "still": ("in the garden", "at the {place}", "by the river", "near the {place}",
              "all afternoon", "after dinner", "in {town}", "with {name}"),
    "write": ("a letter", "a short poem", "a note to {name}", "a story", "a shopping list"),
    "read": ("a book", "the newspaper", "a letter from {name}", "the map", "a story"),
    "draw": ("a picture", "a map of {town}", "a horse", "the river", "a {color} bird"),
    "drink": ("a cup of tea", "some milk", "cold water", "hot cocoa", "a glass of juice"),
    "grow": ("tomatoes", "carrots", "roses", "tall sunflowers", "beans"),
    "sing": ("a song", "a lullaby", "a sea shanty", "in the choir"),
    "tell": ("a story", "a joke", "{name} a secret", "the truth"),
    "feed": ("the ducks", "the chickens", "the horses", "the goats", "the cat"),
    "win": ("the race", "a prize", "the quiz", "the game"),
    "build": ("a shed", "a fence", "a wall", "a treehouse", "a birdhouse"),
    "wear": ("a {color} scarf", "a {color} hat", "a {color} coat", "{color} boots"),
    "plant": ("a tree", "some tulips", "potatoes", "an oak"),
    "pay": ("the bill", "the baker", "{n} coins", "for the {item}"),
    "leave": ("the house", "the office", "{town}", "the party early"),
    "hear": ("the bells", "a strange noise", "the news", "an owl"),
    "see": ("a rainbow", "the ships", "a fox", "{name} at the {place}"),
    "sweep": ("the floor", "the yard", "the steps"),
    "dig": ("a hole", "the garden", "a pond"),
    "ring": ("the bell", "the doorbell", "the church bell"),
    "hang": ("the washing", "a picture", "the {color} curtains"),
    "make": ("a cake", "a kite", "soup", "a list"),
    "bake": ("a cake", "some bread", "a pie", "some buns", "biscuits"),
    "begin": ("the lesson", "work", "a new book", "the journey"),
    "catch": ("the bus", "a fish", "the ball", "a cold"),
    "throw": ("the ball", "a stone into the river", "a party"),
    "spend": ("the day at the {place}", "{n} coins", "the morning in {town}"),
    "send": ("a letter", "a parcel to {name}", "a message", "a postcard"),
    "cut": ("the bread", "the grass", "a piece of cake"),
    "put": ("the {item} on the shelf", "the {item} in the box", "the kettle on"),
    "shake": ("the rug", "hands with {name}", "the apple tree"),
    "know": ("the answer", "the way", "the song"),
    "blow": ("out the candles", "on the hot soup", "bubbles"),
}

# (base, past, complement kind); irregular pasts are what the corpus must teach.
VERBS: tuple[tuple[str, str, str], ...] = (
    ("walk", "walked", "place"), ("run", "ran", "place"), ("go", "went", "place"),
    ("drive", "drove", "place"), ("ride", "rode", "place"), ("hurry", "hurried", "place"),
    ("cycle", "cycled", "place"), ("return", "returned", "place"), ("wander", "wandered", "place"),
    ("march", "marched", "place"), ("jog", "jogged", "place"), ("rush", "rushed", "place"),
    ("fly", "flew", "place"), ("come", "came", "place"),
    ("eat", "ate", "food"), ("cook", "cooked", "food"), ("taste", "tasted", "food"),
    ("order", "ordered", "food"), ("share", "shared", "food"), ("serve", "served", "food"),
    ("buy", "bought", "item"), ("sell", "sold", "item"), ("find", "found", "item"),
    ("fix", "fixed", "item"), ("clean", "cleaned", "item"), ("paint", "painted", "item"),
    ("carry", "carried", "item"), ("drop", "dropped", "item"), ("bring", "brought", "item"),
    ("keep", "kept", "item"), ("hold", "held", "item"), ("break", "broke", "item"),
    ("lose", "lost", "item"), ("wash", "washed", "item"), ("choose", "chose", "item"),
    ("wrap", "wrapped", "item"), ("mend", "mended", "item"), ("polish", "polished", "item"),
    ("hide", "hid", "item"), ("take", "took", "item"), ("forget", "forgot", "item"),
    ("borrow", "borrowed", "item"),
    ("meet", "met", "person"), ("visit", "visited", "person"), ("help", "helped", "person"),
    ("call", "called", "person"), ("thank", "thanked", "person"), ("greet", "greeted", "person"),
    ("teach", "taught", "person"), ("hug", "hugged", "person"), ("follow", "followed", "person"),
    ("invite", "invited", "person"), ("miss", "missed", "person"),
    ("dance", "danced", "still"), ("smile", "smiled", "still"), ("sleep", "slept", "still"),
    ("sit", "sat", "still"), ("stand", "stood", "still"), ("wait", "waited", "still"),
    ("jump", "jumped", "still"), ("swim", "swam", "still"), ("laugh", "laughed", "still"),
    ("listen", "listened", "still"), ("rest", "rested", "still"), ("work", "worked", "still"),
    ("play", "played", "still"), ("shout", "shouted", "still"), ("whistle", "whistled", "still"),
    ("speak", "spoke", "still"), ("stay", "stayed", "still"), ("kneel", "knelt", "still"),
    ("write", "wrote", "write"), ("read", "read", "read"), ("draw", "drew", "draw"),
    ("drink", "drank", "drink"), ("grow", "grew", "grow"), ("sing", "sang", "sing"),
    ("tell", "told", "tell"), ("feed", "fed", "feed"), ("win", "won", "win"),
    ("build", "built", "build"), ("wear", "wore", "wear"), ("plant", "planted", "plant"),
    ("pay", "paid", "pay"), ("leave", "left", "leave"), ("hear", "heard", "hear"),
    ("see", "saw", "see"), ("sweep", "swept", "sweep"), ("dig", "dug", "dig"),
    ("ring", "rang", "ring"), ("hang", "hung", "hang"), ("make", "made", "make"),
    ("bake", "baked", "bake"), ("begin", "began", "begin"), ("catch", "caught", "catch"),
    ("throw", "threw", "throw"), ("spend", "spent", "spend"), ("send", "sent", "send"),
    ("cut", "cut", "cut"), ("put", "put", "put"), ("shake", "shook", "shake"),
    ("know", "knew", "know"), ("blow", "blew", "blow"),
)

RELATIVES: tuple[str, ...] = (
    "my sister", "my brother", "my aunt", "my uncle", "my grandmother", "my neighbour",
    "my cousin", "my friend",
)

HELD_OUT_FRACTION = 0.25


# ---------------------------------------------------------------------------
# Small language helpers.
# ---------------------------------------------------------------------------

def _rng(seed: int, purpose: str) -> random.Random:
    # String seeds hash through SHA-512, so streams are stable across processes and PYTHONHASHSEED.
    return random.Random(f"gptpipe:{seed}:{purpose}")


def _number_word(n: int) -> str:
    """English word for 1 <= n <= 100 ("twenty-one")."""
    if n == 100:
        return "one hundred"
    if n < 10:
        return _UNITS[n - 1]
    if n < 20:
        return _TEENS[n - 10]
    tens, unit = divmod(n, 10)
    return _TENS[tens - 2] + ("" if unit == 0 else "-" + _UNITS[unit - 1])


NUMBER_WORDS: tuple[str, ...] = tuple(_number_word(n) for n in range(1, 101))

SEQUENCES: dict[str, tuple[tuple[str, ...], bool]] = {
    # kind -> (items, cyclic); the week and the year wrap around, counting does not.
    "day": (DAYS, True),
    "month": (MONTHS, True),
    "number": (NUMBER_WORDS, False),
}


def _plural(noun: str) -> str:
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _third_person(verb: str) -> str:
    if verb.endswith(("s", "x", "z", "ch", "sh", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2:-1] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def _article(phrase: str) -> str:
    """Prefix "a"/"an" unless the head word is a mass noun or colour."""
    if phrase in _NO_ARTICLE:
        return phrase
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _join_list(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


_SLOT = re.compile(r"\{(\w+)\}")


def _fill(template: str, rng: random.Random, slots: Mapping[str, Callable[[random.Random], str]]) -> str:
    # Every occurrence draws afresh, so one template yields many different sentences.
    return _SLOT.sub(lambda m: slots[m.group(1)](rng), template)


# ---------------------------------------------------------------------------
# The world.
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Person:
    name: str
    town: str
    street: str
    job: str
    pet: str
    pet_name: str


@dataclass(frozen=True)
class Shop:
    name: str
    owner: str
    town: str
    goods: tuple[str, ...]


@dataclass(frozen=True)
class Verb:
    base: str
    past: str
    kind: str


@dataclass(frozen=True)
class SeqQuery:
    """Ask for the item after `length` consecutive items of `kind` starting at index `start`."""

    kind: str
    start: int
    length: int

    def shown(self) -> list[str]:
        items, _ = SEQUENCES[self.kind]
        return [items[(self.start + i) % len(items)] for i in range(self.length)]

    def answer(self) -> str:
        items, _ = SEQUENCES[self.kind]
        return items[(self.start + self.length) % len(items)]


@dataclass(frozen=True)
class Pools:
    """The items one split of the instruction set may ask about."""

    antonyms: tuple[tuple[str, str], ...]
    nouns: tuple[str, ...]
    category_words: tuple[str, ...]
    people: tuple[Person, ...]
    verbs: tuple[Verb, ...]
    sequences: tuple[SeqQuery, ...]
    items: tuple[str, ...]


@dataclass(frozen=True)
class World:
    seed: int
    towns: tuple[str, ...]
    people: tuple[Person, ...]
    shops: tuple[Shop, ...]
    prices: dict[str, int]
    category_of: dict[str, str]
    verbs: tuple[Verb, ...]
    train: Pools
    heldout: Pools

    def neighbours(self, person: Person) -> list[Person]:
        return [p for p in self.people if p.town == person.town and p.name != person.name]

    def shops_in(self, town: str) -> list[Shop]:
        return [s for s in self.shops if s.town == town]


def _build_people(rng: random.Random, towns: Sequence[str], n_people: int) -> tuple[Person, ...]:
    names = rng.sample(FIRST_NAMES, n_people)
    # Cycling through shuffled towns and jobs keeps "where does X live" answers evenly spread.
    jobs = list(JOBS)
    rng.shuffle(jobs)
    pet_names = list(PET_NAMES)
    people = []
    for i, name in enumerate(names):
        people.append(Person(
            name=name,
            town=towns[i % len(towns)],
            street=rng.choice(STREETS),
            job=jobs[i % len(jobs)],
            pet=rng.choice(PET_KINDS),
            pet_name=rng.choice(pet_names),
        ))
    rng.shuffle(people)
    return tuple(people)


def _build_shops(rng: random.Random, people: Sequence[Person]) -> tuple[Shop, ...]:
    owners = rng.sample(list(people), len(people) // 2)
    return tuple(
        Shop(name=f"{p.name}'s {rng.choice(SHOP_KINDS)}", owner=p.name, town=p.town,
             goods=tuple(rng.sample(ITEMS, 4)))
        for p in owners
    )


def _split(rng: random.Random, items: Sequence, groups: Callable[[object], object] | None = None,
           fraction: float = HELD_OUT_FRACTION) -> tuple[tuple, tuple]:
    """Shuffle and cut off a held-out share, per group so every answer type reaches the test split."""
    by_group: dict[object, list] = {}
    for item in items:
        by_group.setdefault(groups(item) if groups else None, []).append(item)
    train: list = []
    heldout: list = []
    for members in by_group.values():
        members = list(members)
        rng.shuffle(members)
        k = max(1, round(len(members) * fraction))
        heldout.extend(members[:k])
        train.extend(members[k:])
    return tuple(train), tuple(heldout)


def _all_sequence_queries() -> list[SeqQuery]:
    queries = []
    for kind, (items, cyclic) in SEQUENCES.items():
        for length in range(1, 5):
            last_start = len(items) if cyclic else len(items) - length
            queries.extend(SeqQuery(kind, start, length) for start in range(last_start))
    return queries


def _build_world(seed: int) -> World:
    rng = _rng(seed, "world")
    towns = tuple(rng.sample(TOWN_NAMES, 10))
    people = _build_people(rng, towns, 60)
    shops = _build_shops(rng, people)
    prices = {item: rng.randint(2, 60) for item in ITEMS}
    category_of = {w: cat for cat, words in CATEGORIES.items() for w in words}
    verbs = tuple(Verb(*v) for v in VERBS)

    split_rng = _rng(seed, "split")
    nouns = tuple(IRREGULAR_PLURALS) + REGULAR_NOUNS
    pieces = {
        "antonyms": _split(split_rng, ANTONYMS),
        "nouns": _split(split_rng, nouns, lambda n: n in IRREGULAR_PLURALS),
        "category_words": _split(split_rng, list(category_of), lambda w: category_of[w]),
        "people": _split(split_rng, people),
        "verbs": _split(split_rng, verbs, lambda v: v.past.endswith("ed")),
        "sequences": _split(split_rng, _all_sequence_queries(), lambda q: (q.kind, q.length == 1)),
        "items": _split(split_rng, ITEMS),
    }
    return World(
        seed=seed, towns=towns, people=people, shops=shops, prices=prices,
        category_of=category_of, verbs=verbs,
        train=Pools(**{k: v[0] for k, v in pieces.items()}),
        heldout=Pools(**{k: v[1] for k, v in pieces.items()}),
    )


def _canonical_fact(world: World, family: str, subject: str) -> str | None:
    """The exact sentence the corpus always contains for a knowledge fact (None for pattern families)."""
    if family == "antonym":
        other = next(b if a == subject else a for a, b in ANTONYMS if subject in (a, b))
        return f"The opposite of {subject} is {other}."
    if family == "plural":
        return f"The plural of {subject} is {_plural(subject)}."
    if family == "category":
        return f"{_cap(_article(subject))} is a kind of {world.category_of[subject]}."
    if family in ("lives", "job"):
        person = next(p for p in world.people if p.name == subject)
        if family == "lives":
            return f"{person.name} lives in {person.town}."
        return f"{person.name} works as {_article(person.job)}."
    if family == "past_tense":
        verb = next(v for v in world.verbs if v.base == subject)
        return f"The past tense of {verb.base} is {verb.past}."
    return None


# ---------------------------------------------------------------------------
# Sentences shared by corpus and instructions.
# ---------------------------------------------------------------------------

def _world_slots(world: World, people: Sequence[Person] | None = None,
                 items: Sequence[str] | None = None) -> dict[str, Callable[[random.Random], str]]:
    people = people or world.people
    items = items or ITEMS
    return {
        "name": lambda r: r.choice(people).name,
        "town": lambda r: r.choice(world.towns),
        "place": lambda r: r.choice(PLACES),
        "food": lambda r: r.choice(FOODS),
        "item": lambda r: r.choice(items),
        "color": lambda r: r.choice(COLORS),
        "n": lambda r: str(r.randint(2, 40)),
        "day": lambda r: r.choice(DAYS),
        "street": lambda r: r.choice(STREETS),
        "job": lambda r: r.choice(JOBS),
        "shop": lambda r: r.choice(world.shops).name,
        "pet": lambda r: r.choice(world.people).pet_name,
        "rel": lambda r: r.choice(("mum", "dad", "my sister", "my brother", "nan", "grandad",
                                   "my aunt", "my uncle")),
    }


def _subject(rng: random.Random, people: Sequence[Person]) -> tuple[str, bool]:
    """A sentence subject and whether it takes the third-person -s."""
    roll = rng.random()
    if roll < 0.55:
        return rng.choice(people).name, True
    if roll < 0.7:
        return "The " + rng.choice(JOBS), True
    if roll < 0.8:
        return _cap(rng.choice(RELATIVES)), True
    return rng.choice(("I", "We", "They", "You")), False


def _verb_sentences(rng: random.Random, world: World, verb: Verb,
                    people: Sequence[Person] | None = None) -> tuple[str, str]:
    """The same sentence in the present and in the past tense."""
    people = people or world.people
    subject, third = _subject(rng, people)
    complement = _fill(rng.choice(COMPLEMENTS[verb.kind]), rng, _world_slots(world, people))
    present = _third_person(verb.base) if third else verb.base
    return f"{subject} {present} {complement}.", f"{subject} {verb.past} {complement}."


# ---------------------------------------------------------------------------
# SMS messages.
# ---------------------------------------------------------------------------

# The labelled SMS set is built so that pretraining pays off when labels are few. A message's label
# rests on one key line (what the sender wants: a jackpot claimed, a card "verified", or a loaf of
# bread picked up) or, in a sender-only message, on who sends it. Everything else (greeting, phone
# number, link, sign-off, casing, text-speak, typos) comes from pools both labels share, so no
# surface trick separates them. There are many key lines per label, each a paraphrase in its own
# words ("you have won a jackpot", "a windfall is sitting in your name", "your sweepstake ticket came
# up"), so a few dozen labelled messages show only a fraction of them, and a word-counting model
# (TF-IDF, or a GPT trained from random weights) meets mostly unseen words in the test messages.
# The pretraining corpus shows every key line and every sender many times, with what people made
# of them ("It was a scam, so Ella deleted it", "It was from her sister"; guides that list the
# lines scammers use and the names they hide behind), so a pretrained model brings that knowledge
# to the few labels. Ambiguous messages (labelled at random), ham that quotes a scam and label
# noise keep the full-data task short of separable.

SPAM_LINES: tuple[str, ...] = (
    # winnings
    "you have won the {gain}", "the {gain} is sitting in your name", "your sweepstake ticket came up",
    "you were picked for the {gain}", "the {gain} is reserved for you", "your {gain} expires at midnight",
    "collect the {gain} you are owed", "your {gain} is ready to transfer",
    "our weekly lottery drew your number", "a luxury cruise is yours", "a mystery hamper has your name on it",
    "an unclaimed {gain} is registered to you", "you are our lucky grand winner",
    "a holiday for two is waiting to be booked", "your loyalty points turned into a cash bonus",
    "a brand new tablet is yours to keep", "you scooped the monthly giveaway",
    "congratulations on your guaranteed reward",
    # accounts and security
    "your account has been suspended", "verify your card details to avoid closure",
    "confirm your PIN to restore access", "unusual activity was spotted on your bank login",
    "your password expires today, renew it now", "your security code was used on a new device",
    "reactivate your frozen savings account", "update your billing details or lose service",
    "someone tried to withdraw funds from your wallet", "your identity check is incomplete",
    # deliveries and fees
    "your parcel is held at customs", "pay the small release fee for your package",
    "a courier missed you, rebook for a fee", "your delivery needs an import charge settled",
    "the postage on your order was underpaid",
    # refunds, tax, compensation
    "your tax rebate is pending", "you are owed compensation for an accident",
    "a refund cheque awaits your signature", "reclaim the mis-sold insurance fees",
    "an overpayment refund is ready to transfer",
    # money offers
    "your loan is pre-approved, no credit checks", "double your savings in seven days",
    "crypto returns are guaranteed this week", "earn thousands a month working from home",
    "invest a little now for enormous profits", "clear all your debts with one easy payment",
    # subscriptions and premium lines
    "you are now subscribed to the ringtone club", "unlock bonus minutes on your phone",
    "download the latest chart tones", "your handset is due a premium upgrade",
    "join our members-only VIP lounge", "your trial will renew at the weekly rate",
    # dating and flattery
    "lonely singles nearby want to chat with you", "someone has a secret crush on you",
    "an admirer left you a private voicemail", "racy new photos are waiting for you",
    "a stunning local model wants to meet",
    # too-good offers
    "designer watches at ninety percent off", "miracle slimming pills, results overnight",
    "limited stock of luxury perfume at trade price", "genuine gold bars going cheap",
    "cheap medicine with no prescription", "replica handbags shipped discreetly",
    "a timeshare villa for a tiny deposit", "premium wine cases below cost today",
)

HAM_LINES: tuple[str, ...] = (
    # plans and lifts
    "running late, the bus is crawling", "can you pick up some {food} on the way",
    "i left my {item} at your house", "do you still have my {item}", "i made too much {food}, come round",
    "meet me by the {place} at {time}", "{rel} says the {item} is fixed", "can i borrow your {item} on {day}",
    "the {food} at the {place} was lovely", "we are at the {place} with {name}",
    "dinner will be ready by seven", "are we still on for lunch tomorrow",
    "fancy a walk along the river later", "i can give you a lift to the station",
    "shall i bring a pudding round", "the film starts at eight, meet outside",
    "save me a seat at the match", "the traffic on the ring road is terrible",
    # home and family
    "did you remember to feed {pet}", "grandma is feeling much better today",
    "the kids are finally asleep", "can you water the tomatoes while we are away",
    "the plumber is coming at ten", "we have run out of milk again",
    "the dog dug up the flower bed", "your jumper is drying on the radiator",
    "i left my umbrella at your house", "the baby said her first word",
    "mum wants to know if you are coming for tea", "bring the spare key when you come",
    # thanks and sorry
    "thanks for the lift home last night", "sorry i missed your call, i was driving",
    "thank you for the lovely flowers", "sorry about earlier, i was tired and grumpy",
    "cheers for helping me move the sofa", "that soup you made was delicious",
    # news and chat
    "i passed my driving test", "the new neighbours seem friendly",
    "did you see the state of the garden after the storm", "my sister got the nursing job",
    "the match went to extra time", "the bakery on the corner has closed down",
    "i finally finished that jigsaw", "the roof is leaking again",
    "our book club is reading a mystery this month", "the school play was brilliant",
    # asks
    "can i borrow your ladder on saturday", "could you lend me your drill",
    "do you still have my casserole dish", "can you record the quiz show for me",
    "any chance you could walk the dog at noon", "could you check if i left the iron on",
    "would you proofread my cover letter", "can you ask your dad about the car",
    # work and school
    "the meeting ran over, be home soon", "my shift swapped to the morning",
    "the teacher wants a word about homework", "i got stuck with the late rota again",
    "the printer at work jammed all afternoon", "we finished the report early",
    # birthdays and events
    "happy birthday, have a brilliant day", "the party is at the village hall",
    "we are having a barbecue if the weather holds", "the wedding photos came out lovely",
    "the choir concert is on thursday", "the allotment show was a laugh",
)

# What the scam lines promise ({gain} in SPAM_LINES); the corpus lists them in its scam warnings.
GAINS: tuple[str, ...] = (
    "jackpot", "windfall", "payout", "rebate", "voucher", "cashback", "bonanza", "giveaway", "dividend",
    "hamper", "cruise", "award", "bonus", "refund", "grant", "inheritance", "lottery win", "gift card",
    "reward", "premium bond", "loyalty reward", "compensation", "settlement", "scratchcard win",
    "cash sum", "shopping spree", "luxury break", "tax credit",
)

# Who sends the messages that say nothing but "call us back": the label is who they are. Real
# senders are places of the world (its towns' offices, its shops); the scam names exist only in
# the scam warnings of the pretraining corpus.
SCAM_SENDERS: tuple[str, ...] = (
    "Zenvo Rewards", "Quorvex Finance", "Brightline Claims", "Velmora Prizes", "Tallix Support",
    "Orbana Delivery", "Krestel Capital", "Nuvaro Security", "Dexmoor Lotto", "Fenwick Refunds",
    "Sollaris Mobile", "Glimmer Credit", "Haverix Parcel", "Maxxen Bonus", "Pellora Tax Office",
    "Ruvex Account Team", "Stelio Winners", "Trovane Loans", "Ulmex Billing", "Wexford Payouts",
)
LEGIT_SENDER_KINDS: tuple[str, ...] = (
    "Library", "Surgery", "Dental Practice", "Post Office", "Council", "Garage", "Vets", "Pharmacy",
)
SENDER_MATTERS: tuple[str, ...] = (
    "your account", "your appointment", "your order", "your booking", "your enquiry", "your recent visit",
    "your application", "your statement",
)
SENDER_TEMPLATES: tuple[str, ...] = (
    "{sender}: please call us back about {matter} on {phone}",
    "{sender}: we tried to reach you about {matter}, ring {phone}",
    "message from {sender}: {matter} needs your attention, see {url}",
    "{sender} here, a quick update on {matter}. reply or call {phone}",
    "{sender}: there is news about {matter}. details at {url}",
)

# Message-shaped chatter with no key line: the same text comes under either label.
AMBIGUOUS_TEMPLATES: tuple[str, ...] = (
    "call me back on {phone} when you get this",
    "are you free on {day}? i have something for you",
    "reply when you get this, its important",
    "check this out when you can {url}",
    "hi, is this still your number? let me know",
    "got your message, will call you later today",
    "have you seen this? {url}",
    "hello, can you ring me on {phone} asap",
)

# Ham that quotes a key line of a scam: the words say spam, the context says a friend.
QUOTED_SCAM_TEMPLATES: tuple[str, ...] = (
    "lol just got a text saying {line}, who falls for that",
    "{rel} nearly believed a message saying {line}, can you talk to them",
    "another one today: {line}. deleted it",
)

# Shared by both labels: openings, follow-ups and sign-offs.
OPENERS: tuple[str, ...] = (
    "hi", "hey", "hello", "dear {name},", "{name},", "hi {name}", "good news!", "listen,", "morning!",
    "ok so", "quick one:", "just so you know,", "evening,", "update:", "hiya",
)
FOLLOW_UPS: tuple[str, ...] = (
    "call {phone}", "text back on {phone}", "details at {url}", "reply YES", "ring me on {phone}",
    "see {url}", "before {day}", "by {time}", "today", "asap", "when you can", "let me know",
)
SIGN_OFFS: tuple[str, ...] = (
    "x", "xx", "thanks", "cheers", "ta", "lol", ":)", "!!", "see you", "bye", "regards", "love you",
    ";)", "thx",
)

_SPAM_SHARE = 0.375
_SENDER_SHARE = 0.12      # sender-only messages, of either label
_QUOTED_SCAM_SHARE = 0.04  # of ham
_AMBIGUOUS_SHARE = 0.035
_LABEL_NOISE = 0.025
_AVOIDED_SMS = 20_000  # the corpus shows none of the first this many labelled messages' texts

_ABBREVIATIONS: dict[str, str] = {
    "you": "u", "your": "ur", "are": "r", "tomorrow": "2morrow", "tonight": "2nite", "to": "2",
    "for": "4", "please": "pls", "because": "coz", "see": "c", "okay": "ok", "later": "l8r",
    "great": "gr8", "before": "b4", "what": "wot", "love": "luv", "thanks": "thx",
    "text": "txt", "message": "msg", "people": "ppl", "about": "abt", "really": "rly",
    "be": "b", "why": "y", "minutes": "mins", "probably": "prob",
}

_URL_WORDS: tuple[str, ...] = (
    "my", "get", "go", "top", "star", "fast", "easy", "web", "link", "info", "page", "site", "hub",
    "home", "now", "box", "spot", "zone",
)


def _code(rng: random.Random, length: int) -> str:
    return "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(length))


def _url(rng: random.Random) -> str:
    a, b = rng.sample(_URL_WORDS, 2)
    return rng.choice((
        f"www.{a}{b}.com", f"http://{a}-{b}.net/{_code(rng, 4).lower()}", f"{a}{b}.co/{_code(rng, 5)}",
        f"bit.ly/{_code(rng, 6)}", f"www.{a}-{b}.org",
    ))


def _phone(rng: random.Random) -> str:
    return rng.choice((f"07{rng.randint(100, 999)} {rng.randint(100000, 999999)}",
                       f"0{rng.randint(1000, 9999)} {rng.randint(100000, 999999)}",
                       f"0800 {rng.randint(100, 999)} {rng.randint(1000, 9999)}"))


def _sms_slots(world: World) -> dict[str, Callable[[random.Random], str]]:
    slots = _world_slots(world)
    slots.update({
        "time": lambda r: r.choice(("6", "7pm", "half 8", "noon", "8.30", "10ish", "5 o'clock", "9am")),
        "phone": _phone,
        "url": _url,
        "matter": lambda r: r.choice(SENDER_MATTERS),
        "gain": lambda r: r.choice(GAINS),
    })
    return slots


def legit_senders(world: World) -> tuple[str, ...]:
    """The world's real senders: each town's offices, and its shops."""
    offices = tuple(f"{town} {kind}" for town in world.towns for kind in LEGIT_SENDER_KINDS)
    return offices + tuple(shop.name for shop in world.shops)


def _typo(rng: random.Random, words: list[str]) -> list[str]:
    candidates = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if candidates:
        i = rng.choice(candidates)
        w = words[i]
        j = rng.randrange(len(w) - 1)
        words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    return words


def _abbreviate(rng: random.Random, text: str, p: float) -> str:
    if rng.random() < p:
        text = text.replace("i am ", "im ").replace("I am ", "im ")
    words = []
    for word in text.split(" "):
        core = word.rstrip(",.!?")
        tail = word[len(core):]
        short = _ABBREVIATIONS.get(core.lower())
        words.append(short + tail if short and rng.random() < p else word)
    return " ".join(words)


def _texting(rng: random.Random, text: str) -> str:
    """Texting style, the same for every label: case, text-speak, shouting, typos, punctuation."""
    # Shouting is rarer than in real inboxes: a 2,048-token BPE learnt on the corpus splits capital
    # letters into single bytes, where a GPT loses to TF-IDF (which lowercases) whatever its pretraining.
    roll = rng.random()
    if roll < 0.35:
        text = text.lower()
    elif roll < 0.86:
        text = _cap(text)
    elif roll < 0.90:
        text = text.upper()
    else:
        text = " ".join(w.upper() if rng.random() < 0.3 else w for w in _cap(text).split(" "))
    if rng.random() < 0.4:
        text = _abbreviate(rng, text, 0.5)
    if rng.random() < 0.12:
        text = " ".join(_typo(rng, text.split(" ")))
    if rng.random() < 0.2:
        text = text.replace("!", "!!", 1) if "!" in text else text.rstrip(".,") + "!"
    return " ".join(text.split())


class _SmsFactory:
    """Draws ham, spam, sender-only and ambiguous messages about one world, in a shared wrapper."""

    def __init__(self, world: World, avoid: frozenset[str] = frozenset()) -> None:
        self.world = world
        self._slots = _sms_slots(world)
        self.legit_senders = legit_senders(world)
        self.avoid = avoid  # texts the corpus must not show (the labelled set's)

    def _fill(self, rng: random.Random, template: str) -> str:
        return _fill(template, rng, self._slots)

    def _wrap(self, rng: random.Random, line: str) -> str:
        """A key line in a greeting, a follow-up and a sign-off drawn the same way for every label."""
        parts = []
        if rng.random() < 0.55:
            parts.append(self._fill(rng, rng.choice(OPENERS)))
        parts.append(line + rng.choice((",", ".", "!", "")))
        if rng.random() < 0.5:
            parts.append(self._fill(rng, rng.choice(FOLLOW_UPS)))
        if rng.random() < 0.35:
            parts.append(rng.choice(SIGN_OFFS))
        return _texting(rng, " ".join(parts).rstrip(","))

    def spam(self, rng: random.Random) -> str:
        return self._wrap(rng, self._fill(rng, rng.choice(SPAM_LINES)))

    def ham(self, rng: random.Random) -> str:
        if rng.random() < _QUOTED_SCAM_SHARE:
            template = rng.choice(QUOTED_SCAM_TEMPLATES).replace("{line}", self._fill(rng, rng.choice(SPAM_LINES)))
            return self._wrap(rng, self._fill(rng, template))
        return self._wrap(rng, self._fill(rng, rng.choice(HAM_LINES)))

    def from_sender(self, rng: random.Random, label: str, sender: str | None = None) -> str:
        sender = sender or rng.choice(SCAM_SENDERS if label == "spam" else self.legit_senders)
        template = rng.choice(SENDER_TEMPLATES).replace("{sender}", sender)
        return _texting(rng, self._fill(rng, template))

    def ambiguous(self, rng: random.Random) -> str:
        return _texting(rng, self._fill(rng, rng.choice(AMBIGUOUS_TEMPLATES)))

    def unlabelled(self, rng: random.Random, kind: str, label: str, sender: str | None = None) -> str:
        """A message for the pretraining corpus, drawn again while it is a labelled message's text
        word for word (pretraining must not read test messages beside a verdict)."""
        for _ in range(20):
            text = self.from_sender(rng, label, sender) if kind == "sender" else _sms_text(rng, self, kind, label)
            if text not in self.avoid:
                break
        return text

    def labelled(self, rng: random.Random, label: str) -> str:
        """A message whose label is certain (no ambiguous messages, no label noise)."""
        if rng.random() < _SENDER_SHARE:
            return self.from_sender(rng, label)
        return self.spam(rng) if label == "spam" else self.ham(rng)


def _sms_kind(rng: random.Random) -> tuple[str, str]:
    """Which generator a message comes from, and its true label."""
    if rng.random() < _AMBIGUOUS_SHARE:
        # The same kind of text under both labels caps achievable accuracy below 100%.
        return "ambiguous", ("spam" if rng.random() < 0.5 else "ham")
    label = "spam" if rng.random() < _SPAM_SHARE else "ham"
    return ("sender" if rng.random() < _SENDER_SHARE else "line"), label


def _sms_text(rng: random.Random, factory: _SmsFactory, kind: str, label: str) -> str:
    if kind == "ambiguous":
        return factory.ambiguous(rng)
    if kind == "sender":
        return factory.from_sender(rng, label)
    return factory.spam(rng) if label == "spam" else factory.ham(rng)


def generate_sms(seed: int, n_messages: int = 3000) -> list[tuple[str, str]]:
    """(label, text) pairs in the UCI SMS Spam Collection style, about 37% spam, with ambiguous
    messages and label noise (the design: the comment above SPAM_LINES)."""
    world = _build_world(seed)
    factory = _SmsFactory(world)
    rng = _rng(seed, "sms")
    seen: set[tuple[str, str]] = set()
    messages: list[tuple[str, str]] = []
    while len(messages) < n_messages:
        kind, label = _sms_kind(rng)
        # Redraw only the text, never the kind, so avoiding duplicates cannot skew the class balance.
        for _ in range(10):
            text = _sms_text(rng, factory, kind, label)
            if (label, text) not in seen:
                break
        seen.add((label, text))
        if rng.random() < _LABEL_NOISE:
            label = "ham" if label == "spam" else "spam"
        messages.append((label, text))
    return messages


# ---------------------------------------------------------------------------
# Pretraining corpus.
# ---------------------------------------------------------------------------

def _person_sentences(rng: random.Random, world: World, p: Person) -> list[str]:
    job = _article(p.job)
    return [
        rng.choice((f"{p.name} lives in {p.town}.", f"{p.name}'s home is in {p.town}, on {p.street}.",
                    f"{p.name} is from {p.town}.", f"The town of {p.town} is home to {p.name}.")),
        rng.choice((f"{p.name} works as {job}.", f"{p.name} is {job}.", f"By trade, {p.name} is {job}.",
                    f"In {p.town}, everyone knows {p.name} the {p.job}.")),
        rng.choice((f"{p.name} has {_article(p.pet)} called {p.pet_name}.",
                    f"{p.pet_name} is {p.name}'s {p.pet}.",
                    f"{p.name} keeps {_article(p.pet)} named {p.pet_name}.")),
    ]


def _person_paragraph(rng: random.Random, world: World, p: Person, canonical: bool) -> str:
    sentences = _person_sentences(rng, world, p)
    if canonical:
        sentences = [_canonical_fact(world, "lives", p.name), _canonical_fact(world, "job", p.name)] + sentences
    sentences = list(dict.fromkeys(sentences))  # the varied phrasing may repeat the canonical one
    rng.shuffle(sentences)
    return " ".join(sentences)


def _antonym_sentence(rng: random.Random, a: str, b: str) -> str:
    if rng.random() < 0.5:
        a, b = b, a
    return rng.choice((
        f"The opposite of {a} is {b}.", f"{_cap(a)} and {b} are opposites.",
        f"{_cap(a)} is the opposite of {b}.", f"The antonym of {a} is {b}.",
        f"If it is not {a}, it might be {b}: they are opposite words.",
    ))


def _plural_sentence(rng: random.Random, noun: str) -> str:
    many = _plural(noun)
    return rng.choice((
        f"One {noun}, two {many}.", f"The plural of {noun} is {many}.",
        f"I saw one {noun} yesterday and three {many} today.",
        f"We say one {noun} but many {many}.", f"A single {noun}; a group of {many}.",
    ))


def _category_sentence(rng: random.Random, world: World, word: str) -> str:
    cat = world.category_of[word]
    thing = _article(word)
    return rng.choice((
        f"{_cap(thing)} is a kind of {cat}.", f"{_cap(thing)} is {_article(cat)}.",
        f"{_cap(word)} belongs to the {cat} group.",
        f"In the {cat} category you find {word}.",
    ))


def _verb_fact_sentence(rng: random.Random, verb: Verb) -> str:
    return rng.choice((
        f"Today I {verb.base}; yesterday I {verb.past}.", f"The past tense of {verb.base} is {verb.past}.",
        f"Now we {verb.base}, but last week we {verb.past}.",
        f"{_cap(verb.base)} becomes {verb.past} in the past tense.",
    ))


def _verb_story_pair(rng: random.Random, world: World, verb: Verb) -> str:
    present, past = _verb_sentences(rng, world, verb)
    return rng.choice((
        f"Every day: {present} Yesterday: {past}",
        f"{present} And yesterday too: {past}",
        f"Today: {present} Last {rng.choice(DAYS)}: {past}",
    ))


def _facts_paragraph(rng: random.Random, world: World, kind: str, subjects: Sequence, canonical: bool) -> str:
    """A handful of encyclopedic facts; canonical=True also states each in the fixed form the tests check."""
    sentences: list[str] = []
    for s in subjects:
        if kind == "antonym":
            a, b = s
            if canonical:
                sentences += [f"The opposite of {a} is {b}.", f"The opposite of {b} is {a}."]
            sentences.append(_antonym_sentence(rng, a, b))
        elif kind == "plural":
            if canonical:
                sentences += [_canonical_fact(world, "plural", s), f"One {s}, two {_plural(s)}."]
            sentences.append(_plural_sentence(rng, s))
        elif kind == "category":
            if canonical:
                sentences.append(_canonical_fact(world, "category", s))
            sentences.append(_category_sentence(rng, world, s))
        elif kind == "verb":
            if canonical:
                sentences += [_canonical_fact(world, "past_tense", s.base),
                              f"Today I {s.base}; yesterday I {s.past}."]
            sentences.append(_verb_fact_sentence(rng, s) if rng.random() < 0.5 else _verb_story_pair(rng, world, s))
    return " ".join(dict.fromkeys(sentences))


def _category_group_paragraph(rng: random.Random, cat: str) -> str:
    members = rng.sample(CATEGORIES[cat], 4)
    return rng.choice((
        f"{_cap(_join_list(members))} are all kinds of {cat}.",
        f"Examples of {cat}: {', '.join(members)}.",
        f"Here are some things in the {cat} group: {_join_list(members)}.",
    ))


def _sequence_paragraph(rng: random.Random, kind: str) -> str:
    items, cyclic = SEQUENCES[kind]
    if kind == "day":
        intro = f"The days of the week are {_join_list(items)}."
    elif kind == "month":
        intro = f"The months of the year are {_join_list(items)}."
    else:
        start = rng.randrange(0, 80)
        intro = f"Counting up: {', '.join(items[start:start + 12])}."
    sentences = [intro]
    for _ in range(4):
        i = rng.randrange(len(items) if cyclic else len(items) - 1)
        a, b = items[i], items[(i + 1) % len(items)]
        sentences.append(rng.choice((f"After {a} comes {b}.", f"The {kind} after {a} is {b}.",
                                     f"{_cap(b)} follows {a}.", f"The {kind} before {b} is {a}.")))
    return " ".join(sentences)


def _sequence_coverage(kind: str) -> str:
    items, cyclic = SEQUENCES[kind]
    n = len(items) if cyclic else len(items) - 1
    return " ".join(f"After {items[i]} comes {items[(i + 1) % len(items)]}." for i in range(n))


def _story_paragraph(rng: random.Random, world: World) -> str:
    """A short day-in-the-life story that stays consistent with the world's facts."""
    p = rng.choice(world.people)
    friends = world.neighbours(p) or list(world.people)
    friend = rng.choice(friends)
    shops = world.shops_in(p.town) or list(world.shops)
    shop = rng.choice(shops)
    day_i = rng.randrange(7)
    day, next_day = DAYS[day_i], DAYS[(day_i + 1) % 7]
    weather, later_weather = rng.sample(WEATHER, 2)
    item = rng.choice(shop.goods)
    price = world.prices[item]
    color = rng.choice(COLORS)
    verb = rng.choice(world.verbs)
    _, past = _verb_sentences(rng, world, verb, [p])
    opening = rng.choice((
        f"It was a {weather} {day} in {p.town}.", f"On {day} morning the weather in {p.town} was {weather}.",
        f"{day} was {weather}, and {p.town} was busy.", f"The {day} market in {p.town} opened early on a {weather} day.",
    ))
    intro = rng.choice((
        f"{p.name} the {p.job} woke up early and fed {p.pet_name} the {p.pet}.",
        f"{p.name}, who works as {_article(p.job)}, left the house on {p.street} before eight.",
        f"{p.name} lives on {p.street} with {_article(p.pet)} called {p.pet_name}.",
    ))
    errand = rng.choice((
        f"At {shop.name}, {p.name} bought {_article(color + ' ' + item)} for {price} coins.",
        f"{p.name} went to {shop.name} to buy {_article(item)}, which cost {price} coins.",
        f"{shop.owner} sold {p.name} {_article(color + ' ' + item)} for {price} coins.",
        f"The {_plural(item)} at {shop.name} cost {price} coins each, so {p.name} bought one.",
    ))
    meeting = rng.choice((
        f"Near the {rng.choice(PLACES)}, {p.name} met {friend.name}, who works as {_article(friend.job)}.",
        f"{friend.name} waved from across the {rng.choice(PLACES)} and shouted hello.",
        f"{p.name} and {friend.name} talked about the {weather} weather and the price of {rng.choice(FOODS)}.",
    ))
    turn = rng.choice((
        f"In the afternoon it turned {later_weather}, so {p.name} went home early.",
        f"Later the sky became {later_weather}, and {p.name} took an umbrella just in case.",
        f"By lunch it was {later_weather}.",
    ))
    closing = rng.choice((
        f"In the evening {p.name} was tired but happy.",
        f"On {next_day}, {p.name} planned to visit {friend.name} again.",
        f"That was {day}; the next day was {next_day}.",
        f"At night {p.pet_name} the {p.pet} slept by the fire.",
    ))
    middle = [errand, meeting, past]
    rng.shuffle(middle)
    return " ".join([opening, intro, *middle, turn, closing])


def _market_paragraph(rng: random.Random, world: World) -> str:
    town = rng.choice(world.towns)
    day = rng.choice(DAYS)
    items = rng.sample(ITEMS, 3)
    seller = rng.choice([s for s in world.shops if s.town == town] or list(world.shops))
    lines = [rng.choice((f"Every {day} there is a market in {town}.",
                         f"The {town} market is busiest on {day}.",
                         f"On {day} the square in {town} fills with stalls."))]
    for item in items:
        lines.append(rng.choice((
            f"{_cap(_article(rng.choice(COLORS) + ' ' + item))} costs {world.prices[item]} coins.",
            f"The {item} is {world.prices[item]} coins.",
            f"{seller.owner} sells {_plural(item)} for {world.prices[item]} coins each.",
        )))
    lines.append(rng.choice((f"People also buy {rng.choice(FOODS)} and {rng.choice(FOODS)} there.",
                             "The sellers shout their prices and the children run between the stalls.",
                             f"When it is {rng.choice(WEATHER)}, fewer people come.")))
    return " ".join(lines)


INBOX_HEADINGS: dict[str, tuple[str, ...]] = {
    "spam": ("The scam texts {name} got this week:", "{name} reported these messages as scams:",
             "Fakes that reached {name}'s phone:"),
    "ham": ("Texts {name} got from family and friends:", "{name}'s messages from people {name} knows:",
            "Ordinary texts on {name}'s phone:"),
}


def _sms_paragraph(rng: random.Random, world: World, factory: _SmsFactory) -> str:
    """A heading and a few messages of one kind, one per line: scams together, friends together."""
    label = "spam" if rng.random() < 0.45 else "ham"
    kinds = [("sender" if rng.random() < _SENDER_SHARE else "line") for _ in range(rng.randint(3, 6))]
    lines = [factory.unlabelled(rng, kind, label) for kind in kinds]
    heading = rng.choice(INBOX_HEADINGS[label]).replace("{name}", rng.choice(world.people).name)
    return "\n".join([heading, *lines])


SCAM_REACTIONS: tuple[str, ...] = (
    "It was a scam, so {name} deleted it.", "{name} knew a con at once and blocked the number.",
    "A fake, of course: {name} reported it.", "{name} sighed: scammers again.",
    "It was one of those scam texts, and {name} ignored it.", "{name} warned {rel} about it: a scam.",
)
FRIENDLY_REACTIONS: tuple[str, ...] = (
    "It was from {rel}, so {name} replied at once.", "{name} smiled and wrote back.",
    "A message from a friend: {name} answered it after lunch.", "{name} texted back a thumbs up.",
    "It was {rel} again, and {name} rang back.",
)
SENDER_REACTIONS: dict[str, tuple[str, ...]] = {
    "spam": ("{sender} is not a real company: it was a scam, and {name} deleted it.",
             "{name} looked up {sender}: a fake name that scammers use."),
    "ham": ("It really was {sender}, so {name} called them back.",
            "{name} knew {sender} well and rang them the next morning."),
}
TEXT_INTROS: tuple[str, ...] = ('{name} got a text: "{text}"', 'A message came for {name}: "{text}"',
                                '{name}\'s phone buzzed: "{text}"', '{name} read a new text. "{text}"')


def _sms_story_paragraph(rng: random.Random, world: World, factory: _SmsFactory) -> str:
    """Messages people got and what they made of them: how the corpus teaches what a scam is."""
    lines = []
    for _ in range(rng.randint(2, 4)):
        kind, label = _sms_kind(rng)
        if kind == "sender":
            sender = rng.choice(SCAM_SENDERS if label == "spam" else factory.legit_senders)
            text = factory.unlabelled(rng, kind, label, sender)
            reaction = rng.choice(SENDER_REACTIONS[label]).replace("{sender}", sender)
        else:
            text = factory.unlabelled(rng, kind, label)
            reaction = ("{name} was not sure who had sent it." if kind == "ambiguous"
                        else rng.choice(SCAM_REACTIONS if label == "spam" else FRIENDLY_REACTIONS))
        name = rng.choice(world.people).name
        intro = rng.choice(TEXT_INTROS).replace("{text}", text)
        lines.append(_fill(f"{intro} {reaction}".replace("{name}", name), rng, _world_slots(world)))
    return " ".join(lines)


def _gains_paragraph(rng: random.Random, gains: Sequence[str]) -> str:
    """What scammers promise, as the corpus's warnings list it."""
    listed = _join_list([_article(g) for g in gains]).replace(" and ", " or ")
    return rng.choice((f"Scam texts promise things like {listed}. None of it is real.",
                       f"If a stranger's text offers {listed}, it is a con.",
                       f"Scammers dangle {listed} to get your bank details."))


def _scam_guide_paragraph(rng: random.Random, world: World, lines: Sequence[str], senders: Sequence[str]) -> str:
    """A warning that lists scam lines and the fake names scammers use."""
    slots = _sms_slots(world)
    quoted = _join_list([f'"{_fill(line, rng, slots)}"' for line in lines]).replace(" and ", " or ")
    out = [rng.choice((f"A warning from the {rng.choice(world.towns)} police: texts that say {quoted} are scams.",
                       f"Scam texts often say things like {quoted}.",
                       f"Never answer a text that says {quoted}: it is a scam."))]
    if senders:
        out.append(rng.choice((f"{_join_list(list(senders))} are not real companies; their texts are scams.",
                               f"Scammers hide behind names like {_join_list(list(senders))}.")))
    return " ".join(out)


def _friendly_guide_paragraph(rng: random.Random, world: World, lines: Sequence[str], senders: Sequence[str]) -> str:
    """What ordinary messages from friends, family and real places say."""
    slots = _sms_slots(world)
    quoted = _join_list([f'"{_fill(line, rng, slots)}"' for line in lines])
    out = [rng.choice((f"Texts from friends and family say things like {quoted}.",
                       f"Most messages are ordinary: {quoted}."))]
    if senders:
        out.append(f"Real messages also come from places like {_join_list(list(senders))}.")
    return " ".join(out)


def _sms_coverage(rng: random.Random, world: World, factory: _SmsFactory) -> list[str]:
    """Every key line and every sender in a guide, once."""
    spam_lines, ham_lines = _chunks(SPAM_LINES, rng), _chunks(HAM_LINES, rng)
    scam = _chunks(SCAM_SENDERS, rng, 2, 4)
    legit = _chunks(factory.legit_senders, rng, 3, 5)
    out = [_scam_guide_paragraph(rng, world, c, scam[i] if i < len(scam) else ()) for i, c in enumerate(spam_lines)]
    out += [_scam_guide_paragraph(rng, world, rng.sample(SPAM_LINES, 2), c) for c in scam[len(spam_lines):]]
    out += [_friendly_guide_paragraph(rng, world, c, legit[i] if i < len(legit) else ()) for i, c in enumerate(ham_lines)]
    out += [_friendly_guide_paragraph(rng, world, rng.sample(HAM_LINES, 2), c) for c in legit[len(ham_lines):]]
    out += [_gains_paragraph(rng, c) for c in _chunks(GAINS, rng)]
    return out


def _qa_pair(rng: random.Random, world: World) -> tuple[str, str]:
    roll = rng.randrange(8)
    if roll == 0:
        p = rng.choice(world.people)
        return f"Where does {p.name} live?", rng.choice((f"{p.name} lives in {p.town}.", f"In {p.town}."))
    if roll == 1:
        p = rng.choice(world.people)
        return f"What is {p.name}'s job?", rng.choice((f"{p.name} works as {_article(p.job)}.", f"{_cap(p.job)}."))
    if roll == 2:
        a, b = rng.choice(ANTONYMS)
        a, b = (a, b) if rng.random() < 0.5 else (b, a)
        return f"What is the opposite of {a}?", rng.choice((f"The opposite of {a} is {b}.", f"{_cap(b)}."))
    if roll == 3:
        noun = rng.choice(tuple(IRREGULAR_PLURALS) + REGULAR_NOUNS)
        return f"What is the plural of {noun}?", f"The plural of {noun} is {_plural(noun)}."
    if roll == 4:
        word = rng.choice(list(world.category_of))
        return f"What kind of thing is {_article(word)}?", f"{_cap(_article(word))} is a kind of {world.category_of[word]}."
    if roll == 5:
        verb = rng.choice(world.verbs)
        return f"What is the past tense of {verb.base}?", f"The past tense of {verb.base} is {verb.past}."
    if roll == 6:
        kind = rng.choice(("day", "month"))
        items, _ = SEQUENCES[kind]
        i = rng.randrange(len(items))
        return f"Which {kind} comes after {items[i]}?", f"{items[(i + 1) % len(items)]}."
    item = rng.choice(ITEMS)
    return f"How much is the {item}?", f"The {item} costs {world.prices[item]} coins."


def _dialogue_paragraph(rng: random.Random, world: World) -> str:
    a, b = rng.sample(world.people, 2)
    style = rng.randrange(3)
    lines = []
    for _ in range(rng.randint(2, 4)):
        q, ans = _qa_pair(rng, world)
        if style == 0:
            lines += [f"Q: {q}", f"A: {ans}"]
        elif style == 1:
            lines += [f"{a.name}: {q}", f"{b.name}: {ans}"]
        else:
            lines += [f"Question: {q}", f"Answer: {ans}"]
    return "\n".join(lines)


# Reading: a note about an arbitrary event, then questions whose answers are copied from the note,
# each answer on a line of its own. Facts recalled from elsewhere cannot answer them (who, when and
# where are drawn afresh), so they reward reading the context; and the answers start their lines,
# the form an instruction model's responses take (the BPE splits a line-initial word differently
# from the same word after a space).
_READING_EVENTS: tuple[tuple[str, dict[str, str]], ...] = (
    ("On {day}, {a} gave {b} {thing} at the {place} in {town}.",
     {"a": "Who gave it?", "b": "Who got it?", "day": "On which day?", "town": "In which town?"}),
    ("{a} lost {thing} near the {place} in {town} on {day}, and {b} found it.",
     {"a": "Who lost it?", "b": "Who found it?", "day": "When was it lost?", "town": "Which town was it?"}),
    ("In {month}, {a} sold {thing} to {b} for {price} coins.",
     {"a": "Who sold it?", "b": "Who bought it?", "month": "In which month?", "price": "How much was paid?"}),
    ("{b} and {a} met at the {place} in {town} on {day} to talk about {food}.",
     {"day": "On which day did they meet?", "town": "Where did they meet?", "food": "What did they talk about?"}),
    ("Last {day}, {a} paid {price} coins for {thing} in {town}.",
     {"a": "Who paid?", "price": "How much did it cost?", "day": "Which day was it?", "town": "Which town?"}),
    ("{a} wrote to {b}: see you in {town} on {day}, bring {thing}.",
     {"a": "Who wrote?", "b": "Who was it for?", "town": "Where will they meet?", "day": "When?"}),
)


def _reading_paragraph(rng: random.Random, world: World) -> str:
    template, questions = rng.choice(_READING_EVENTS)
    a, b = rng.sample(world.people, 2)
    slots = {"a": a.name, "b": b.name, "day": rng.choice(DAYS), "month": rng.choice(MONTHS),
             "town": rng.choice(world.towns), "place": rng.choice(PLACES), "food": rng.choice(FOODS),
             "price": str(rng.randint(2, 99)), "thing": _article(f"{rng.choice(COLORS)} {rng.choice(ITEMS)}")}
    asked = rng.sample(sorted(questions), rng.randint(2, len(questions)))
    lines = [template.format(**slots)]
    for slot in asked:
        answer = slots[slot] + (" coins" if slot == "price" else "")
        lines += [questions[slot], answer] if rng.random() < 0.7 else [f"{questions[slot]} {answer}."]
    return "\n".join(lines)


def _drill_paragraph(rng: random.Random, world: World) -> str:
    """A word drill, one pair a line: nouns and plurals, verbs and past tenses, opposites. Each
    line starts with a word, so words appear in the line-initial form an answer takes."""
    kind = rng.choice(("plural", "past", "opposite"))
    if kind == "plural":
        nouns = rng.sample(tuple(IRREGULAR_PLURALS) + REGULAR_NOUNS, 5)
        pairs, heading = [(n, _plural(n)) for n in nouns], rng.choice(("One and many:", "Plurals:"))
    elif kind == "past":
        pairs = [(v.base, v.past) for v in rng.sample(world.verbs, 5)]
        heading = rng.choice(("Now and before:", "Past tenses:"))
    else:
        pairs = [rng.choice((x, (x[1], x[0]))) for x in rng.sample(ANTONYMS, 5)]
        heading = rng.choice(("Opposites:", "Word and opposite:"))
    sep = rng.choice((": ", " - ", "\n"))
    return "\n".join([heading, *(f"{x}{sep}{y}" for x, y in pairs)])


def _chunks(items: Sequence, rng: random.Random, low: int = 3, high: int = 6) -> list[list]:
    items = list(items)
    rng.shuffle(items)
    out, i = [], 0
    while i < len(items):
        k = rng.randint(low, high)
        out.append(items[i:i + k])
        i += k
    return out


def _coverage_paragraphs(rng: random.Random, world: World, factory: _SmsFactory, passes: int = 3) -> list[str]:
    """Every fact of every family, in canonical and varied form, several times over."""
    paragraphs: list[str] = []
    nouns = tuple(IRREGULAR_PLURALS) + REGULAR_NOUNS
    for _ in range(passes):
        paragraphs += [_person_paragraph(rng, world, p, canonical=True) for p in world.people]
        paragraphs += [_facts_paragraph(rng, world, "antonym", c, True) for c in _chunks(ANTONYMS, rng)]
        paragraphs += [_facts_paragraph(rng, world, "plural", c, True) for c in _chunks(nouns, rng)]
        paragraphs += [_facts_paragraph(rng, world, "category", c, True) for c in _chunks(list(world.category_of), rng)]
        paragraphs += [_facts_paragraph(rng, world, "verb", c, True) for c in _chunks(world.verbs, rng)]
        paragraphs += [_sequence_coverage(kind) for kind in SEQUENCES]
        paragraphs += [_category_group_paragraph(rng, cat) for cat in CATEGORIES]
        paragraphs += _sms_coverage(rng, world, factory)
    return paragraphs


# Of the filler paragraphs, the share that are reading notes or word drills: what makes copying from
# the context pay. With less of it (none before), the default run's model never learned to copy: a
# story's repeated protagonist cost as many nats as its first mention, and the instruction model
# answered held-out questions with answers it had memorised from its training records.
_READING_SHARE = 0.2


def _random_paragraph(rng: random.Random, world: World, factory: _SmsFactory) -> str:
    # Weights favour stories and messages; fact paragraphs keep reinforcing the coverage passes.
    roll = rng.random()
    nouns = tuple(IRREGULAR_PLURALS) + REGULAR_NOUNS
    if rng.random() < _READING_SHARE:
        return _reading_paragraph(rng, world) if rng.random() < 0.7 else _drill_paragraph(rng, world)
    if roll < 0.14:
        return _story_paragraph(rng, world)
    if roll < 0.18:
        return _market_paragraph(rng, world)
    if roll < 0.30:
        return _sms_paragraph(rng, world, factory)
    if roll < 0.49:
        return _sms_story_paragraph(rng, world, factory)
    if roll < 0.52:
        return _scam_guide_paragraph(rng, world, rng.sample(SPAM_LINES, 3), rng.sample(SCAM_SENDERS, 2))
    if roll < 0.53:
        return _gains_paragraph(rng, rng.sample(GAINS, 3))
    if roll < 0.54:
        return _friendly_guide_paragraph(rng, world, rng.sample(HAM_LINES, 3), rng.sample(factory.legit_senders, 2))
    if roll < 0.59:
        return _dialogue_paragraph(rng, world)
    if roll < 0.67:
        return _person_paragraph(rng, world, rng.choice(world.people), canonical=False)
    if roll < 0.74:
        return _facts_paragraph(rng, world, "antonym", rng.sample(ANTONYMS, 4), False)
    if roll < 0.80:
        return _facts_paragraph(rng, world, "plural", rng.sample(nouns, 4), False)
    if roll < 0.87:
        return _facts_paragraph(rng, world, "category", rng.sample(list(world.category_of), 4), False)
    if roll < 0.95:
        return _facts_paragraph(rng, world, "verb", rng.sample(world.verbs, 3), False)
    return _sequence_paragraph(rng, rng.choice(tuple(SEQUENCES)))


def generate_corpus(seed: int, target_bytes: int = 1_200_000) -> str:
    """At least `target_bytes` of world prose, facts, SMS-style messages and dialogues, blank-line separated."""
    world = _build_world(seed)
    # generate_sms draws its messages one after another, so its first N are the same for any
    # n_messages: the corpus avoids the texts of every labelled set of up to _AVOIDED_SMS messages.
    factory = _SmsFactory(world, frozenset(text for _, text in generate_sms(seed, _AVOIDED_SMS)))
    rng = _rng(seed, "corpus")
    paragraphs = _coverage_paragraphs(rng, world, factory)
    size = sum(len(p.encode("utf-8")) + 2 for p in paragraphs)
    while size < target_bytes:
        p = _random_paragraph(rng, world, factory)
        paragraphs.append(p)
        size += len(p.encode("utf-8")) + 2
    # Interleave coverage and filler so no region of the corpus is a monotone fact list.
    rng.shuffle(paragraphs)
    return "\n\n".join(paragraphs) + "\n"


# ---------------------------------------------------------------------------
# Instruction data.
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Example:
    family: str
    instruction: str
    input: str
    output: str
    subject: str

    @property
    def key(self) -> tuple[str, str]:
        return self.instruction, self.input

    def record(self) -> dict[str, str]:
        return {"instruction": self.instruction, "input": self.input, "output": self.output}


def _ask(rng: random.Random, inline: Sequence[str], with_input: Sequence[str], value: str) -> tuple[str, str]:
    """Either put the value inside the instruction or pass it as the record's input."""
    options = [(t.format(x=value), "") for t in inline] + [(t, value) for t in with_input]
    return rng.choice(options)


def _ex_antonym(rng: random.Random, world: World, pools: Pools) -> _Example:
    a, b = rng.choice(pools.antonyms)
    word, answer = (a, b) if rng.random() < 0.5 else (b, a)
    instruction, inp = _ask(rng, (
        "What is the opposite of '{x}'?", "Give an antonym for '{x}'.",
        "Fill in the blank: the opposite of {x} is ___.", "Which word means the opposite of '{x}'?",
    ), (
        "Give the antonym of the following word.", "Write the opposite of the given word.",
        "Provide a word that means the opposite of the input.",
    ), word)
    return _Example("antonym", instruction, inp, answer, word)


def _ex_plural(rng: random.Random, world: World, pools: Pools) -> _Example:
    noun = rng.choice(pools.nouns)
    instruction, inp = _ask(rng, (
        "What is the plural of '{x}'?", "Write the plural of '{x}'.", "Fill in the blank: one {x}, two ___.",
    ), (
        "Give the plural form of the word.", "Convert the noun to its plural form.",
        "Write the plural of the given noun.",
    ), noun)
    return _Example("plural", instruction, inp, _plural(noun), noun)


def _ex_category(rng: random.Random, world: World, pools: Pools) -> _Example:
    word = rng.choice(pools.category_words)
    cat = world.category_of[word]
    if rng.random() < 0.25:
        # Multiple choice: the right category plus two distractors, in random order.
        options = [cat] + rng.sample([c for c in CATEGORIES if c != cat], 2)
        rng.shuffle(options)
        instruction = f"Which category does '{word}' belong to: {options[0]}, {options[1]}, or {options[2]}?"
        return _Example("category", instruction, "", cat, word)
    instruction, inp = _ask(rng, (
        "Which category does '{x}' belong to?", "What kind of thing is '{x}'?",
        "Name the category of the word '{x}'.",
    ), (
        "Name the category of the given word.", "Classify the word into its category.",
        "Which group does this word belong to?",
    ), word)
    return _Example("category", instruction, inp, cat, word)


def _ex_lives(rng: random.Random, world: World, pools: Pools) -> _Example:
    p = rng.choice(pools.people)
    instruction, inp = _ask(rng, (
        "Where does {x} live?", "In which town does {x} live?", "Which town is home to {x}?",
        "Name the town where {x} lives.",
    ), ("Answer the question.",), p.name)
    if inp:
        inp = f"Where does {p.name} live?"
    return _Example("lives", instruction, inp, p.town, p.name)


def _ex_job(rng: random.Random, world: World, pools: Pools) -> _Example:
    p = rng.choice(pools.people)
    instruction, inp = _ask(rng, (
        "What is {x}'s job?", "What does {x} do for a living?", "What work does {x} do?",
        "Name the job of {x}.",
    ), ("Answer the question.",), p.name)
    if inp:
        inp = f"What is {p.name}'s job?"
    return _Example("job", instruction, inp, p.job, p.name)


_EXTRACTION_TEMPLATES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # (sentence, the slots a question may ask about); every sentence holds at most one of each slot.
    ("The {color} {item} costs {price} at the {street} market.", ("price",)),
    ("On {day}, {name} bought a {color} {item} for {price} in {town}.", ("price", "name", "day", "town")),
    ("{name} paid {price} for a {color} {item} on {day}.", ("price", "name", "day")),
    ("At the {town} fair on {day}, {name} sold a {color} {item} for {price}.", ("price", "name", "day", "town")),
    ("Last {day}, {name} found a {color} {item} priced at {price} near {street}.", ("price", "name", "day")),
    ("A {color} {item} was {price} when {name} checked on {day}.", ("price", "name", "day")),
    ("{name} will meet a friend in {town} on {day}.", ("name", "day", "town")),
    ("The bus to {town} leaves every {day} and a ticket is {price}.", ("price", "day", "town")),
    ("{name} says the {item} in {town} is cheaper on {day}.", ("name", "day", "town")),
)

_EXTRACTION_QUESTIONS: dict[str, tuple[str, ...]] = {
    "price": ("What is the price mentioned in the sentence?", "Extract the price from the sentence.",
              "Copy the price from the text.", "How much money does the sentence mention?"),
    "name": ("Who is mentioned in the sentence?", "Extract the person's name from the sentence.",
             "Which person does the sentence talk about?"),
    "day": ("Which day of the week is mentioned?", "Extract the day from the sentence.",
            "On which day does this happen?"),
    "town": ("Which town is mentioned in the sentence?", "Extract the name of the town.",
             "Copy the town name from the text."),
}


def _ex_extraction(rng: random.Random, world: World, pools: Pools) -> _Example:
    template, targets = rng.choice(_EXTRACTION_TEMPLATES)
    target = rng.choice(targets)
    values = {
        "color": rng.choice(COLORS), "item": rng.choice(pools.items), "price": f"{rng.randint(2, 99)} coins",
        "street": rng.choice(STREETS), "day": rng.choice(DAYS), "name": rng.choice(pools.people).name,
        "town": rng.choice(world.towns),
    }
    sentence = template.format(**values)
    return _Example("extraction", rng.choice(_EXTRACTION_QUESTIONS[target]), sentence, values[target], target)


def _ex_sequence(rng: random.Random, world: World, pools: Pools) -> _Example:
    kind = rng.choice(tuple(SEQUENCES))
    query = rng.choice([q for q in pools.sequences if q.kind == kind])
    shown = query.shown()
    if query.length == 1:
        instruction, inp = _ask(rng, (
            f"What {kind} comes after {{x}}?", f"Which {kind} follows {{x}}?",
            f"Name the {kind} that comes right after {{x}}.",
        ), (f"What comes after this {kind}?", f"Give the next {kind}."), shown[0])
    else:
        instruction = rng.choice(("What comes next in the sequence?", "Continue the sequence with the next item.",
                                  "Give the next item in this list.", "Which word should come next?"))
        inp = ", ".join(shown)
    return _Example("sequence", instruction, inp, query.answer(), kind)


def _ex_past_tense(rng: random.Random, world: World, pools: Pools) -> _Example:
    verb = rng.choice(pools.verbs)
    if rng.random() < 0.35:
        instruction, inp = _ask(rng, ("What is the past tense of '{x}'?", "Write the simple past of '{x}'."),
                                ("Give the past tense form of the verb.", "Write the past tense of the given verb."),
                                verb.base)
        return _Example("past_tense", instruction, inp, verb.past, verb.base)
    present, past = _verb_sentences(rng, world, verb, pools.people)
    instruction = rng.choice(("Rewrite the sentence in the past tense.", "Change the sentence to the past tense.",
                              "Convert this sentence to past tense.", "Put the following sentence into the past tense."))
    return _Example("past_tense", instruction, present, past, verb.base)


def _ex_spam(rng: random.Random, world: World, pools: Pools) -> _Example:
    label = "spam" if rng.random() < 0.5 else "ham"
    text = _SmsFactory(world).labelled(rng, label)
    instruction = rng.choice(("Is the following text message spam or ham?", "Classify the SMS as 'spam' or 'ham'.",
                              "Label this message as spam or ham.",
                              "Decide whether this message is spam or ham. Answer with one word."))
    return _Example("spam", instruction, text, label, label)


_FAMILIES: dict[str, Callable[[random.Random, World, Pools], _Example]] = {
    "antonym": _ex_antonym,
    "plural": _ex_plural,
    "category": _ex_category,
    "lives": _ex_lives,
    "job": _ex_job,
    "extraction": _ex_extraction,
    "sequence": _ex_sequence,
    "past_tense": _ex_past_tense,
    "spam": _ex_spam,
}


def _generate_split(rng: random.Random, world: World, pools: Pools, n: int,
                    banned: set[tuple[str, str]], seen: set[tuple[str, str]]) -> list[_Example]:
    """n examples spread evenly over the families, never using a banned key, avoiding repeats when possible."""
    families = list(_FAMILIES)
    rng.shuffle(families)
    examples: list[_Example] = []
    for i in range(n):
        make = _FAMILIES[families[i % len(families)]]
        chosen: _Example | None = None
        for _ in range(40):
            candidate = make(rng, world, pools)
            if candidate.key in banned:
                continue
            chosen = candidate
            if candidate.key not in seen:
                break
        if chosen is None:
            raise RuntimeError(f"could not draw a held-out {families[i % len(families)]} example")
        seen.add(chosen.key)
        examples.append(chosen)
    rng.shuffle(examples)
    return examples


def _generate_examples(seed: int, n_train: int = 1700, n_test: int = 200, n_val: int = 100,
                       purpose: str = "instructions") -> list[_Example]:
    """Train examples from the train pools, then test and validation examples from the held-out
    pools; `purpose` names the random stream (each dataset draws its questions from its own)."""
    world = _build_world(seed)
    rng = _rng(seed, purpose)
    train = _generate_split(rng, world, world.train, n_train, banned=set(), seen=set())
    train_keys = {e.key for e in train}
    heldout_seen: set[tuple[str, str]] = set()
    test = _generate_split(rng, world, world.heldout, n_test, train_keys, heldout_seen)
    val = _generate_split(rng, world, world.heldout, n_val, train_keys, heldout_seen)
    return train + test + val


def generate_instructions(seed: int, n_train: int = 1700, n_test: int = 200,
                          n_val: int = 100) -> list[dict[str, str]]:
    """Alpaca-style records: n_train train, then n_test test and n_val validation records on held-out items."""
    return [e.record() for e in _generate_examples(seed, n_train, n_test, n_val)]


def instruction_families(seed: int, n_train: int = 1700, n_test: int = 200,
                         n_val: int = 100) -> dict[tuple[str, str], str]:
    """The family (antonym, plural, lives, ...) of each record generate_instructions() makes with
    the same arguments, by (instruction, input): what evaluate splits exact match by."""
    return {e.key: e.family for e in _generate_examples(seed, n_train, n_test, n_val)}


# ---------------------------------------------------------------------------
# Preference data.
# ---------------------------------------------------------------------------

# The property the built-in preference set teaches, and that preference_property() checks in a
# generated reply: courtesy. A chosen response is the instruction set's answer followed by one of
# COURTEOUS_CLOSINGS; a rejected one is the same answer, either bare (what the instruction model
# learned to say, so preference tuning must teach it to go on rather than stop) or followed by one
# of DISMISSIVE_REMARKS (so it learns which way to go on). The closings are made of words the
# corpus uses, so they cost few tokens of the built-in tokenizer; no instruction output holds any
# of these sentences, so the instruction model starts near 0 %.
COURTEOUS_CLOSINGS: tuple[str, ...] = ("Thanks for asking!", "I hope that helps.", "Happy to help!")
DISMISSIVE_REMARKS: tuple[str, ...] = ("Everyone knows that.", "Stop asking me easy things.",
                                       "Work it out yourself next time.")
# Share of rejected responses that are the bare answer (the rest end with a dismissive remark).
_BARE_SHARE = 0.5


def _as_sentence(answer: str) -> str:
    """The answer with a full stop, unless it ends in one already ("cold" -> "cold.")."""
    return answer if answer.endswith((".", "!", "?")) else answer + "."


def _preference_record(rng: random.Random, example: _Example) -> dict[str, str]:
    answer = _as_sentence(example.output)
    chosen = f"{answer} {rng.choice(COURTEOUS_CLOSINGS)}"
    if rng.random() < _BARE_SHARE:
        rejected = example.output
    else:
        rejected = f"{answer} {rng.choice(DISMISSIVE_REMARKS)}"
    return {"instruction": example.instruction, "input": example.input, "chosen": chosen, "rejected": rejected}


def generate_preferences(seed: int, n_train: int = 850, n_test: int = 100, n_val: int = 50) -> list[dict[str, str]]:
    """Preference records {instruction, input, chosen, rejected}: n_train on the world's train
    items, then n_test test and n_val validation records on held-out items (no test or validation
    prompt, and no word or person a knowledge question asks about, is in the train records), in
    the file order the 85/10/5 split reads them. The questions are the instruction set's families,
    drawn afresh from their own random stream; the responses differ in courtesy only (see
    COURTEOUS_CLOSINGS), which preference_property() checks."""
    rng = _rng(seed, "preference responses")
    return [_preference_record(rng, e) for e in _generate_examples(seed, n_train, n_test, n_val, "preferences")]


def preference_property(record: Mapping[str, str], response: str) -> bool:
    """Whether a generated reply to a built-in preference record is courteous, the property its
    chosen responses have and its rejected ones lack: the reply holds one of COURTEOUS_CLOSINGS
    after some answer text and none of DISMISSIVE_REMARKS (whitespace runs count as one space, so
    a tokenizer's spacing does not matter; text after the closing, as when generation runs on to
    its token limit, is allowed).

    `record` is the preference record (its `instruction` and `input`) the reply answers; courtesy
    does not depend on the question, so only the reply is read, but evaluation calls the check per
    record so that a property that does (a correct fact) fits the same call. Every chosen response
    of generate_preferences() has the property and no rejected one has it (a test checks).
    """
    text = " ".join(response.split())
    if any(remark in text for remark in DISMISSIVE_REMARKS):
        return False
    return any(text.find(closing) > 0 for closing in COURTEOUS_CLOSINGS)
