"""iste.text: the one line an exception gives as the reason of an error."""

from __future__ import annotations

from iste.text import error_line


def test_error_line_is_the_first_line_of_the_message():
    err = FileNotFoundError(2, "No such file or directory", "x.svs")
    assert error_line(err) == "[Errno 2] No such file or directory: 'x.svs'"
    assert error_line(ValueError("first line\nsecond line")) == "first line"
    assert error_line(ValueError("  padded  \nnext")) == "padded  "


def test_error_line_of_an_empty_or_blank_message_is_the_type_name():
    """The copies that did not strip the message gave '' for a message that starts with a
    line break and the blank space itself for a blank one: an error ending '(...): '."""
    assert error_line(ValueError("")) == "ValueError"
    assert error_line(MemoryError()) == "MemoryError"
    assert error_line(OSError("   ")) == "OSError"
    assert error_line(RuntimeError("\nafter a line break")) == "after a line break"


def test_error_line_is_cut_to_its_limit_only_when_given_one():
    assert error_line(ValueError("y" * 250 + "\nz")) == "y" * 250
    assert error_line(ValueError("y" * 250 + "\nz"), 200) == "y" * 200 + "..."
    assert error_line(ValueError("e" * 200), 200) == "e" * 200
