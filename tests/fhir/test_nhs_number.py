import pytest

from app.fhir import nhs_number


@pytest.mark.parametrize(
    "value", ["9434765919", "943 476 5919", "943-476-5919", "9000000009", "4010232137"]
)
def test_valid_numbers_pass(value: str) -> None:
    assert nhs_number.is_valid(value)


@pytest.mark.parametrize(
    "value",
    [
        "9434765918",  # wrong check digit
        "3478526985",  # the BaRS example's number fails the check
        "1000000010",  # check digit would be 10: never issued
    ],
)
def test_invalid_check_digit_fails(value: str) -> None:
    assert not nhs_number.is_valid(value)


@pytest.mark.parametrize(
    "value",
    [
        "943476591",
        "94347659190",
        "",
        "94347659a9",
        "\uff19\uff14\uff13\uff14\uff17\uff16\uff15\uff19\uff11\uff19",
    ],
)
def test_wrong_length_or_characters_fail(value: str) -> None:
    assert not nhs_number.is_valid(value)


def test_check_digit_eleven_becomes_zero() -> None:
    # 100000006: weighted sum 22, 11 - 0 = 11 -> check digit 0.
    digits = "100000006"
    total = sum(int(d) * w for d, w in zip(digits, range(10, 1, -1), strict=True))
    assert total % 11 == 0
    assert nhs_number.is_valid(digits + "0")
    assert not nhs_number.is_valid(digits + "1")


def test_test_range() -> None:
    assert nhs_number.is_test_range("9990001234")
    assert not nhs_number.is_test_range("9434765919")
