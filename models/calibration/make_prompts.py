"""Writes models/calibration/prompts.jsonl: the labelled prompts that calibrate the edge model's
early-exit gate (`tiergate eval confidence`).

Two kinds of prompt:
- `attempt`: short questions with a known answer (capitals, arithmetic, facts, authors, years,
  opposites), from easy to ones a 135M model usually gets wrong. Graded by `answers`: the answer is
  right when any of them appears in it as a whole word (case-insensitive).
- `must_not_attempt`: prompts a small edge model must not answer (multi-step word problems from
  shared/routing-eval/gsm8k.csv, code, analysis). Not graded: the measure is how many the gate keeps.

Deterministic (no randomness, fixed order). Run: python3 models/calibration/make_prompts.py
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
GSM8K = ROOT.parent / "shared" / "routing-eval" / "gsm8k.csv"

CAPITALS = [
    ("France", ["Paris"]), ("Japan", ["Tokyo"]), ("Italy", ["Rome"]), ("Germany", ["Berlin"]),
    ("Spain", ["Madrid"]), ("the United Kingdom", ["London"]), ("Russia", ["Moscow"]),
    ("China", ["Beijing"]), ("Egypt", ["Cairo"]), ("Canada", ["Ottawa"]), ("Australia", ["Canberra"]),
    ("Brazil", ["Brasília", "Brasilia"]), ("Argentina", ["Buenos Aires"]), ("Mexico", ["Mexico City"]),
    ("India", ["New Delhi"]), ("Kenya", ["Nairobi"]), ("Nigeria", ["Abuja"]), ("Turkey", ["Ankara"]),
    ("Greece", ["Athens"]), ("Portugal", ["Lisbon"]), ("Sweden", ["Stockholm"]), ("Norway", ["Oslo"]),
    ("Finland", ["Helsinki"]), ("Poland", ["Warsaw"]), ("Ireland", ["Dublin"]),
    ("the Netherlands", ["Amsterdam"]), ("Belgium", ["Brussels"]), ("Austria", ["Vienna"]),
    ("Switzerland", ["Bern", "Berne"]), ("Hungary", ["Budapest"]), ("the Czech Republic", ["Prague"]),
    ("Peru", ["Lima"]), ("Chile", ["Santiago"]), ("Colombia", ["Bogotá", "Bogota"]),
    ("Thailand", ["Bangkok"]), ("Vietnam", ["Hanoi"]), ("South Korea", ["Seoul"]),
    ("Indonesia", ["Jakarta"]), ("Iran", ["Tehran"]), ("Pakistan", ["Islamabad"]),
    ("Morocco", ["Rabat"]), ("Mongolia", ["Ulaanbaatar", "Ulan Bator"]), ("Kazakhstan", ["Astana"]),
    ("Bhutan", ["Thimphu"]), ("Malawi", ["Lilongwe"]), ("Burkina Faso", ["Ouagadougou"]),
    ("New Zealand", ["Wellington"]), ("Myanmar", ["Naypyidaw", "Nay Pyi Taw"]), ("Laos", ["Vientiane"]),
    ("Uruguay", ["Montevideo"]), ("Ecuador", ["Quito"]), ("Nepal", ["Kathmandu"]),
    ("Ghana", ["Accra"]), ("Senegal", ["Dakar"]), ("Zambia", ["Lusaka"]), ("Slovenia", ["Ljubljana"]),
]

SYMBOLS = [
    ("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("sodium", "Na"), ("helium", "He"),
    ("copper", "Cu"), ("lead", "Pb"), ("mercury", "Hg"), ("tin", "Sn"), ("zinc", "Zn"),
    ("potassium", "K"), ("tungsten", "W"), ("neon", "Ne"), ("calcium", "Ca"),
]

AUTHORS = [
    ("Romeo and Juliet", ["Shakespeare"]), ("Pride and Prejudice", ["Austen"]), ("1984", ["Orwell"]),
    ("Hamlet", ["Shakespeare"]), ("The Odyssey", ["Homer"]), ("War and Peace", ["Tolstoy"]),
    ("Don Quixote", ["Cervantes"]), ("On the Origin of Species", ["Darwin"]), ("Moby-Dick", ["Melville"]),
    ("Frankenstein", ["Shelley"]), ("The Divine Comedy", ["Dante"]), ("Les Misérables", ["Hugo"]),
    ("Crime and Punishment", ["Dostoevsky", "Dostoyevsky"]), ("The Great Gatsby", ["Fitzgerald"]),
    ("One Hundred Years of Solitude", ["García Márquez", "Garcia Marquez", "Márquez", "Marquez"]),
    ("The Brothers Karamazov", ["Dostoevsky", "Dostoyevsky"]),
]

FACTS = [
    ("Which planet is closest to the Sun?", ["Mercury"]),
    ("What is the largest planet in our solar system?", ["Jupiter"]),
    ("Which planet is known as the Red Planet?", ["Mars"]),
    ("How many days are there in a week?", ["7", "seven"]),
    ("How many legs does a spider have?", ["8", "eight"]),
    ("How many continents are there on Earth?", ["7", "seven"]),
    ("What is the largest ocean on Earth?", ["Pacific"]),
    ("What is the tallest mountain in the world?", ["Everest"]),
    ("What gas do plants absorb from the air for photosynthesis?", ["carbon dioxide", "CO2"]),
    ("What is the chemical formula of water?", ["H2O"]),
    ("Who painted the Mona Lisa?", ["Leonardo", "da Vinci"]),
    ("Who was the first person to walk on the Moon?", ["Armstrong"]),
    ("What is the freezing point of water in degrees Celsius?", ["0", "zero"]),
    ("What is the boiling point of water in degrees Celsius at sea level?", ["100"]),
    ("How many minutes are there in an hour?", ["60", "sixty"]),
    ("How many hours are there in a day?", ["24", "twenty-four"]),
    ("What is the largest mammal?", ["blue whale"]),
    ("What is the hardest natural substance?", ["diamond"]),
    ("Which organ pumps blood through the human body?", ["heart"]),
    ("What is the main language spoken in Brazil?", ["Portuguese"]),
    ("What currency is used in Japan?", ["yen"]),
    ("Who developed the theory of relativity?", ["Einstein"]),
    ("Who proposed the three laws of motion?", ["Newton"]),
    ("What is the square root of 81?", ["9", "nine"]),
    ("What is the square root of 169?", ["13", "thirteen"]),
    ("How many sides does a hexagon have?", ["6", "six"]),
    ("How many sides does a heptagon have?", ["7", "seven"]),
    ("What is the smallest prime number?", ["2", "two"]),
    ("What is the longest bone in the human body?", ["femur"]),
    ("Which element has the atomic number 1?", ["hydrogen"]),
    ("Which element has the atomic number 6?", ["carbon"]),
    ("What is the capital city of the US state of California?", ["Sacramento"]),
    ("What is the capital city of the US state of Texas?", ["Austin"]),
    ("In which country are the pyramids of Giza?", ["Egypt"]),
    ("Which river flows through London?", ["Thames"]),
    ("Which river flows through Paris?", ["Seine"]),
]

YEARS = [
    ("In what year did World War II end?", "1945"), ("In what year did World War I begin?", "1914"),
    ("In what year did the Berlin Wall fall?", "1989"), ("In what year did the Titanic sink?", "1912"),
    ("In what year did Columbus first reach the Americas?", "1492"),
    ("In what year did the French Revolution begin?", "1789"),
    ("In what year did humans first land on the Moon?", "1969"),
    ("In what year was the United States Declaration of Independence signed?", "1776"),
    ("In what year did the Soviet Union dissolve?", "1991"),
    ("In what year was the Battle of Hastings?", "1066"),
]

OPPOSITES = [
    ("hot", ["cold"]), ("up", ["down"]), ("big", ["small", "little"]), ("happy", ["sad", "unhappy"]),
    ("light", ["dark", "heavy"]), ("fast", ["slow"]), ("open", ["closed", "close", "shut"]),
    ("early", ["late"]), ("ancient", ["modern"]), ("generous", ["stingy", "selfish", "greedy", "mean"]),
]

CODE_AND_ANALYSIS = [
    "Write a Python function that returns the n-th Fibonacci number using memoization, with tests.",
    "Write a Rust function that parses an IPv4 address from a string without using the standard library parser.",
    "Implement a thread-safe LRU cache in Java and explain its time complexity.",
    "Write a SQL query that returns the second highest salary per department, handling ties.",
    "Explain the difference between optimistic and pessimistic locking in databases, with examples.",
    "Compare the economic policies of the Roosevelt and Reagan administrations and their effects on inequality.",
    "Prove that the square root of 2 is irrational.",
    "Derive the formula for the sum of a geometric series and state when it converges.",
    "Analyse the causes of the 2008 financial crisis and evaluate the policy responses.",
    "Explain how public-key cryptography works and why factoring large numbers matters for RSA.",
    "Summarise the arguments for and against nuclear power as part of a low-carbon energy mix.",
    "Write a bash script that finds the ten largest files under a directory, skipping symlinks.",
    "Explain the CAP theorem and how Cassandra and PostgreSQL make different trade-offs.",
    "Solve the differential equation dy/dx = 3y + 2 with y(0) = 1.",
    "What are the legal requirements for terminating an employment contract in Germany?",
    "Given the symptoms of chest pain radiating to the left arm and shortness of breath, what should be done?",
    "Design a rate limiter for a distributed API gateway and discuss its failure modes.",
    "Translate this paragraph into French and explain the grammar choices: 'The weather was awful, yet we went out.'",
    "Compute the eigenvalues of the matrix [[2, 1], [1, 2]] and explain their meaning.",
    "Explain why the halting problem is undecidable.",
]


def row(i: int, category: str, kind: str, prompt: str, answers: list[str] | None = None) -> dict:
    out = {"id": f"{category}-{i:03d}", "category": category, "kind": kind, "prompt": prompt}
    if answers is not None:
        out["answers"] = answers
    return out


def arithmetic() -> list[dict]:
    rows = []
    # Deterministic operand sequences: easy sums, two-digit sums, two-digit products.
    for i in range(15):
        a, b = 2 + (i * 3) % 8, 1 + (i * 5) % 9
        rows.append(row(i, "sum_small", "attempt", f"What is {a} + {b}?", [str(a + b)]))
    for i in range(15):
        a, b = 12 + (i * 17) % 80, 11 + (i * 29) % 85
        rows.append(row(i, "sum_two_digit", "attempt", f"What is {a} + {b}?", [str(a + b)]))
    for i in range(15):
        a, b = 13 + (i * 7) % 80, 12 + (i * 11) % 83
        rows.append(row(i, "product_two_digit", "attempt", f"What is {a} times {b}?", [str(a * b)]))
    return rows


def gsm8k(n: int) -> list[dict]:
    with GSM8K.open(newline="", encoding="utf-8") as f:
        prompts = [r["prompt"] for r in csv.DictReader(f)]
    # Every k-th problem: spread over the file, no choice by hand.
    step = len(prompts) // n
    return [row(i, "word_problem", "must_not_attempt", prompts[i * step]) for i in range(n)]


def main() -> None:
    rows: list[dict] = []
    rows += [row(i, "capital", "attempt", f"What is the capital of {c}?", a) for i, (c, a) in enumerate(CAPITALS)]
    rows += arithmetic()
    rows += [row(i, "symbol", "attempt", f"What is the chemical symbol for {e}?", [s]) for i, (e, s) in enumerate(SYMBOLS)]
    rows += [row(i, "author", "attempt", f"Who wrote {t}?", a) for i, (t, a) in enumerate(AUTHORS)]
    rows += [row(i, "fact", "attempt", q, a) for i, (q, a) in enumerate(FACTS)]
    rows += [row(i, "year", "attempt", q, [y]) for i, (q, y) in enumerate(YEARS)]
    rows += [row(i, "opposite", "attempt", f"What is the opposite of \"{w}\"?", a) for i, (w, a) in enumerate(OPPOSITES)]
    rows += gsm8k(30)
    rows += [row(i, "code_or_analysis", "must_not_attempt", p) for i, p in enumerate(CODE_AND_ANALYSIS)]
    out = HERE / "prompts.jsonl"
    with out.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    kinds = {}
    for r in rows:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    print(f"wrote {out} ({len(rows)} prompts: {kinds})")


if __name__ == "__main__":
    main()
