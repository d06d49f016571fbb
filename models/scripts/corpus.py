"""Generates the training corpora and the held-out / out-of-domain evaluation sets.

Every example is (prompt, answer, category). Held-out in-domain examples use value combinations
that never occur in training, and half of them also a prompt template that never occurs in training.
Output (JSON lines) goes to models/.work/<model>/{train,heldout}.jsonl and models/.work/ood.jsonl.
"""
from __future__ import annotations

import csv
import json
import os
import random
import sys
from pathlib import Path

from common import MODELS_DIR, OUT_DIR, WORK_DIR

# The MMLU and GSM8K prompts of the routing evaluation data. The sampled probes are committed as
# models/ood-probes.jsonl, so the pipeline runs without this directory (it then reuses that file).
ROUTING_EVAL = Path(os.environ.get("TIERGATE_ROUTING_EVAL", "/work/shared/routing-eval"))
COMMITTED_PROBES = MODELS_DIR / "ood-probes.jsonl"

# ---------------------------------------------------------------- helpers


class Split:
    """Collects train and held-out examples of one category."""

    def __init__(self, category: str):
        self.category = category
        self.train: list[tuple[str, str, str]] = []
        self.heldout: list[tuple[str, str, str]] = []

    def add(self, split: str, prompt: str, answer: str) -> None:
        getattr(self, split).append((prompt, answer, self.category))


def split_values(rng: random.Random, values: list, heldout_fraction: float):
    values = list(values)
    rng.shuffle(values)
    n = max(1, int(len(values) * heldout_fraction))
    return values[n:], values[:n]


def emit(rng, split: Split, train_tpl, heldout_tpl, train_vals, heldout_vals, make, n_train, n_heldout):
    """make(template, value) -> (prompt, answer). Held-out: unseen values, half with unseen templates."""
    for _ in range(n_train):
        p, a = make(rng.choice(train_tpl), rng.choice(train_vals))
        split.add("train", p, a)
    for i in range(n_heldout):
        tpl = rng.choice(heldout_tpl if (i % 2 == 0 and heldout_tpl) else train_tpl)
        p, a = make(tpl, rng.choice(heldout_vals))
        split.add("heldout", p, a)


PREFIXES = ["please ", "hey ", "ok ", "hey, ", "quick question: ", "hi, "]
QUESTION_PREFIXES = ["tell me ", "can you tell me ", "do you know ", "i want to know "]


def surface_noise(rng: random.Random, prompt: str) -> str:
    """Variation seen in real requests: a polite or chatty prefix, capital first letter, trailing punctuation.
    The prefixes teach the model to key on the content rather than on the first words of a template."""
    r = rng.random()
    if r < 0.12:
        prompt = rng.choice(PREFIXES) + prompt
    elif r < 0.2 and prompt.split()[0] in ("what", "what's", "how", "which", "is"):
        prompt = rng.choice(QUESTION_PREFIXES) + prompt
    r = rng.random()
    if r < 0.15:
        prompt = prompt[0].upper() + prompt[1:]
    r = rng.random()
    if r < 0.1:
        prompt += "?" if prompt.split()[0] in QUESTION_WORDS else "."
    elif r < 0.15:
        prompt += rng.choice([" please", " thanks"])
    return prompt


QUESTION_WORDS = {"what", "what's", "how", "which", "who", "is", "are", "do", "does", "can", "when", "where", "why", "tell"}

# ---------------------------------------------------------------- edge domain

ROOMS = ["kitchen", "living room", "bedroom", "bathroom", "hallway", "garage", "office", "dining room",
         "garden", "basement", "guest room", "porch", "attic", "laundry room", "kids room", "study"]
SWITCHABLE = ["lights", "lamp", "fan", "heater", "tv", "radio", "air conditioner", "coffee maker",
              "speaker", "humidifier", "fireplace", "ceiling light", "floor lamp", "dehumidifier"]
OPENABLE = ["blinds", "curtains", "window", "shutters", "skylight"]
DOORS = ["front door", "back door", "garage door", "side door", "patio door", "gate"]


def device_commands(rng: random.Random) -> Split:
    s = Split("device")
    combos = [(r, d) for r in ROOMS for d in SWITCHABLE]
    tr, ho = split_values(rng, combos, 0.12)
    on_train = ["turn on the {r} {d}", "switch on the {r} {d}", "turn the {r} {d} on", "please turn on the {r} {d}",
                "can you turn on the {r} {d}", "power on the {r} {d}", "turn on the {d} in the {r}",
                "switch the {r} {d} on", "i want the {r} {d} on", "{r} {d} on"]
    on_held = ["could you turn on the {r} {d}", "please switch on the {d} in the {r}", "turn on the {r} {d} now"]
    verbs = [("on", "Turning on"), ("off", "Turning off")]

    def make(tpl, val, onoff):
        r, d = val
        word, ing = onoff
        return tpl.format(r=r, d=d).replace(" on", " " + word) if word == "off" else tpl.format(r=r, d=d), \
            f"{ing} the {r} {d}."

    for onoff in verbs:
        emit(rng, s, on_train, on_held, tr, ho, lambda t, v: make(t, v, onoff), 2600, 60)

    # dimming and brightness
    levels = list(range(5, 100, 5))
    combos = [(r, n) for r in ROOMS for n in levels]
    tr, ho = split_values(rng, combos, 0.12)
    emit(rng, s, ["dim the {r} lights to {n} percent", "set the {r} lights to {n} percent",
                  "dim the lights in the {r} to {n} percent", "{r} lights to {n} percent",
                  "set the brightness in the {r} to {n} percent"],
         ["please dim the {r} lights to {n} percent", "can you set the {r} lights to {n} percent"],
         tr, ho, lambda t, v: (t.format(r=v[0], n=v[1]), f"Setting the {v[0]} lights to {v[1]} percent."), 1500, 40)

    # thermostat
    combos = [(r, t) for r in ROOMS for t in range(14, 30)]
    tr, ho = split_values(rng, combos, 0.12)
    emit(rng, s, ["set the {r} temperature to {t} degrees", "set the {r} thermostat to {t} degrees",
                  "make the {r} {t} degrees", "heat the {r} to {t} degrees", "{r} temperature {t} degrees"],
         ["please set the {r} temperature to {t} degrees", "can you set the {r} thermostat to {t} degrees"],
         tr, ho, lambda t, v: (t.format(r=v[0], t=v[1]), f"Setting the {v[0]} temperature to {v[1]} degrees."), 1500, 40)

    # open / close
    combos = [(r, d) for r in ROOMS for d in OPENABLE]
    tr, ho = split_values(rng, combos, 0.12)
    for verb, ing in [("open", "Opening"), ("close", "Closing")]:
        emit(rng, s, [verb + " the {r} {d}", "please " + verb + " the {r} {d}", verb + " the {d} in the {r}",
                      "can you " + verb + " the {r} {d}"],
             ["could you " + verb + " the {r} {d}"],
             tr, ho, lambda t, v, ing=ing: (t.format(r=v[0], d=v[1]), f"{ing} the {v[0]} {v[1]}."), 700, 20)

    # locks (few values: held-out is template-only)
    for verb, ing in [("lock", "Locking"), ("unlock", "Unlocking")]:
        for _ in range(400):
            d = rng.choice(DOORS)
            t = rng.choice([verb + " the {d}", "please " + verb + " the {d}", "can you " + verb + " the {d}"])
            s.add("train", t.format(d=d), f"{ing} the {d}.")
        for d in DOORS[:3]:
            s.add("heldout", f"could you {verb} the {d}", f"{ing} the {d}.")

    # timers and alarms
    mins = list(range(1, 91))
    tr, ho = split_values(rng, mins, 0.12)
    emit(rng, s, ["set a timer for {n} minutes", "start a timer for {n} minutes", "timer for {n} minutes",
                  "set a {n} minute timer"], ["please set a timer for {n} minutes", "can you start a {n} minute timer"],
         tr, ho, lambda t, n: (t.format(n=n), f"Setting a timer for {n} minutes."), 1200, 30)
    times = [(h, ap) for h in range(1, 13) for ap in ("am", "pm")]
    tr, ho = split_values(rng, times, 0.15)
    emit(rng, s, ["set an alarm for {h} {ap}", "wake me up at {h} {ap}", "alarm at {h} {ap}"],
         ["please set an alarm for {h} {ap}", "can you wake me at {h} {ap}"],
         tr, ho, lambda t, v: (t.format(h=v[0], ap=v[1]), f"Setting an alarm for {v[0]} {v[1]}."), 800, 20)

    # volume
    vols = list(range(0, 101, 5))
    tr, ho = split_values(rng, vols, 0.15)
    emit(rng, s, ["set the volume to {n}", "volume {n}", "change the volume to {n}", "turn the volume to {n}"],
         ["please set the volume to {n}", "can you make the volume {n}"],
         tr, ho, lambda t, n: (t.format(n=n), f"Setting the volume to {n}."), 700, 20)
    return s


DECIMAL_UNITS = [  # (from singular, from plural, to plural, factor)
    ("kilometer", "kilometers", "meters", 1000), ("meter", "meters", "centimeters", 100),
    ("centimeter", "centimeters", "millimeters", 10), ("kilogram", "kilograms", "grams", 1000),
    ("liter", "liters", "milliliters", 1000), ("kilowatt", "kilowatts", "watts", 1000),
]
SMALL_TABLE_UNITS = [  # memorized tables for n = 1..12
    ("hour", "hours", "minutes", 60), ("minute", "minutes", "seconds", 60), ("day", "days", "hours", 24),
    ("week", "weeks", "days", 7), ("foot", "feet", "inches", 12), ("year", "years", "months", 12),
]
UNIT_TRAIN_TPL = ["convert {n} {a} to {b}", "how many {b} in {n} {a}", "how many {b} are in {n} {a}",
                  "{n} {a} in {b}", "what is {n} {a} in {b}", "{n} {a} to {b}"]
UNIT_HELD_TPL = ["please convert {n} {a} to {b}", "how many {b} is {n} {a}"]


def unit_name(sing, plur, n):
    return sing if n == 1 else plur


def unit_conversions(rng: random.Random) -> Split:
    s = Split("units")
    vals = [(u, n) for u in DECIMAL_UNITS for n in range(1, 200)]
    tr, ho = split_values(rng, vals, 0.1)

    def make(t, v):
        (sing, plur, to, f), n = v
        a = unit_name(sing, plur, n)
        return t.format(n=n, a=a, b=to), f"{n} {a} is {n * f} {to}."

    emit(rng, s, UNIT_TRAIN_TPL, UNIT_HELD_TPL, tr, ho, make, 5000, 80)
    for _ in range(2500):  # tables: every value is trained, so they are checked on unseen templates only
        (sing, plur, to, f), n = rng.choice(SMALL_TABLE_UNITS), rng.randint(1, 12)
        a = unit_name(sing, plur, n)
        s.add("train", rng.choice(UNIT_TRAIN_TPL).format(n=n, a=a, b=to), f"{n} {a} is {n * f} {to}.")
    for _ in range(30):
        (sing, plur, to, f), n = rng.choice(SMALL_TABLE_UNITS), rng.randint(1, 12)
        a = unit_name(sing, plur, n)
        s.add("heldout", rng.choice(UNIT_HELD_TPL).format(n=n, a=a, b=to), f"{n} {a} is {n * f} {to}.")
    return s


ARITH_OPS = {
    "plus": (["what is {a} plus {b}", "{a} plus {b}", "{a} + {b}", "what's {a} plus {b}", "add {a} and {b}",
              "calculate {a} plus {b}"], ["how much is {a} plus {b}", "what is {a} + {b}"]),
    "minus": (["what is {a} minus {b}", "{a} minus {b}", "{a} - {b}", "what's {a} minus {b}",
               "calculate {a} minus {b}"], ["how much is {a} minus {b}", "what is {a} - {b}"]),
    "times": (["what is {a} times {b}", "{a} times {b}", "{a} x {b}", "what's {a} times {b}",
               "multiply {a} by {b}", "calculate {a} times {b}"], ["how much is {a} times {b}", "what is {a} x {b}"]),
    "divided by": (["what is {a} divided by {b}", "{a} divided by {b}", "{a} / {b}", "divide {a} by {b}"],
                   ["how much is {a} divided by {b}", "what is {a} / {b}"]),
}


def arithmetic_pairs(op: str, big: bool):
    hi = 99 if big else 20
    if op == "plus":
        return [(a, b, a + b) for a in range(hi + 1) for b in range(hi + 1)]
    if op == "minus":
        return [(a, b, a - b) for a in range(hi + 1) for b in range(a + 1)]
    if op == "times":
        return [(a, b, a * b) for a in range(13) for b in range(13)]
    return [(a * b, b, a) for a in range(13) for b in range(1, 13)]


def small_arithmetic(rng: random.Random) -> Split:
    s = Split("arithmetic")
    for op, (train_tpl, held_tpl) in ARITH_OPS.items():
        tr, ho = split_values(rng, arithmetic_pairs(op, big=False), 0.08)
        emit(rng, s, train_tpl, held_tpl, tr, ho,
             lambda t, v, op=op: (t.format(a=v[0], b=v[1]), f"{v[0]} {op} {v[1]} is {v[2]}."), 2500, 40)
    return s


DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
MONTH_DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
FIXED_TIME_FACTS = [
    (["how many days are in a week", "how many days in a week", "days in a week"], "A week has 7 days."),
    (["how many hours are in a day", "how many hours in a day", "hours in a day"], "A day has 24 hours."),
    (["how many minutes are in an hour", "how many minutes in an hour", "minutes in an hour"], "An hour has 60 minutes."),
    (["how many seconds are in a minute", "how many seconds in a minute"], "A minute has 60 seconds."),
    (["how many months are in a year", "how many months in a year", "months in a year"], "A year has 12 months."),
    (["how many days are in a year", "how many days in a year"], "A year has 365 days, or 366 in a leap year."),
    (["how many weeks are in a year", "how many weeks in a year"], "A year has 52 weeks."),
]


def times_and_dates(rng: random.Random) -> Split:
    s = Split("time")
    for _ in range(1200):
        i = rng.randrange(7)
        t = rng.choice(["what day comes after {d}", "what day is after {d}", "which day follows {d}",
                        "what comes after {d}", "the day after {d}"])
        d = DAYS[i] if rng.random() < 0.3 else DAYS[i].lower()
        s.add("train", t.format(d=d), f"{DAYS[(i + 1) % 7]} comes after {DAYS[i]}.")
        j = rng.randrange(7)
        t = rng.choice(["what day comes before {d}", "what day is before {d}", "the day before {d}"])
        d = DAYS[j] if rng.random() < 0.3 else DAYS[j].lower()
        s.add("train", t.format(d=d), f"{DAYS[(j - 1) % 7]} comes before {DAYS[j]}.")
    for i in range(7):
        s.add("heldout", f"tell me the day after {DAYS[i].lower()}", f"{DAYS[(i + 1) % 7]} comes after {DAYS[i]}.")
    for _ in range(1200):
        i = rng.randrange(12)
        t = rng.choice(["what month comes after {m}", "what month is after {m}", "which month follows {m}",
                        "the month after {m}"])
        m = MONTHS[i] if rng.random() < 0.3 else MONTHS[i].lower()
        s.add("train", t.format(m=m), f"{MONTHS[(i + 1) % 12]} comes after {MONTHS[i]}.")
        j = rng.randrange(12)
        t = rng.choice(["how many days are in {m}", "how many days does {m} have", "days in {m}",
                        "how long is {m}"])
        m = MONTHS[j] if rng.random() < 0.3 else MONTHS[j].lower()
        ans = "February has 28 days, or 29 in a leap year." if j == 1 else f"{MONTHS[j]} has {MONTH_DAYS[j]} days."
        s.add("train", t.format(m=m), ans)
    for i in range(0, 12, 2):
        s.add("heldout", f"tell me the month after {MONTHS[i].lower()}", f"{MONTHS[(i + 1) % 12]} comes after {MONTHS[i]}.")
        ans = "February has 28 days, or 29 in a leap year." if i == 1 else f"{MONTHS[i]} has {MONTH_DAYS[i]} days."
        s.add("heldout", f"how many days does the month of {MONTHS[i].lower()} have", ans)
    for _ in range(200):
        qs, ans = rng.choice(FIXED_TIME_FACTS)
        s.add("train", rng.choice(qs), ans)
    # clock arithmetic on a 12-hour clock
    vals = [(h, t, ap) for h in range(1, 7) for t in range(1, 13) for ap in ("am", "pm")]
    tr, ho = split_values(rng, vals, 0.1)

    def clock(tpl, v):
        h, t, ap = v
        total = (t % 12) + h + (12 if ap == "pm" else 0)
        r, rap = total % 12 or 12, "am" if (total % 24) < 12 else "pm"
        unit = "hour" if h == 1 else "hours"
        return tpl.format(h=h, t=t, ap=ap, u=unit), f"{h} {unit} after {t} {ap} is {r} {rap}."

    emit(rng, s, ["what time is it {h} {u} after {t} {ap}", "what is {h} {u} after {t} {ap}",
                  "{h} {u} after {t} {ap}", "what time will it be {h} {u} after {t} {ap}"],
         ["tell me the time {h} {u} after {t} {ap}"], tr, ho, clock, 1500, 30)
    return s


GREETINGS = [
    (["hello", "hi", "hey", "hello there", "hi there"], ["hey there", "hiya"], "Hello! How can I help you?"),
    (["good morning", "morning"], ["good morning to you"], "Good morning! How can I help you?"),
    (["good afternoon"], ["good afternoon to you"], "Good afternoon! How can I help you?"),
    (["good evening"], ["good evening to you"], "Good evening! How can I help you?"),
    (["good night", "night night"], ["good night to you"], "Good night!"),
    (["thanks", "thank you", "thanks a lot", "thank you very much"], ["many thanks", "thanks so much"],
     "You're welcome."),
    (["bye", "goodbye", "see you", "see you later"], ["bye bye", "goodbye for now"], "Goodbye!"),
    (["how are you", "how are you doing", "how is it going"], ["how are you today"],
     "I'm running well, thanks. How can I help?"),
]

FAQ = {
    "edge": [
        (["what is tiergate", "what's tiergate", "tell me about tiergate", "explain tiergate", "what does tiergate do"],
         ["describe tiergate", "what is tiergate exactly"],
         "Tiergate is a gateway that answers requests on this device when it can and sends harder ones to a larger model."),
        (["who are you", "what are you", "what is your name", "introduce yourself"], ["tell me who you are"],
         "I am the small assistant model running on this tiergate edge node."),
        (["what can you do", "what can i ask you", "help", "what do you know"], ["what are you able to do"],
         "I can control devices, convert units, do small sums, and answer questions about days and dates."),
        (["what happens to hard questions", "what if you don't know the answer", "where do harder questions go"],
         ["what do you do with hard questions"],
         "Harder requests are forwarded to the regional model or to the cloud."),
        (["do you run locally", "are you running offline", "do you work offline", "are you online"],
         ["do you run on this device"], "Yes, I run locally on this device."),
        (["how big are you", "how many parameters do you have", "how large is your model"], ["what size are you"],
         "I am a tiny model with about one million parameters."),
        (["who made you", "who trained you", "who built you"], ["who created you"],
         "I was trained by the build script of the tiergate project."),
        (["is my data sent to the cloud", "do you send my data anywhere", "is this private"],
         ["does my data leave this device"],
         "Requests I can answer stay on this device; harder ones are forwarded upstream."),
    ],
}
FAQ["regional"] = [
    (q, h, a.replace("this device", "this regional node").replace(
        "I am the small assistant model running on this tiergate edge node.",
        "I am the regional assistant model of this tiergate deployment.").replace(
        "about one million parameters", "about four million parameters").replace(
        "Harder requests are forwarded to the regional model or to the cloud.",
        "Requests the regional model cannot answer are forwarded to the cloud.").replace(
        "I can control devices, convert units, do small sums, and answer questions about days and dates.",
        "I can do everything the edge model does, plus longer arithmetic, comparisons, definitions and short how-to answers."))
    for q, h, a in FAQ["edge"]
]


def fixed_qa(rng: random.Random, category: str, table, per_answer: int) -> Split:
    s = Split(category)
    for train_q, held_q, answer in table:
        for _ in range(per_answer):
            s.add("train", surface_noise(rng, rng.choice(train_q)), answer)
        for q in held_q:
            s.add("heldout", q, answer)
    return s


# ---------------------------------------------------------------- regional-only domain

NAMES = ["Ana", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Kira", "Liam", "Mei",
         "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sam", "Tara"]
ITEMS = ["apples", "books", "pencils", "marbles", "cookies", "stickers", "coins", "cards", "shells", "stamps"]


def long_arithmetic(rng: random.Random) -> Split:
    s = Split("long_arithmetic")
    for op in ("plus", "minus"):
        pairs = [(a, b, a + b if op == "plus" else a - b) for a in range(10, 100) for b in range(10, 100)
                 if op == "plus" or b <= a]
        train_tpl, held_tpl = ARITH_OPS[op]
        tr, ho = split_values(rng, pairs, 0.05)
        emit(rng, s, train_tpl, held_tpl, tr, ho,
             lambda t, v, op=op: (t.format(a=v[0], b=v[1]), f"{v[0]} {op} {v[1]} is {v[2]}."), 5000, 40)
    # two steps, worked out left to right
    triples = [(a, b, c) for a in range(1, 30) for b in range(1, 30) for c in range(1, 30) if a + b - c >= 0]
    tr, ho = split_values(rng, triples, 0.05)

    def two_step(t, v):
        a, b, c = v
        return t.format(a=a, b=b, c=c), f"{a} plus {b} is {a + b}, and {a + b} minus {c} is {a + b - c}."

    emit(rng, s, ["what is {a} plus {b} minus {c}", "{a} plus {b} minus {c}", "{a} + {b} - {c}",
                  "calculate {a} plus {b} minus {c}"], ["how much is {a} plus {b} minus {c}"],
         tr, ho, two_step, 3000, 40)
    triples = [(a, b, c) for a in range(2, 13) for b in range(2, 13) for c in range(1, 40)]
    tr, ho = split_values(rng, triples, 0.05)

    def mul_add(t, v):
        a, b, c = v
        return t.format(a=a, b=b, c=c), f"{a} times {b} is {a * b}, and {a * b} plus {c} is {a * b + c}."

    emit(rng, s, ["what is {a} times {b} plus {c}", "{a} times {b} plus {c}", "{a} x {b} + {c}",
                  "calculate {a} times {b} plus {c}"], ["how much is {a} times {b} plus {c}"],
         tr, ho, mul_add, 3000, 40)
    # word problems
    vals = [(n, it, a, b) for n in NAMES for it in ITEMS for a in range(2, 20) for b in range(1, 20)]
    tr, ho = split_values(rng, vals, 0.05)

    def buys(t, v):
        n, it, a, b = v
        return t.format(n=n, it=it, a=a, b=b), f"{n} has {a} plus {b}, which is {a + b} {it}."

    emit(rng, s, ["{n} has {a} {it} and gets {b} more. how many {it} does {n} have",
                  "{n} had {a} {it} and found {b} more. how many {it} does {n} have now"],
         ["if {n} has {a} {it} and buys {b} more, how many {it} does {n} have"], tr, ho, buys, 2500, 30)

    def gives(t, v):
        n, it, a, b = v
        a = a + b
        return t.format(n=n, it=it, a=a, b=b), f"{n} has {a} minus {b}, which is {a - b} {it}."

    emit(rng, s, ["{n} has {a} {it} and gives away {b}. how many {it} are left",
                  "{n} had {a} {it} and lost {b}. how many {it} does {n} have now"],
         ["if {n} has {a} {it} and gives {b} away, how many {it} are left"], tr, ho, gives, 2500, 30)
    return s


THINGS = [  # name, weight rank (bigger = heavier)
    ("a mouse", 1), ("a cat", 3), ("a dog", 4), ("a horse", 7), ("an elephant", 9), ("a whale", 10),
    ("a feather", 0), ("a brick", 2), ("a bicycle", 5), ("a car", 8), ("a piano", 6), ("a coin", 0.5),
]
SIZES = [("a grain of sand", 0), ("an ant", 1), ("a coin", 2), ("a football", 4), ("a chair", 5), ("a door", 6),
         ("a bus", 8), ("a house", 9), ("a mountain", 11), ("the moon", 12), ("the earth", 13), ("the sun", 14)]


def comparisons(rng: random.Random) -> Split:
    s = Split("comparison")
    pairs = [(a, b) for a in range(0, 1000, 7) for b in range(3, 1000, 11) if a != b]
    tr, ho = split_values(rng, pairs, 0.05)

    def bigger(t, v):
        a, b = v
        hi, lo = max(a, b), min(a, b)
        return t.format(a=a, b=b), f"{hi} is bigger than {lo}."

    emit(rng, s, ["which is bigger, {a} or {b}", "which is larger, {a} or {b}", "which number is bigger, {a} or {b}",
                  "what is bigger, {a} or {b}"], ["which one is bigger, {a} or {b}"], tr, ho, bigger, 3000, 40)

    def greater(t, v):
        a, b = v
        return t.format(a=a, b=b), (f"Yes, {a} is greater than {b}." if a > b else f"No, {a} is not greater than {b}.")

    emit(rng, s, ["is {a} greater than {b}", "is {a} bigger than {b}", "is {a} more than {b}"],
         ["is {a} larger than {b}"], tr, ho, greater, 2000, 30)
    for table, adj, tpls, held in [
        (THINGS, "heavier", ["which is heavier, {x} or {y}", "what weighs more, {x} or {y}"],
         ["which one is heavier, {x} or {y}"]),
        (SIZES, "bigger", ["which is bigger, {x} or {y}", "what is larger, {x} or {y}"],
         ["which one is bigger, {x} or {y}"]),
    ]:
        combos = [(x, y) for x in table for y in table if x[1] != y[1]]
        tr, ho = split_values(rng, combos, 0.1)

        def cmp(t, v, adj=adj):
            (x, wx), (y, wy) = v
            hi, lo = (x, y) if wx > wy else (y, x)
            return t.format(x=x, y=y), f"{hi[0].upper() + hi[1:]} is {adj} than {lo}."

        emit(rng, s, tpls, held, tr, ho, cmp, 1500, 20)
    return s


DEFINITIONS = [
    ("router", "a router", "A router is a device that forwards data packets between networks."),
    ("modem", "a modem", "A modem is a device that connects a home network to the internet provider."),
    ("thermostat", "a thermostat", "A thermostat is a device that keeps a room at a set temperature."),
    ("battery", "a battery", "A battery is a device that stores energy as chemical energy and releases it as electricity."),
    ("sensor", "a sensor", "A sensor is a device that measures something, such as heat, light or motion."),
    ("firmware", "firmware", "Firmware is the software built into a device that controls its hardware."),
    ("bandwidth", "bandwidth", "Bandwidth is the amount of data a connection can carry per second."),
    ("latency", "latency", "Latency is the delay between sending a request and getting the answer."),
    ("cache", "a cache", "A cache is a store of recent results kept close by so they can be reused quickly."),
    ("gateway", "a gateway", "A gateway is a node that connects one network or service to another."),
    ("protocol", "a protocol", "A protocol is a set of rules for how devices exchange messages."),
    ("server", "a server", "A server is a computer that provides a service to other computers."),
    ("algorithm", "an algorithm", "An algorithm is a step by step procedure for solving a problem."),
    ("password", "a password", "A password is a secret word or phrase that proves who you are."),
    ("photosynthesis", "photosynthesis", "Photosynthesis is how plants turn light, water and air into sugar and oxygen."),
    ("gravity", "gravity", "Gravity is the force that pulls objects with mass toward each other."),
    ("evaporation", "evaporation", "Evaporation is when a liquid turns into a gas, like water drying in the sun."),
    ("volcano", "a volcano", "A volcano is an opening in the ground where melted rock comes out."),
    ("planet", "a planet", "A planet is a large body that orbits a star."),
    ("atom", "an atom", "An atom is the smallest unit of a chemical element."),
    ("fraction", "a fraction", "A fraction is a part of a whole, written as one number over another."),
    ("prime number", "a prime number", "A prime number is a whole number above 1 that only divides by 1 and itself."),
    ("percentage", "a percentage", "A percentage is a number out of one hundred."),
    ("average", "an average", "An average is the sum of some numbers divided by how many numbers there are."),
    ("noun", "a noun", "A noun is a word that names a person, place or thing."),
    ("verb", "a verb", "A verb is a word that describes an action or a state."),
    ("recipe", "a recipe", "A recipe is a list of ingredients and steps for making a dish."),
    ("calendar", "a calendar", "A calendar is a table of the days, weeks and months of a year."),
    ("leap year", "a leap year", "A leap year is a year with 366 days, with an extra day in February."),
    ("time zone", "a time zone", "A time zone is a region that uses the same clock time."),
    ("kilowatt hour", "a kilowatt hour", "A kilowatt hour is the energy used by one kilowatt of power for one hour."),
    ("degree celsius", "a degree celsius", "A degree celsius is a unit of temperature where water freezes at 0 and boils at 100."),
    ("circuit breaker", "a circuit breaker", "A circuit breaker is a switch that cuts the power when too much current flows."),
    ("smart plug", "a smart plug", "A smart plug is a socket adapter that can switch a device on and off remotely."),
    ("wifi", "wifi", "Wifi is a way to connect devices to a network by radio instead of cables."),
    ("bluetooth", "bluetooth", "Bluetooth is a short range radio link between nearby devices."),
    ("cloud", "the cloud", "The cloud is computing power and storage rented from remote data centers."),
    ("language model", "a language model", "A language model is a program that predicts the next word of a text."),
    ("neural network", "a neural network", "A neural network is a model made of layers of simple units that learn from data."),
    ("encryption", "encryption", "Encryption is scrambling data so only someone with the key can read it."),
]
DEF_TRAIN_TPL = ["what is {a}", "define {t}", "what does {t} mean", "explain what {a} is", "what's {a}",
                 "give me the definition of {t}"]
DEF_HELD_TPL = ["can you explain what {a} is", "tell me what {a} is"]

HOWTO = [
    ("reset the router", "Unplug the router, wait ten seconds, plug it back in, and wait for the lights to settle."),
    ("boil an egg", "Put the egg in boiling water for about eight minutes, then cool it in cold water."),
    ("make tea", "Boil water, pour it over a tea bag, wait three to five minutes, then remove the bag."),
    ("save energy at home", "Turn off lights you are not using, lower the heating a little, and unplug idle chargers."),
    ("change a light bulb", "Switch off the power, let the bulb cool, unscrew it, and screw in the new one."),
    ("water a plant", "Pour water slowly at the base of the plant until the soil is moist but not soaked."),
    ("set up a new speaker", "Plug in the speaker, open the home app, and follow the steps to add a device."),
    ("clean a keyboard", "Unplug it, shake out the crumbs, and wipe the keys with a slightly damp cloth."),
    ("fall asleep faster", "Keep a regular bedtime, dim the lights, and put your phone away an hour before bed."),
    ("stay warm in winter", "Wear layers, close the curtains at night, and keep doors between rooms shut."),
    ("make a strong password", "Use a long phrase of several random words, and never reuse it on other sites."),
    ("cook rice", "Rinse one cup of rice, add two cups of water, boil, then simmer covered for fifteen minutes."),
    ("back up my photos", "Copy them to an external drive and to a second place, such as a cloud folder."),
    ("speed up my wifi", "Move the router to an open central spot, away from walls and other electronics."),
    ("fix a dripping tap", "Turn off the water supply, take the tap apart, and replace the worn washer."),
    ("remove a stain", "Blot it quickly, rinse with cold water, and wash with a little soap."),
    ("start running", "Begin with short easy runs mixed with walking, three times a week, and build up slowly."),
    ("learn a language", "Practice a little every day, learn common words first, and speak with others early."),
    ("pair my phone with the speaker", "Turn on bluetooth on the phone, hold the speaker's pair button, and pick it from the list."),
    ("lower my heating bill", "Lower the thermostat by one degree, seal drafts, and heat only the rooms you use."),
]
HOWTO_TRAIN_TPL = ["how do i {x}", "how can i {x}", "how to {x}", "what's the best way to {x}", "tell me how to {x}"]
HOWTO_HELD_TPL = ["what is the best way to {x}", "explain how to {x}"]


def knowledge(rng: random.Random) -> list[Split]:
    d = Split("definition")
    for t, a, text in DEFINITIONS:
        for _ in range(70):
            d.add("train", surface_noise(rng, rng.choice(DEF_TRAIN_TPL).format(t=t, a=a)), text)
        d.add("heldout", rng.choice(DEF_HELD_TPL).format(t=t, a=a), text)
    h = Split("howto")
    for x, text in HOWTO:
        for _ in range(90):
            h.add("train", surface_noise(rng, rng.choice(HOWTO_TRAIN_TPL).format(x=x)), text)
        h.add("heldout", rng.choice(HOWTO_HELD_TPL).format(x=x), text)
    return [d, h]


# ---------------------------------------------------------------- assembly


def edge_splits(rng: random.Random, faq_key: str) -> list[Split]:
    return [device_commands(rng), unit_conversions(rng), small_arithmetic(rng), times_and_dates(rng),
            fixed_qa(rng, "greeting", GREETINGS, 250), fixed_qa(rng, "faq", FAQ[faq_key], 250)]


def build(model: str, seed: int) -> tuple[list, list]:
    rng = random.Random(seed)
    splits = edge_splits(rng, model)
    if model == "regional":
        splits += [long_arithmetic(rng), comparisons(rng), *knowledge(rng)]
    train, held = [], []
    train_prompts = set()
    for s in splits:
        for p, a, c in s.train:
            if c not in ("greeting", "faq", "definition", "howto"):
                p = surface_noise(rng, p)
            train.append((p, a, c))
            train_prompts.add(p.lower())
        held.extend(s.heldout)
    # a held-out prompt must never appear in training, whatever the template made of it
    held = [h for h in held if h[0].lower() not in train_prompts]
    held = list(dict.fromkeys(held))
    rng.shuffle(train)
    return train, held


# ---------------------------------------------------------------- out-of-domain probes

OPEN_ENDED = [
    "write an essay about the causes of the first world war",
    "write a short story about a dragon who learns to paint",
    "explain the theory of general relativity in simple terms",
    "compose a poem about autumn leaves falling in the rain",
    "what are the main arguments for and against universal basic income",
    "summarize the plot of hamlet in three paragraphs",
    "describe the economic impact of the industrial revolution on european cities",
    "write a cover letter for a junior data analyst position",
    "what would happen if the moon disappeared tomorrow",
    "compare the philosophies of kant and hume on causation",
    "draft a marketing plan for a small coffee roastery",
    "explain how vaccines train the immune system",
    "translate this sentence into french: the weather is lovely today",
    "give me ten ideas for a birthday party for a twelve year old",
    "why did the roman empire fall",
    "explain the difference between stocks and bonds for a beginner investor",
    "write a limerick about a cat who loves jazz",
    "what is the meaning of life according to existentialism",
    "plan a three day itinerary for visiting kyoto",
    "describe the water cycle and its importance for agriculture",
]
CODE = [
    "write a python function that reverses a linked list",
    "implement quicksort in rust",
    "write a sql query that finds the top five customers by revenue",
    "fix this javascript: const x = [1,2,3].map(x => x * 2",
    "explain what a closure is in javascript with an example",
    "write a bash script that renames all .txt files to .md",
    "how do i center a div with css flexbox",
    "def fib(n): return n if n < 2 else fib(n-1) + fib(n-2)  # make this faster",
    "write a regular expression that matches an email address",
    "implement a binary search tree in c++ with insert and delete",
    "convert this json to yaml: {\"name\": \"tiergate\", \"tiers\": 3}",
    "write a dockerfile for a go web service",
    "what is the time complexity of merge sort and why",
    "write unit tests for a function that parses iso dates",
    "refactor this code to use async await: fetch(url).then(r => r.json())",
]


def ood_probes(seed: int, per_source: int = 60, max_chars: int = 400) -> list[tuple[str, str]]:
    """Out-of-domain prompts: MMLU and GSM8K prompts from the routing-eval data, plus open-ended and code
    requests. Long prompts are cut at max_chars (the probe is about the style of the text, and the models have a
    256-token context)."""
    rng = random.Random(seed)
    out = []
    csvs = [("mmlu-dev.csv", "mmlu"), ("gsm8k.csv", "gsm8k")]
    if not all((ROUTING_EVAL / name).exists() for name, _ in csvs):
        print(f"{ROUTING_EVAL} not found: using the committed {COMMITTED_PROBES.name}", file=sys.stderr)
        return [(r["prompt"], r["source"]) for r in map(json.loads, COMMITTED_PROBES.open())]
    for name, source in csvs:
        path = ROUTING_EVAL / name
        with path.open(newline="") as f:
            rows = [r["prompt"] for r in csv.DictReader(f)]
        for p in rng.sample(rows, per_source):
            out.append((p[:max_chars], source))
    out += [(p, "open_ended") for p in OPEN_ENDED] + [(p, "code") for p in CODE]
    return out


def write_jsonl(path: Path, rows, keys) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps(dict(zip(keys, r)), ensure_ascii=False) + "\n")


def main() -> None:
    from common import CONFIGS

    for name, cfg in CONFIGS.items():
        train, held = build(name, cfg.seed)
        write_jsonl(cfg.work_dir / "train.jsonl", train, ("prompt", "answer", "category"))
        write_jsonl(cfg.work_dir / "heldout.jsonl", held, ("prompt", "answer", "category"))
        print(f"{name}: {len(train)} training examples, {len(held)} held-out")
    ood = ood_probes(seed=99)
    write_jsonl(WORK_DIR / "ood.jsonl", ood, ("prompt", "source"))
    if OUT_DIR == MODELS_DIR:
        write_jsonl(COMMITTED_PROBES, ood, ("prompt", "source"))
    print(f"out-of-domain probes: {len(ood)}")


if __name__ == "__main__":
    main()
