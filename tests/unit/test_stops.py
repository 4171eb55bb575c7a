"""Stop strings over streamed text: never leak any part of a stop string, hold back minimally."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamhost.engine.detokenizer import IncrementalDetokenizer
from streamhost.engine.stops import StopSequenceMatcher

FFFD = "\ufffd"


def run(stops, chunks) -> tuple[list[str], bool]:
    """Push chunks until stopped; flush if never stopped. Returns (emitted pieces, stopped)."""
    m = StopSequenceMatcher(stops)
    out = []
    for chunk in chunks:
        text, stopped = m.push(chunk)
        out.append(text)
        if stopped:
            return out, True
    out.append(m.flush())
    return out, False


def reference_cut(text: str, stops) -> tuple[str, bool]:
    """What a reader going character by character would keep: cut at the first completed stop."""
    for end in range(1, len(text) + 1):
        matches = [end - len(s) for s in stops if s and text[:end].endswith(s)]
        if matches:
            return text[: min(matches)], True
    return text, False


def test_without_stop_strings_text_passes_straight_through():
    m = StopSequenceMatcher([])
    assert m.push("Hello ") == ("Hello ", False)
    assert m.push("world") == ("world", False)
    assert m.flush() == ""


def test_stop_split_across_chunks_is_never_emitted():
    out, stopped = run(["<|user|>"], ["Hello <", "|us", "er|> and more"])
    assert stopped
    assert out == ["Hello ", "", ""]


def test_partial_prefix_is_held_then_released_when_it_stops_matching():
    m = StopSequenceMatcher(["###"])
    assert m.push("a #") == ("a ", False)
    assert m.held == "#"
    assert m.push("#") == ("", False)
    assert m.held == "##"
    assert m.push("x") == ("##x", False)
    assert m.held == ""


def test_holds_only_the_longest_suffix_that_can_still_start_a_stop():
    m = StopSequenceMatcher(["aab"])
    assert m.push("aaa") == ("a", False)  # "aa" may still become "aab"; the first "a" cannot
    assert m.push("b") == ("", True)
    m = StopSequenceMatcher(["abcab"])
    assert m.push("xabca") == ("x", False)
    assert m.push("c") == ("abcac", False)


def test_earliest_match_wins_among_several_stops():
    out, stopped = run(["world", "lo"], ["hello world"])
    assert stopped and "".join(out) == "hel"
    m = StopSequenceMatcher(["END", "\n\n"])
    assert m.push("one\n\ntwo END") == ("one", True)
    assert m.matched == "\n\n"


def test_overlapping_stops_give_the_same_cut_however_the_text_is_chunked():
    # "bc" is complete before "abcd" is, so a character-by-character reader stops at "bc".
    assert run(["abcd", "bc"], ["abcd"]) == (["a"], True)
    assert "".join(run(["abcd", "bc"], list("abcd"))[0]) == "a"
    # Two stops ending on the same character: the longer one is cut.
    assert run(["xbc", "bc"], ["axbcz"]) == (["a"], True)


def test_stop_at_the_very_beginning():
    assert run(["Human:"], ["Hu", "man: hi"]) == (["", ""], True)
    assert run(["Human:"], ["Human: hi"]) == ([""], True)


def test_stop_that_is_a_multibyte_character():
    out, stopped = run(["日"], ["今", "日は"])
    assert stopped and "".join(out) == "今"
    out, stopped = run(["👍🏽"], ["great 👍", "🏽 yes"])
    assert stopped and out == ["great ", ""]
    # The same emoji without the skin tone is not the stop: it is released.
    assert "".join(run(["👍🏽"], ["great 👍", "!"])[0]) == "great 👍!"


def test_flush_releases_held_text_and_nothing_after_a_stop():
    m = StopSequenceMatcher(["</answer>"])
    assert m.push("42 </ans") == ("42 ", False)
    assert m.flush() == "</ans"
    assert m.flush() == ""
    m = StopSequenceMatcher(["STOP"])
    assert m.push("a STOP b") == ("a ", True)
    assert m.push("more") == ("", True)
    assert m.flush() == ""
    assert m.stopped


def test_empty_and_duplicate_stop_strings_are_ignored():
    m = StopSequenceMatcher(["", "x", "x"])
    assert m.push("abc") == ("abc", False)
    assert m.push("axb") == ("a", True)
    assert StopSequenceMatcher([""]).push("anything") == ("anything", False)


def test_a_single_string_is_refused():
    with pytest.raises(TypeError):
        StopSequenceMatcher("stop")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="ab#\n", max_size=30),
    stops=st.lists(st.text(alphabet="ab#\n", max_size=4), max_size=3),
    cuts=st.lists(st.integers(0, 30), max_size=8),
)
def test_any_chunking_matches_the_character_by_character_reference(text, stops, cuts):
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    m = StopSequenceMatcher(stops)
    seen, emitted, stopped = "", "", False
    for chunk in chunks:
        piece, stopped = m.push(chunk)
        emitted += piece
        if stopped:
            break
        seen += chunk
        # Minimal hold: exactly the longest suffix that is a proper prefix of some stop.
        hold = max((k for s in stops if s for k in range(1, len(s)) if seen.endswith(s[:k])), default=0)
        assert emitted == seen[: len(seen) - hold]
    if not stopped:
        emitted += m.flush()
    assert (emitted, stopped) == reference_cut(text, stops)


CASES = [
    ("Sure! Here it is.<|user|> Next question", ["<|user|>"]),
    ("Answer: 42\n\nHuman: thanks", ["\n\nHuman:", "\n\nUser:"]),
    ("café naïve END tail", ["END"]),
    ("日本語のテキスト、ここで本当に終わり", ["本当"]),
    ("party 🎉🎉 time 👨‍👩‍👧 family", ["👩"]),
    ("no stop string in here 🇯🇵", ["zzz", "日"]),
    ("ab" * 50, ["bab", "abb"]),
]


@pytest.mark.parametrize(("text", "stops"), CASES)
def test_detokenizer_then_matcher_streams_the_cut_text(smollm2_tokenizer, text, stops):
    ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(smollm2_tokenizer)
    matcher = StopSequenceMatcher(stops)
    emitted = []
    stopped = False
    for token_id in ids:
        piece, stopped = matcher.push(detok.add(token_id))
        emitted.append(piece)
        if stopped:
            break
    if not stopped:
        piece, stopped = matcher.push(detok.flush())
        emitted.append(piece)
        if not stopped:
            emitted.append(matcher.flush())
    expected, expect_stop = reference_cut(text, stops)
    assert "".join(emitted) == expected
    assert stopped == expect_stop
    assert not any(FFFD in piece for piece in emitted)
    for stop in stops:  # not even a piece of a stop string leaks past the cut
        assert stop not in "".join(emitted)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=st.text(alphabet="ab é日👍\n", max_size=30),
    stop=st.text(alphabet="ab é日👍\n", min_size=1, max_size=3),
)
def test_pipeline_property(smollm2_tokenizer, text, stop):
    ids = smollm2_tokenizer.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(smollm2_tokenizer)
    matcher = StopSequenceMatcher([stop])
    emitted, stopped = "", False
    for token_id in ids:
        piece, stopped = matcher.push(detok.add(token_id))
        emitted += piece
        if stopped:
            break
    if not stopped:
        piece, stopped = matcher.push(detok.flush())
        emitted += piece + ("" if stopped else matcher.flush())
    assert (emitted, stopped) == reference_cut(text, [stop])
