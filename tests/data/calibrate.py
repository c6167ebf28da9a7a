"""Precision and recall of the validator on the labelled corpus, per reject code and overall.

    python -m tests.data.calibrate          # prints the markdown table that docs/CURATION.md holds
    python -m tests.data.calibrate --misses # also lists every item the validator gets wrong

Per code: an item is a true positive when the validator reports the code and the item expects it, a false
positive when it reports the code on an item that does not expect it (a good item, or a bad item of another
class), a false negative when an expected code is missing. Overall: a bad item is caught when the validator
reports at least one of its expected codes; a good item is falsely rejected when it reports anything.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field

from schemas.curation import RejectCode
from tasks.curation.validate import validate_output
from tests.data.validator_corpus import load

# Which function reports each code (validate.py handles parsing and the provider's finish_reason).
RULE_OF_CODE: dict[str, str] = {
    "malformed": "validate_output (parse)",
    "parse_error": "validate_output (parser bug)",
    "content_filter": "validate_output (finish_reason)",
    "empty": "rule_empty",
    "too_short": "rule_length",
    "too_long": "rule_length",
    "mentions_hidden_input": "rule_hidden_input",
    "refusal": "rule_refusal",
    "repeated_question": "rule_repeated_question",
    "non_english": "rule_non_english",
    "truncated": "rule_cut_off + finish_reason",
    "image_placeholder": "rule_image_placeholder",
    "prompt_injection": "rule_prompt_injection",
    "control_characters": "rule_control_characters",
}


@dataclass
class Calibration:
    """Counts per code and overall, plus the items the validator got wrong."""

    items: int = 0
    good: int = 0
    bad: int = 0
    false_rejects: list[str] = field(default_factory=list)  # good items with any reject
    missed: list[str] = field(default_factory=list)  # bad items without any expected code
    tp: Counter[str] = field(default_factory=Counter)
    fp: Counter[str] = field(default_factory=Counter)
    fn: Counter[str] = field(default_factory=Counter)
    notes: dict[str, str] = field(default_factory=dict)  # item id -> expected and found codes, for listings
    disagreements: list[str] = field(default_factory=list)  # items whose found codes differ from the expected

    @property
    def recall(self) -> float:
        """Share of bad items caught with an expected code."""
        return (self.bad - len(self.missed)) / self.bad

    @property
    def precision(self) -> float:
        """Share of rejected items that are bad."""
        rejected = self.bad - len(self.missed) + len(self.false_rejects)
        return (self.bad - len(self.missed)) / rejected if rejected else 1.0

    def table(self) -> str:
        """The markdown table: one row per code, then the overall row."""
        rows = ["| code | rule | items | TP | FP | FN | precision | recall |",
                "|---|---|---:|---:|---:|---:|---:|---:|"]
        for code in (c.value for c in RejectCode):
            tp, fp, fn = self.tp[code], self.fp[code], self.fn[code]
            precision = f"{tp / (tp + fp):.3f}" if tp + fp else "–"
            recall = f"{tp / (tp + fn):.3f}" if tp + fn else "–"
            rows.append(f"| `{code}` | {RULE_OF_CODE.get(code, '?')} | {tp + fn} | {tp} | {fp} | {fn} | "
                        f"{precision} | {recall} |")
        rows.append(f"| **overall** | {self.good} good + {self.bad} bad items | {self.items} | "
                    f"{self.bad - len(self.missed)} | {len(self.false_rejects)} | {len(self.missed)} | "
                    f"{self.precision:.3f} | {self.recall:.3f} |")
        return "\n".join(rows)


def calibrate() -> Calibration:
    """Validate every corpus item and count agreements with its labels."""
    cal = Calibration()
    for item in load():
        result = validate_output(item["sample_type"], item["format"], item["content"], item["finish_reason"])
        found = {r.code.value for r in result.rejects}
        expect = set(item["expect"])
        cal.items += 1
        cal.notes[item["id"]] = f"expect {sorted(expect)}, found " + "; ".join(
            f"{r.code.value}: {r.detail[:100]}" for r in result.rejects)
        if found != expect:
            cal.disagreements.append(item["id"])
        if item["label"] == "good":
            cal.good += 1
            if found:
                cal.false_rejects.append(item["id"])
        else:
            cal.bad += 1
            if not found & expect:
                cal.missed.append(item["id"])
        for code in found & expect:
            cal.tp[code] += 1
        for code in found - expect:
            cal.fp[code] += 1
        for code in expect - found:
            cal.fn[code] += 1
    return cal


def main(argv: list[str]) -> None:
    """Print the table (and, with --misses, the items the validator gets wrong)."""
    cal = calibrate()
    print(cal.table())
    if "--misses" in argv:
        for title, ids in (("false rejects", cal.false_rejects), ("missed", cal.missed)):
            print(f"\n{title}: {len(ids)}")
            for item_id in ids:
                print(f"  {item_id}: {cal.notes[item_id]}")
        print("\nother disagreements:")
        for item_id in cal.disagreements:
            if item_id not in cal.false_rejects and item_id not in cal.missed:
                print(f"  {item_id}: {cal.notes[item_id]}")

if __name__ == "__main__":
    main(sys.argv[1:])
