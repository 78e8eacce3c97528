"""The on-screen text of a video window, as the ocr engine writes it: each line once, at the second it appears."""
from __future__ import annotations

from kb.engines.ocr_video_lines import stamped_new_lines


def test_a_line_still_on_screen_is_not_repeated_even_when_ocr_misreads_a_letter() -> None:
    frames = [(0.0, ["Quarterly results", "Revenue grew in every region"]),
              (5.0, ["Quarterly resuIts", "Revenue grew in every region"]),  # same slide, l read as I
              (10.0, ["Quarterly results", "Revenue grew in every region", "Costs fell"])]
    assert stamped_new_lines(frames) == ["[00:00] Quarterly results", "[00:00] Revenue grew in every region",
                                         "[00:10] Costs fell"]


def test_a_changed_number_is_new_text_and_a_line_that_comes_back_is_stamped_again() -> None:
    frames = [(0.0, ["Frame = 1"]), (1.0, ["Frame = 11"]), (2.0, ["Title"]), (63.0, ["Frame = 11"])]
    assert stamped_new_lines(frames) == ["[00:00] Frame = 1", "[00:01] Frame = 11", "[00:02] Title",
                                         "[01:03] Frame = 11"]
