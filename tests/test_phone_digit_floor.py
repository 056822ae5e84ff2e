"""The phone recognizer skips texts with too few digits to hold a valid number of its regions; no number of
those regions is lost by it."""

from __future__ import annotations

import phonenumbers
import pytest

from memory_store.sensitive import recognizers
from memory_store.sensitive.recognizers import PHONE_MIN_DIGITS, PHONE_REGIONS, FormatAwarePhoneRecognizer

TYPES = [getattr(phonenumbers.PhoneNumberType, name) for name in ("FIXED_LINE", "MOBILE", "TOLL_FREE", "VOIP")]


def test_every_example_number_of_every_region_is_still_found() -> None:
    recognizer = FormatAwarePhoneRecognizer()
    checked = 0
    for region in PHONE_REGIONS:
        for kind in TYPES:
            number = phonenumbers.example_number_for_type(region, kind)
            if number is None:
                continue
            for style in (phonenumbers.PhoneNumberFormat.INTERNATIONAL, phonenumbers.PhoneNumberFormat.NATIONAL):
                written = phonenumbers.format_number(number, style)
                text = f"call me on {written} tomorrow"
                spans = [(r.start, r.end) for r in recognizer.analyze(text, ["PHONE_NUMBER"])]
                assert any(text[s:e].strip() in written for s, e in spans), (region, written)
                checked += 1
    assert checked > 50


def test_the_floor_is_the_shortest_valid_national_number() -> None:
    shortest = {
        region: min(phonenumbers.PhoneMetadata.metadata_for_region(region).general_desc.possible_length)
        for region in PHONE_REGIONS
    }
    assert PHONE_MIN_DIGITS == min(shortest.values()) == 4  # German numbers can be that short


@pytest.mark.parametrize("text", ["I ran 5 km in 42 minutes", "note 123", "room 1 2 3", "no digits at all"])
def test_texts_with_fewer_digits_never_reach_the_matcher(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("matcher called")

    monkeypatch.setattr(recognizers.phonenumbers, "PhoneNumberMatcher", refuse)
    assert sum(c.isdigit() for c in text) < PHONE_MIN_DIGITS
    assert FormatAwarePhoneRecognizer().analyze(text, ["PHONE_NUMBER"]) == []
