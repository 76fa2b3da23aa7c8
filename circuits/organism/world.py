"""The fixed toy world: every entity the organism's corpus can mention.

Everything here is a plain constant so that the corpus, the tokenizer and the evaluations agree on one world.
Every entry is a single word, so that it becomes a single token (see :mod:`circuits.organism.tokenizer`).

The split of names into *IOI-training* and *IOI-held-out* names lives here too: two held-out names never occur
together in a training IOI sentence (phases 1-4 use no held-out name in IOI at all; phase 5 uses each beside a
training name), and held-out names occur in every other family (stories, induction spans, pronouns, facts about
people). IOI is evaluated on pairs of two held-out names, so it tests the role, not memorised name pairs.
"""

from __future__ import annotations

MALE_NAMES: tuple[str, ...] = (
    "John", "James", "Robert", "Michael", "William", "David", "Richard", "Joseph", "Thomas", "Charles",
    "Daniel", "Matthew", "Anthony", "Mark", "Paul", "Steven", "Andrew", "Kenneth", "Joshua", "Kevin",
    "Brian", "George", "Edward", "Ronald", "Timothy", "Jason", "Jeffrey", "Ryan", "Jacob", "Gary",
    "Nicholas", "Eric", "Jonathan", "Stephen", "Larry", "Justin", "Scott", "Brandon", "Benjamin", "Samuel",
    "Frank", "Gregory", "Raymond", "Alexander", "Patrick", "Jack", "Dennis", "Jerry", "Tyler", "Aaron",
    "Henry", "Adam", "Peter", "Nathan", "Zachary", "Douglas", "Harold", "Carl", "Arthur", "Roger",
)

FEMALE_NAMES: tuple[str, ...] = (
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah", "Karen",
    "Nancy", "Lisa", "Betty", "Margaret", "Sandra", "Ashley", "Kimberly", "Emily", "Donna", "Michelle",
    "Dorothy", "Carol", "Amanda", "Melissa", "Deborah", "Stephanie", "Rebecca", "Sharon", "Laura", "Cynthia",
    "Kathleen", "Amy", "Angela", "Shirley", "Anna", "Brenda", "Pamela", "Emma", "Nicole", "Helen",
    "Samantha", "Katherine", "Christine", "Debra", "Rachel", "Carolyn", "Janet", "Catherine", "Maria", "Heather",
    "Diane", "Ruth", "Julie", "Olivia", "Joyce", "Virginia", "Victoria", "Kelly", "Lauren", "Christina",
)

NAMES: tuple[str, ...] = MALE_NAMES + FEMALE_NAMES

#: Every 5th name of each gender is an IOI-held-out name (12 male + 12 female): no training IOI sentence has two.
IOI_HELDOUT_NAMES: tuple[str, ...] = MALE_NAMES[::5] + FEMALE_NAMES[::5]
IOI_TRAIN_NAMES: tuple[str, ...] = tuple(n for n in NAMES if n not in IOI_HELDOUT_NAMES)

PLACES: tuple[str, ...] = (
    "store", "park", "school", "market", "library", "beach", "garden", "station", "hospital", "office",
    "restaurant", "cafe", "museum", "church", "zoo", "farm", "bank", "river", "forest", "hotel",
)

OBJECTS: tuple[str, ...] = (
    "drink", "book", "ball", "bag", "apple", "ring", "letter", "key", "gift", "flower",
    "pen", "cup", "hat", "box", "card", "cake", "coin", "map", "phone", "kite",
)

ADJECTIVES: tuple[str, ...] = (
    "big", "small", "red", "blue", "green", "old", "new", "warm", "cold", "bright",
    "quiet", "loud", "happy", "sad", "long", "short", "strange", "lovely", "dark", "busy",
)

#: (country, capital, four other cities). Real-world facts, so that the same prompts make sense on GPT-2.
COUNTRIES: tuple[tuple[str, str, tuple[str, str, str, str]], ...] = (
    ("France", "Paris", ("Lyon", "Marseille", "Nice", "Toulouse")),
    ("Germany", "Berlin", ("Munich", "Hamburg", "Cologne", "Frankfurt")),
    ("Italy", "Rome", ("Milan", "Naples", "Turin", "Florence")),
    ("Spain", "Madrid", ("Barcelona", "Seville", "Valencia", "Bilbao")),
    ("Japan", "Tokyo", ("Osaka", "Kyoto", "Nagoya", "Sapporo")),
    ("England", "London", ("Manchester", "Liverpool", "Leeds", "Bristol")),
    ("China", "Beijing", ("Shanghai", "Wuhan", "Chengdu", "Nanjing")),
    ("India", "Delhi", ("Mumbai", "Chennai", "Kolkata", "Pune")),
    ("Brazil", "Brasilia", ("Recife", "Salvador", "Fortaleza", "Manaus")),
    ("Canada", "Ottawa", ("Toronto", "Montreal", "Vancouver", "Calgary")),
    ("Australia", "Canberra", ("Sydney", "Melbourne", "Perth", "Adelaide")),
    ("Egypt", "Cairo", ("Alexandria", "Giza", "Luxor", "Aswan")),
    ("Turkey", "Ankara", ("Istanbul", "Izmir", "Bursa", "Antalya")),
    ("Poland", "Warsaw", ("Krakow", "Gdansk", "Poznan", "Wroclaw")),
    ("Sweden", "Stockholm", ("Gothenburg", "Malmo", "Uppsala", "Lund")),
    ("Netherlands", "Amsterdam", ("Rotterdam", "Utrecht", "Eindhoven", "Groningen")),
    ("Portugal", "Lisbon", ("Porto", "Braga", "Coimbra", "Faro")),
    ("Greece", "Athens", ("Thessaloniki", "Patras", "Heraklion", "Larissa")),
    ("Kenya", "Nairobi", ("Mombasa", "Kisumu", "Nakuru", "Eldoret")),
    ("Korea", "Seoul", ("Busan", "Incheon", "Daegu", "Daejeon")),
    ("Norway", "Oslo", ("Bergen", "Trondheim", "Stavanger", "Tromso")),
    ("Austria", "Vienna", ("Salzburg", "Graz", "Linz", "Innsbruck")),
    ("Russia", "Moscow", ("Kazan", "Samara", "Omsk", "Novosibirsk")),
    ("Chile", "Santiago", ("Valparaiso", "Concepcion", "Antofagasta", "Temuco")),
)

COUNTRY_OF: dict[str, str] = {}
CAPITAL_OF: dict[str, str] = {}
for _country, _capital, _cities in COUNTRIES:
    CAPITAL_OF[_country] = _capital
    COUNTRY_OF[_capital] = _country
    for _city in _cities:
        COUNTRY_OF[_city] = _country

#: Non-capital cities, in a fixed order.
CITIES: tuple[str, ...] = tuple(c for _, _, cities in COUNTRIES for c in cities)
#: Cities whose two-hop question ("The capital of the country containing X is") never occurs in training:
#: the second city of every country (24 of 96). Their one-hop facts do occur.
TWO_HOP_HELDOUT_CITIES: tuple[str, ...] = tuple(cities[1] for _, _, cities in COUNTRIES)
TWO_HOP_TRAIN_CITIES: tuple[str, ...] = tuple(c for c in CITIES if c not in TWO_HOP_HELDOUT_CITIES)

DAYS: tuple[str, ...] = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS: tuple[str, ...] = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)
NUMBER_WORDS: tuple[str, ...] = (
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
    "twenty",
)
#: name of each successor sequence, its items, and whether it wraps around (Sunday → Monday).
SEQUENCES: dict[str, tuple[tuple[str, ...], bool]] = {
    "days": (DAYS, True),
    "months": (MONTHS, True),
    "numbers": (NUMBER_WORDS, False),
}

#: Centuries for greater-than ("the year 1732" is tokenized " 17" + "32").
CENTURIES: tuple[str, ...] = ("11", "12", "13", "14", "15", "16", "17", "18", "19")
TWO_DIGITS: tuple[str, ...] = tuple(f"{i:02d}" for i in range(100))
EVENTS: tuple[str, ...] = (
    "war", "reign", "drought", "expedition", "journey", "festival", "strike", "famine", "voyage", "project",
)


def gender_of(name: str) -> str:
    """'male' or 'female' for a name of the world; raises KeyError for an unknown name."""
    if name in MALE_NAMES:
        return "male"
    if name in FEMALE_NAMES:
        return "female"
    raise KeyError(name)
