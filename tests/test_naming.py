import pytest

from service.naming import MAX_NAME_BYTES, name_problem, object_url, store_key


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "reports/2026/summary.pdf",
        "with space.txt",
        "plus+sign",
        "percent%20literal",
        "ünïcödé/日本語.txt",
        "a" * MAX_NAME_BYTES,
        ".hidden",
        "dots..inside",
    ],
)
def test_acceptable_names(name: str) -> None:
    assert name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        ("a" * (MAX_NAME_BYTES + 1), "longer than"),
        ("é" * 513, "longer than"),  # 1026 bytes in UTF-8
        ("tab\there", "control"),
        ("new\nline", "control"),
        ("del\x7f", "control"),
        ("/leading", "starts with"),
        ("a//b", "'//'"),
        ("a/", "ends with"),
        (".", "'.' or '..'"),
        ("..", "'.' or '..'"),
        ("a/./b", "'.' or '..'"),
        ("a/../b", "'.' or '..'"),
        ("../escape", "'.' or '..'"),
        ("lone\ud800surrogate", "UTF-8"),
    ],
)
def test_rejected_names(name: str, why: str) -> None:
    problem = name_problem(name)
    assert problem is not None
    assert why in problem


def test_url_encodes_every_byte_but_the_safe_set() -> None:
    key = store_key("", "a b+c%d/ü~._-x?#&=")
    assert (
        object_url("http://cdn.example/base/", key)
        == "http://cdn.example/base/a%20b%2Bc%25d/%C3%BC~._-x%3F%23%26%3D"
    )


def test_key_is_prefix_plus_name() -> None:
    assert store_key("tenant-a/", "x/y") == "tenant-a/x/y"
