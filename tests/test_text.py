"""iste.text: the one line an exception gives as the reason of an error."""

from __future__ import annotations

import pytest

from iste.text import decimal, error_line


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


@pytest.mark.parametrize("text, value", [("2", 2.0), ("2.5", 2.5), (".5", 0.5), ("1.", 1.0),
                                         ("1e-3", 0.001), ("+2", 2.0), (" 3 ", 3.0),
                                         ("-1", -1.0)])
def test_decimal_reads_numbers_as_users_write_them(text, value):
    assert decimal(text) == value and isinstance(decimal(text), float)


@pytest.mark.parametrize("text, why", [
    ("2_0", "digits and a point only"), ("\uff12", "the digits 0-9"),
    ("\u0662", "the digits 0-9"), ("inf", "is not a number$"), ("nan", "is not a number$"),
    ("0x10", "is not a number$"), ("1e400", "beyond the range"), ("2 0", "is not a number$"),
    ("", "is not a number$")])
def test_decimal_refuses_what_python_reads_but_no_user_means(text, why):
    # float() reads all but 0x10, '2 0' and '' (1e400 as inf)
    with pytest.raises(ValueError, match=why):
        decimal(text)


def test_a_whole_decimal_is_an_int_and_refuses_a_point_or_a_digit_group():
    assert decimal("+12", whole=True) == 12 and isinstance(decimal("12", whole=True), int)
    for text, why in (("1_000", "0-9 only"), ("2.0", "no point or exponent"),
                      ("1e3", "no point or exponent"), ("\uff11", "the digits 0-9")):
        with pytest.raises(ValueError, match=f"is not a whole number .*{why}"):
            decimal(text, whole=True)


def test_a_whole_number_of_thousands_of_digits_is_beyond_the_range_not_pythons_limit():
    """int() refuses a text of over 4300 digits with "Exceeds the limit (4300 digits) ...;
    use sys.set_int_max_str_digits() to increase the limit": --threads 111...1 said that."""
    with pytest.raises(ValueError, match=r"is beyond the range of a number$"):
        decimal("1" * 5000, whole=True)
