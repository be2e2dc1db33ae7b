"""Phone numbers: +7 and 8 formats are one line; short numbers match nothing."""

from hypothesis import given
from hypothesis import strategies as st

from tariti_mcp import phones


def test_russian_formats_normalise_to_one_number():
    forms = [
        "+7 (916) 123-45-67",
        "8 916 123 45 67",
        "79161234567",
        "+79161234567",
        "8(916)1234567",
        "916 123-45-67",
    ]
    assert {phones.normalize(f) for f in forms} == {"+79161234567"}


def test_invalid_numbers_are_none():
    assert phones.normalize("") is None
    assert phones.normalize("12") is None
    assert phones.normalize("not a phone") is None


def test_last10_needs_ten_digits():
    assert phones.last10("+7 (916) 123-45-67") == "9161234567"
    assert phones.last10("123-45-67") is None
    assert not phones.same_line("1234567", "1234567")


def test_foreign_number_kept_with_country_code():
    assert phones.normalize("+44 20 7946 0958") == "+442079460958"


@given(
    st.from_regex(r"9[0-9]{9}", fullmatch=True),
    st.sampled_from(
        ["+7 ({a}) {b}-{c}-{d}", "8 {a} {b} {c} {d}", "7{a}{b}{c}{d}", "8{a}{b}{c}{d}"]
    ),
)
def test_any_format_of_a_mobile_is_the_same_line(national, template):
    formatted = template.format(a=national[:3], b=national[3:6], c=national[6:8], d=national[8:])
    assert phones.same_line(formatted, "+7" + national)
    assert phones.normalize(formatted) == "+7" + national


def test_extension_digits_are_not_part_of_the_line():
    assert phones.last10("+7-916-400-00-04 доб. 12") == "9164000004"
    assert phones.last10("8 916 400 00 04 ext 5") == "9164000004"
    assert phones.same_line("+7-916-400-00-04 доб. 12", "89164000004")
