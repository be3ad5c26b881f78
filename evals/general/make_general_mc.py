"""Writes general_mc.jsonl: easy general-knowledge questions with four choices, for the forgetting probe.

The questions are easy on purpose: a small base model answers most of them, so a fine-tune that breaks
general ability shows up as a drop. Run `python evals/general/make_general_mc.py` after editing QUESTIONS.
"""

import json
from pathlib import Path

# (question, correct answer, three wrong answers)
QUESTIONS = [
    ("What color is the sky on a clear day?", "blue", "green", "red", "black"),
    ("How many days are in a week?", "seven", "five", "ten", "three"),
    ("What is the capital of France?", "Paris", "Berlin", "Madrid", "Rome"),
    ("Which animal is known for barking?", "dog", "cat", "fish", "bird"),
    ("What do bees make?", "honey", "milk", "silk", "wool"),
    ("What is frozen water called?", "ice", "steam", "sand", "glass"),
    ("Which planet do we live on?", "Earth", "Mars", "Jupiter", "Venus"),
    ("How many legs does a spider have?", "eight", "six", "four", "ten"),
    ("What is the opposite of hot?", "cold", "warm", "loud", "fast"),
    ("Which season comes after winter?", "spring", "autumn", "summer", "winter"),
    ("What do plants need from the sun to grow?", "light", "sound", "salt", "plastic"),
    (
        "What is the largest ocean on Earth?",
        "the Pacific Ocean",
        "the Atlantic Ocean",
        "the Indian Ocean",
        "the Arctic Ocean",
    ),
    ("Which organ pumps blood through the body?", "the heart", "the lungs", "the liver", "the stomach"),
    ("What gas do humans need to breathe?", "oxygen", "helium", "neon", "carbon monoxide"),
    ("How many hours are in a day?", "24", "12", "60", "100"),
    ("What is the capital of Japan?", "Tokyo", "Beijing", "Seoul", "Bangkok"),
    ("Which instrument has black and white keys?", "piano", "drum", "violin", "trumpet"),
    ("What do cows drink?", "water", "coffee", "oil", "juice"),
    ("Which shape has three sides?", "triangle", "square", "circle", "hexagon"),
    (
        "What is the boiling point of water at sea level in Celsius?",
        "100 degrees",
        "50 degrees",
        "0 degrees",
        "250 degrees",
    ),
    ("Who wrote the play Romeo and Juliet?", "William Shakespeare", "Charles Dickens", "Mark Twain", "Jane Austen"),
    ("What is the main language spoken in Spain?", "Spanish", "German", "Japanese", "Russian"),
    ("Which metal is liquid at room temperature?", "mercury", "iron", "gold", "aluminium"),
    ("What is the closest star to the Earth?", "the Sun", "Sirius", "Polaris", "Betelgeuse"),
    ("How many continents are there?", "seven", "three", "twelve", "twenty"),
    ("What do you call a baby cat?", "a kitten", "a puppy", "a calf", "a foal"),
    ("Which device is used to measure temperature?", "a thermometer", "a ruler", "a compass", "a telescope"),
    ("What is the tallest animal in the world?", "the giraffe", "the mouse", "the penguin", "the rabbit"),
    ("Which month has the fewest days?", "February", "March", "July", "October"),
    ("What is H2O commonly called?", "water", "salt", "sugar", "air"),
    ("Which part of the plant is usually underground?", "the roots", "the flowers", "the leaves", "the fruit"),
    ("What is the capital of Italy?", "Rome", "Paris", "Vienna", "Lisbon"),
    ("In which direction does the sun rise?", "east", "west", "north", "south"),
    ("What do you use to write on a blackboard?", "chalk", "a spoon", "a brick", "a sock"),
    ("Which bird is a symbol of peace?", "the dove", "the crow", "the vulture", "the ostrich"),
    ("What is the largest planet in the solar system?", "Jupiter", "Mercury", "Mars", "Pluto"),
    ("What does a doctor listen to the heart with?", "a stethoscope", "a hammer", "a microscope", "a calculator"),
    ("Which food is made from milk?", "cheese", "bread", "rice", "pasta"),
    ("How many wheels does a bicycle have?", "two", "four", "six", "one"),
    ("Which programming language is named after a comedy group?", "Python", "Java", "Rust", "Go"),
]


def main() -> None:
    out = Path(__file__).with_name("general_mc.jsonl")
    rows = []
    for number, (question, right, *wrong) in enumerate(QUESTIONS):
        choices = [*wrong]
        answer = number % 4  # the right answer's position rotates so position bias cannot score
        choices.insert(answer, right)
        rows.append({"question": question, "choices": choices, "answer": answer})
    out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {len(rows)} questions to {out}")


if __name__ == "__main__":
    main()
