import pytest

from bloom_agent.store import versions


@pytest.mark.parametrize("good", ["1.2.3", "0.0.0", "10.20.30", "1.2.3-rc1", "1.2.3-rc.1", "1.2.3+build.7",
                                  "1.2.3-beta.2+exp.sha.5114f85", "20261201-1530", "3f2a9c1", "v1.2.3", "1.2",
                                  "2026.12.01", "a" * 64])
def test_valid_versions(good):
    assert versions.validate(good) == good


@pytest.mark.parametrize(
    "bad", ["", "-1", ".1", "+1", "1.2.3 ", "1.2.3/../x", "..", "1.2.3-rc_1", "1.2.3@x", "1.2.3%i", "1.2.3-ü",
            "1.2.3\n", "\u0661.2.3", "1;rm", "a" * 65, "$HOME"],
)
def test_invalid_versions_are_refused_with_example(bad):
    with pytest.raises(versions.InvalidVersion, match="use letters, digits, '.', '-' and '\\+'"):
        versions.validate(bad)


def test_instance_names_round_trip():
    assert versions.instance("1.2.3+build.7") == "1.2.3_build.7"
    assert versions.from_instance("1.2.3_build.7") == "1.2.3+build.7"
    assert versions.instance("1.2.3-rc.1") == "1.2.3-rc.1"


def test_precedence():
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.10.0", "2.0.0"]
    assert sorted(reversed(ordered), key=versions.sort_key) == ordered
