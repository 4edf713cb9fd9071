import pytest

from bloom_agent.store import versions


@pytest.mark.parametrize("good", ["1.2.3", "0.0.0", "10.20.30", "1.2.3-rc1", "1.2.3-rc.1", "1.2.3+build.7", "1.2.3-beta.2+exp.sha.5114f85"])
def test_valid_versions(good):
    assert versions.validate(good) == good


@pytest.mark.parametrize(
    "bad", ["", "1", "1.2", "v1.2.3", "1.2.3.4", "01.2.3", "1.2.3-", "1.2.3+", "1.2.3-rc..1", "1.2.3 ", "1.2.3/../x",
            "1.2.3-rc_1", "1.2.3@x", "1.2.3-ü", "1.2.3\n", "\u0661.2.3", "1.2.3-" + "a" * 70],
)
def test_invalid_versions_are_refused_with_example(bad):
    with pytest.raises(versions.InvalidVersion, match="expected X.Y.Z"):
        versions.validate(bad)


def test_instance_names_round_trip():
    assert versions.instance("1.2.3+build.7") == "1.2.3_build.7"
    assert versions.from_instance("1.2.3_build.7") == "1.2.3+build.7"
    assert versions.instance("1.2.3-rc.1") == "1.2.3-rc.1"


def test_precedence():
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.10.0", "2.0.0"]
    assert sorted(reversed(ordered), key=versions.sort_key) == ordered
