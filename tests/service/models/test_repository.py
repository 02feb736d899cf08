"""The repository scan: ``<root>/<name>/<version>/`` where a version is a positive number in ASCII digits."""

from __future__ import annotations

from pathlib import Path

from service.models.repository import scan_repository


def test_folders_named_with_other_digits_are_skipped_and_the_scan_goes_on(tmp_path: Path) -> None:
    for folder in ("digits/1", "digits/²", "digits/٣", "digits/0", "digits/notes", "penguins/2"):
        (tmp_path / folder).mkdir(parents=True)

    found = scan_repository(tmp_path)

    assert sorted(found) == [("digits", 1), ("penguins", 2)]


def test_a_file_named_like_a_version_is_no_version(tmp_path: Path) -> None:
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "3").write_text("not a folder")

    assert scan_repository(tmp_path) == {}
